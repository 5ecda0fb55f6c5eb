"""What a task is: its kind, the data it reads (columns, labels, source) and the metrics it reports.

Torch-free and free of the metric library: the config models and the tables of metric names,
directions and ranges. Computing the metrics is ``lbsearch.trial.metrics``; encoding labels is
``lbsearch.data.labels``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TaskKind", "LM_TASKS", "sample_unit", "count_in_tokens", "DataConfig", "MetricConfig", "METRICS", "DEFAULT_METRIC", "MINIMIZED", "check_task"]

TaskKind = Literal["single_label", "multi_label", "regression", "causal_lm", "masked_lm"]
"""``single_label``: one class per text (softmax + cross-entropy); ``multi_label``: a set of classes per
text (sigmoid + binary cross-entropy, a decision threshold); ``regression``: a number (MSE);
``causal_lm``: next-token prediction and ``masked_lm``: masked-token prediction (the BERT recipe) on a
text corpus packed into sequences of ``data.max_length`` tokens (``lbsearch.trial.lm``)."""
LM_TASKS = ("causal_lm", "masked_lm")

METRICS: dict[str, tuple[str, ...]] = {
    "single_label": ("loss", "accuracy", "f1", "f1_macro", "f1_micro", "f1_weighted", "mcc", "auroc"),
    "multi_label": ("loss", "f1_micro", "f1_macro", "exact_match"),
    "regression": ("loss", "pearson", "spearman", "rmse", "mae"),
    "causal_lm": ("loss", "perplexity"),
    "masked_lm": ("loss", "perplexity"),
}
"""The metrics each task reports at every evaluation; ``metric.name`` picks the one a study optimises.
``f1`` is ``f1_macro``."""
DEFAULT_METRIC = {"single_label": "accuracy", "multi_label": "f1_micro", "regression": "rmse", "causal_lm": "loss", "masked_lm": "loss"}
MINIMIZED = ("loss", "rmse", "mae", "perplexity")
_RANGES = {"accuracy": (0, 1), "f1": (0, 1), "f1_macro": (0, 1), "f1_micro": (0, 1), "f1_weighted": (0, 1), "auroc": (0, 1),
           "exact_match": (0, 1), "mcc": (-1, 1), "pearson": (-1, 1), "spearman": (-1, 1)}
MetricName = Literal["loss", "accuracy", "f1", "f1_macro", "f1_micro", "f1_weighted", "mcc", "auroc", "exact_match",
                     "pearson", "spearman", "rmse", "mae", "perplexity"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


Split = Literal["train", "validation", "test"]


class DataConfig(_Strict):
    source: str = "rotten_tomatoes"
    """Builtin name (``rotten_tomatoes``; for language models also ``speeches``), a local CSV / JSON Lines /
    Parquet file (language models: also a plain-text ``.txt`` file, documents separated by blank lines), a
    ``datasets.save_to_disk`` folder, or a hub id. Relative paths are read from the spec file's folder."""
    subset: str | None = None
    """Hub datasets: the configuration (``glue`` has ``sst2``, ``mnli``, ...)."""
    splits: dict[Split, str | None] | None = None
    """Hub datasets and saved folders: the source's name for each split, e.g. ``{validation: validation_matched}``;
    ``null`` (say for an unlabelled test split) or a split that is not there is carved out of train."""
    files: dict[Split, str] | None = None
    """Pre-split local files; when given, ``source`` is ignored for loading."""
    text_column: str = "text"
    text_pair_column: str | None = None
    """A second text (NLI hypothesis, paraphrase, answer passage): the two are tokenised as a pair and
    truncated longest-first to ``max_length``."""
    label_column: str = "label"
    label_names: list[str | int] | None = None
    """Classification: every class, as written in the label column, in the order of the model's outputs.
    Default: the classes seen in train, sorted (numbers by value, so labels 1 and 2 are 2 classes)."""
    label_delimiter: str | None = None
    """Multi-label: the character between labels when the column holds strings (``"action|comedy"``)."""
    label_scaling: Literal["none", "standard", "minmax"] = "none"
    """Regression: the model learns (y - mean) / std (``standard``) or (y - min) / (max - min) (``minmax``) of
    the train labels; metrics are reported in the labels' own units."""
    max_length: int = Field(64, ge=8, le=8192)
    """Tokens per sequence: classification truncates to it; language models pack the corpus into sequences of exactly this many."""
    tokenizer_vocab: int | None = Field(None, ge=64, le=1_000_000)
    """Language models trained from scratch: train a byte-level BPE tokenizer of this many tokens on the train
    documents (kept with the prepared data and the saved model) instead of using the model's tokenizer."""
    eval_tokens: int | None = Field(None, ge=1)
    """Language models: the fixed held-out set scored at every evaluation, the first this many tokens (whole
    sequences) of the validation split; default all of it. Frequent evaluations of a large split cost more than training."""
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    """``masked_lm``: the fraction of tokens predicted (of those, 80% replaced by the mask token, 10% by a random token, 10% kept)."""
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    split_seed: int = 0
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)


class MetricConfig(_Strict):
    name: MetricName | None = None
    """The metric a study optimises and prunes by, one of the task's (``METRICS``); default: ``accuracy``
    (single-label), ``f1_micro`` (multi-label), ``rmse`` (regression)."""
    direction: Literal["maximize", "minimize"] | None = None
    """Known from the name: the loss and errors (rmse, mae) are minimised, the rest maximised."""
    target: float | None = None
    """Metric value whose first crossing gives samples-to-target and steps-to-target."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """Multi-label: a class is predicted when its sigmoid probability is at least this."""

    @model_validator(mode="after")
    def _direction(self) -> "MetricConfig":
        if self.name is None:
            return self
        natural = "minimize" if self.name in MINIMIZED else "maximize"
        if self.direction is None:
            self.direction = natural
        elif self.direction != natural:
            raise ValueError(f"`{self.name}` must be {natural}d, got direction `{self.direction}`")
        low, high = _RANGES.get(self.name, (None, None))
        if self.target is not None and low is not None and not low < self.target <= high:
            raise ValueError(f"`target` for {self.name} must lie in ({low}, {high}], got {self.target}")
        return self


def sample_unit(task: str, max_length: int) -> int:
    """Tokens per sample where budgets and pruning count tokens (language models: packed sequences of
    ``max_length``); 1 where they count samples."""
    return max_length if task in LM_TASKS else 1


def count_in_tokens(task: str, tr, sc, length: int) -> None:
    """Language models count in tokens: ``train.budget_tokens`` / ``eval_every_tokens`` and
    ``schedule.warmup_tokens`` set their sample (sequence) twins. Raises ValueError."""
    given = [f for f, v in (("train.budget_tokens", tr.budget_tokens), ("train.eval_every_tokens", tr.eval_every_tokens),
                            ("schedule.warmup_tokens", sc.warmup_tokens)) if v is not None]
    if given and task not in LM_TASKS:
        raise ValueError(f"`{given[0]}` is for language-model tasks (causal_lm, masked_lm); task `{task}` counts samples")
    if tr.budget_tokens is not None:
        if tr.budget_tokens < tr.batch_size * length:
            raise ValueError(f"`train.budget_tokens` must be >= one batch ({tr.batch_size} x {length} tokens), got {tr.budget_tokens}")
        tr.budget_samples = tr.budget_tokens // length
    if tr.eval_every_tokens is not None:
        tr.eval_every_samples = max(1, round(tr.eval_every_tokens / length))
    if sc.warmup_tokens is not None:
        sc.warmup_fraction = None
        sc.warmup_samples = round(sc.warmup_tokens / length)


def check_task(task: str, data: DataConfig, metric: MetricConfig) -> None:
    """Cross-field rules of a task; fills in the task's default metric. Raises ValueError."""
    if metric.name is None:
        metric.name = DEFAULT_METRIC[task]
    if metric.name not in METRICS[task]:
        raise ValueError(f"`metric.name: {metric.name}` is not a {task} metric; {task} reports {', '.join(METRICS[task])}")
    if task in LM_TASKS:
        for key in ("text_pair_column", "label_names", "label_delimiter"):
            if getattr(data, key) is not None:
                raise ValueError(f"a language model trains on text alone: remove `data.{key}` (task `{task}`)")
    if data.label_delimiter is not None and task != "multi_label":
        raise ValueError(f"`data.label_delimiter` splits multi-label strings: set `task: multi_label` or remove it, got task `{task}`")
    if data.label_scaling != "none" and task != "regression":
        raise ValueError(f"`data.label_scaling` is for regression: set `task: regression` or remove it, got task `{task}`")
    if data.label_names is not None and task == "regression":
        raise ValueError("`data.label_names` names classes; a regression task has none: remove it")
    if data.label_names is not None and len(set(map(str, data.label_names))) != len(data.label_names):
        raise ValueError(f"`data.label_names` must be distinct, got {data.label_names}")
