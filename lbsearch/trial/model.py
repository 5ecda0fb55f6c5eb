"""Models: builtin MiniLM-L6, a local folder, a hub id, or a random-init config (their tokenizers: ``lbsearch.data.tokenizer``)."""


from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from lbsearch.data import OFFLINE_MODEL_HINT, load_tokenizer, model_source
from lbsearch.spec import KEPT_FILE, LM_TASKS, ModelConfig, SpecError

__all__ = ["load_tokenizer", "build_model", "uses_token_types", "PooledClassifier", "save_model", "load_model", "classify", "predictions", "OFFLINE_MODEL_HINT",
           "QUANTIZED_FILE", "quantize_int8", "save_variant", "weight_bytes"]

"""Beside a kept model's weights: how it was trained (max length, pooling, evaluation batch) and its source."""
_HEAD_FILE = "mean_pool_head.safetensors"
QUANTIZED_FILE = "quantized_int8.pt"
"""A dynamically int8-quantized model's whole state (``torch.save`` of its ``state_dict``), beside its ``config.json``."""


_PROBLEM = {"single_label": "single_label_classification", "multi_label": "multi_label_classification", "regression": "regression"}


def _config(cfg: ModelConfig, vocab_size: int, pad_id: int):
    """The model config with the user's overrides; ``num_layers`` goes through the family's attribute map
    (``num_hidden_layers`` is ``n_layers`` in DistilBERT, ``n_layer`` in GPT-2)."""
    from transformers import AutoConfig

    overrides: dict[str, Any] = dict(cfg.config)
    if cfg.num_layers is not None:
        overrides["num_hidden_layers"] = cfg.num_layers
    try:
        if cfg.source == "random":
            return AutoConfig.for_model(cfg.model_type, vocab_size=vocab_size, pad_token_id=pad_id, **overrides)
        config = AutoConfig.from_pretrained(model_source(cfg.source), trust_remote_code=cfg.trust_remote_code, **overrides)
    except OSError as err:
        first = str(err).splitlines()[0][:160]
        raise SpecError(None, "model.source", f"cannot load model {cfg.source!r} ({first}); {OFFLINE_MODEL_HINT}") from None
    if getattr(config, "pad_token_id", None) is None:  # decoders ship without one
        config.pad_token_id = pad_id
    return config


def build_model(cfg: ModelConfig, task: str, label_names: list[str], vocab_size: int, pad_id: int):
    """A sequence classifier whose config carries the task and the label names (``id2label``). Seed the
    RNGs before calling: the head (or all of it) is random."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialised classifier" load report is expected
    config = _config(cfg, vocab_size, pad_id)
    if task in LM_TASKS:
        from lbsearch.trial.lm import build_lm

        model = build_lm(task, config, None if cfg.source == "random" else model_source(cfg.source), cfg.trust_remote_code)
        if cfg.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        return model
    num_outputs = 1 if task == "regression" else len(label_names)
    config.id2label = {i: str(n) for i, n in enumerate(label_names[:num_outputs])}
    config.label2id = {n: i for i, n in config.id2label.items()}
    config.num_labels, config.problem_type = num_outputs, _PROBLEM[task]
    auto = AutoModelForSequenceClassification if cfg.pooling == "cls" else AutoModel
    try:
        if cfg.source == "random":
            model = auto.from_config(config, trust_remote_code=cfg.trust_remote_code)
        else:
            # a checkpoint fine-tuned for other labels gets a new head of the task's size
            resize = {"ignore_mismatched_sizes": True} if cfg.pooling == "cls" else {}
            model = auto.from_pretrained(model_source(cfg.source), config=config, trust_remote_code=cfg.trust_remote_code, **resize)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise SpecError(None, "model.pooling", f"{type(config).__name__} has no sequence-classification head in transformers: "
                        "set `pooling: mean` or `pooling: last`") from None
    if cfg.gradient_checkpointing:  # non-reentrant: works with frozen embeddings and under FSDP
        if not model.supports_gradient_checkpointing:
            raise SpecError(None, "model.gradient_checkpointing", f"{type(model).__name__} does not support it in transformers: set it to false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = PooledClassifier(model, num_outputs, cfg.pooling) if cfg.pooling != "cls" else model
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def uses_token_types(model: torch.nn.Module) -> bool:
    """Whether the model has segment embeddings for text pairs (``type_vocab_size`` 2: BERT, ELECTRA, ALBERT);
    RoBERTa checkpoints (1), DeBERTa-v2 (0), DistilBERT, ModernBERT and decoders get no ``token_type_ids``."""
    return int(getattr(model.config, "type_vocab_size", 0) or 0) >= 2


class PooledClassifier(torch.nn.Module):
    """A linear head on the attention-masked mean (``mean``) or the last real token (``last``) of a bare
    model's last hidden states: the same for every family, encoder or decoder."""

    def __init__(self, encoder: torch.nn.Module, num_outputs: int, pooling: str) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.config = encoder.config
        for p in getattr(encoder, "pooler", torch.nn.Identity()).parameters():
            p.requires_grad_(False)  # BERT's own pooler is unused here (and would stall DDP's gradient sync)
        dropout = next((getattr(encoder.config, k) for k in ("hidden_dropout_prob", "dropout", "resid_pdrop")
                        if isinstance(getattr(encoder.config, k, None), float)), 0.1)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_outputs)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                segment_lengths: torch.Tensor | None = None, **segments: torch.Tensor):
        """Padded rows (``attention_mask``), or packed ones (``segment_ids`` and ``position_ids``,
        ``lbsearch.trial.packing``): then the logits come in segment order."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        if segment_ids is not None:
            from lbsearch.trial.packing import pool_segments, segment_mask

            mask = segment_mask(self.config, segment_ids, self.classifier.weight.dtype)
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask, **segments).last_hidden_state
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pool_segments(hidden, segment_ids, self.pooling, segment_lengths))))
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        if attention_mask is None:  # no padding
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:  # the last position the mask keeps, whichever side the padding is on
            positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
            pooled = hidden[torch.arange(len(hidden), device=hidden.device), (attention_mask * positions).argmax(1)]
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def save_model(model: torch.nn.Module, folder: Path, label_names: list[str], cfg: ModelConfig, info: dict[str, Any],
               state_dict: dict[str, torch.Tensor] | None = None, tokenizer_dir: Path | None = None) -> None:
    """Save a trained classifier in the Hugging Face layout: weights (safetensors) and config with
    ``id2label`` / ``label2id``, the tokenizer, and ``lbsearch.json``. A mean-pooling head saves its
    encoder that way and the head beside it (``mean_pool_head.safetensors``); ``load_model`` rebuilds both.
    ``state_dict``: the model's full weights where its parameters are shards (FSDP)."""

    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the trial's output
    folder.mkdir(parents=True, exist_ok=True)
    hf = model.encoder if isinstance(model, PooledClassifier) else model
    if label_names:  # a classifier (a language model has no labels)
        hf.config.id2label = dict(enumerate(label_names))
        hf.config.label2id = {n: i for i, n in enumerate(label_names)}
    head = model.classifier.state_dict() if isinstance(model, PooledClassifier) else {}
    if state_dict is not None and isinstance(model, PooledClassifier):
        head = {k.removeprefix("classifier."): v for k, v in state_dict.items() if k.startswith("classifier.")}
        state_dict = {k.removeprefix("encoder."): v for k, v in state_dict.items() if k.startswith("encoder.")}
    hf.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    if isinstance(model, PooledClassifier):
        save_file({k: v.detach().contiguous() for k, v in head.items()}, str(folder / _HEAD_FILE))
    if tokenizer_dir is not None:  # trained with the data (``data.tokenizer_vocab``)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tok = load_tokenizer(cfg)
    if tok.pad_token is None and hf.config.pad_token_id is not None:  # decoders: pad as the trial padded
        tok.pad_token = tok.convert_ids_to_tokens(hf.config.pad_token_id)
    tok.save_pretrained(folder)
    info = info | {"pooling": cfg.pooling, "label_names": label_names}
    (folder / KEPT_FILE).write_text(json.dumps(info, indent=1))


def load_model(folder: str | Path):
    """A kept model, in eval mode: ``AutoModelForSequenceClassification.from_pretrained(folder)``, or
    for a pooled head (``model.pooling: mean`` or ``last``) the bare model with its head. The label names are
    ``model.config.id2label``. Loading draws nothing from torch's generator (a pooled head's init would): a trial
    that loads a teacher trains as one that does not."""
    with torch.random.fork_rng(devices=[]):
        return _load_model(Path(folder))


def _load_model(folder: Path):
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if (folder / QUANTIZED_FILE).is_file():
        return _load_quantized(folder)
    if not (folder / _HEAD_FILE).is_file():
        return AutoModelForSequenceClassification.from_pretrained(folder).eval()
    from safetensors.torch import load_file

    head = load_file(str(folder / _HEAD_FILE))
    info = json.loads((folder / KEPT_FILE).read_text()) if (folder / KEPT_FILE).is_file() else {}
    model = PooledClassifier(AutoModel.from_pretrained(folder), head["weight"].shape[0], info.get("pooling", "mean"))
    model.classifier.load_state_dict(head)
    return model.eval()


@torch.no_grad()
def classify(folder: str | Path, texts: list[str], batch_size: int = 32) -> list[tuple[str, float]]:
    """(label, score) per text, from a kept model folder: single-label, the class name and its
    probability; multi-label, the names at or above the threshold (comma-separated, ``-`` for none)
    and the highest probability; regression, the value in the labels' units (twice)."""

    from transformers import AutoTokenizer

    folder = Path(folder)
    info = json.loads((folder / KEPT_FILE).read_text()) if (folder / KEPT_FILE).is_file() else {}
    return predictions(AutoTokenizer.from_pretrained(folder), load_model(folder), info, texts, batch_size)


@torch.no_grad()
def predictions(tok, model: torch.nn.Module, info: dict[str, Any], texts: list[str], batch_size: int = 32) -> list[tuple[str, float]]:
    """``classify`` with the tokenizer, the model in eval mode and its ``lbsearch.json`` already loaded (what a latency measures)."""
    names = model.config.id2label
    out: list[tuple[str, float]] = []
    for i in range(0, len(texts), batch_size):
        batch = tok(texts[i : i + batch_size], truncation=True, max_length=info.get("max_length"), padding=True, return_tensors="pt")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        out += _read_out(logits, names, info)
    return out


def _read_out(logits: torch.Tensor, names: dict[int, str], info: dict[str, Any]) -> list[tuple[str, float]]:
    task, labels = info.get("task", "single_label"), info.get("labels") or {}
    if task == "regression":
        values = logits[:, 0] * labels.get("scale", 1.0) + labels.get("shift", 0.0)
        return [(f"{v:.4g}", float(v)) for v in values.tolist()]
    if task == "multi_label":
        probs = logits.sigmoid()
        chosen = [[names[j] for j, q in enumerate(row) if q >= info["threshold"]] for row in probs.tolist()]
        return [(",".join(c) or "-", float(row.max())) for c, row in zip(chosen, probs)]
    p, k = logits.softmax(-1).max(-1)
    return [(names[int(j)], float(q)) for q, j in zip(p, k)]


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8 (weights per tensor, once;
    activations per batch, at run time): ``torch.ao.quantization.quantize_dynamic`` and its x86 kernels.
    (torch marks ``torch.ao.quantization`` deprecated in favour of torchao; 2.13 still ships it.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _load_quantized(folder: Path) -> torch.nn.Module:
    """The model's skeleton from its config, quantized as it was, then its saved int8 state: the same
    weights, scales and outputs as the model that was saved."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    info = json.loads((folder / KEPT_FILE).read_text())
    config = AutoConfig.from_pretrained(folder)
    pooling = info.get("pooling", "cls")
    if pooling == "cls":
        skeleton = AutoModelForSequenceClassification.from_config(config)
    else:
        skeleton = PooledClassifier(AutoModel.from_config(config), info["num_outputs"], pooling)
    model = quantize_int8(skeleton.eval())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        model.load_state_dict(torch.load(folder / QUANTIZED_FILE, weights_only=True))
    return model.eval()


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".safetensors" in p.name or p.name == QUANTIZED_FILE]


def weight_bytes(folder: str | Path) -> int:
    """The bytes of a kept model's weight files (safetensors, the pooled head, an int8 state), tokenizer and config left out."""
    return sum(p.stat().st_size for p in _weight_files(Path(folder)))


def save_variant(model: torch.nn.Module, kept: Path, folder: Path, recipe: dict[str, Any]) -> None:
    """Save a compressed copy of the kept model in ``kept`` to ``folder``, loadable by ``load_model``: the
    kept tokenizer and config, ``lbsearch.json`` with ``compression: recipe``, and the weights as ``model``
    holds them: float (pruned) in the kept layout, int8 (``quantize_int8``) as ``QUANTIZED_FILE``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = set(_weight_files(kept))
    for src in kept.iterdir():
        if src not in weights and src.name != KEPT_FILE and src.is_file():
            shutil.copy2(src, folder / src.name)
    pooled = isinstance(model, PooledClassifier)
    if recipe.get("kind") == "int8_dynamic":
        torch.save(model.state_dict(), folder / QUANTIZED_FILE)
    else:
        (model.encoder if pooled else model).save_pretrained(folder, safe_serialization=True)
        if pooled:
            save_file({k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}, str(folder / _HEAD_FILE))
    info = json.loads((kept / KEPT_FILE).read_text())
    num_outputs = model.classifier.out_features if pooled else model.config.num_labels
    (folder / KEPT_FILE).write_text(json.dumps(info | {"compression": recipe, "num_outputs": num_outputs}, indent=1))
