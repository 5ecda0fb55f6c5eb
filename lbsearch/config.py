"""Typed, strict configuration: the experiment and study models (loading them is ``lbsearch.spec``).

An *experiment* says what to train (data, model, optimizer, schedule, budget, metric, launcher);
a *study* says how to search it. Unknown keys are errors that list the valid ones, and every
error names the file and the field: ``studies/x.yaml: search_space.optimizer.lr.low: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SpecError",
    "BATCH_KEY",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "LauncherConfig",
    "MetricConfig",
    "ExperimentConfig",
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "SamplerConfig",
    "PrunerConfig",
    "StudyConfig",
]

BUILTIN_DATASETS = ("rotten_tomatoes",)
BUILTIN_MODELS = ("minilm-l6",)


class SpecError(Exception):
    """A spec that cannot be used. ``str(err)`` is the one line shown to the user."""

    def __init__(self, file: str | Path | None, field: str | None, message: str) -> None:
        self.file, self.field, self.message = file, field, message
        where = ": ".join(str(p) for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# ----------------------------------------------------------------------------------------------
# Experiment: what to train


class DataConfig(_Strict):
    source: str = "rotten_tomatoes"
    """Builtin name (``rotten_tomatoes``), a local CSV / JSON Lines / Parquet file, or a hub id."""
    files: dict[Literal["train", "validation", "test"], str] | None = None
    """Pre-split local files; when given, ``source`` is ignored for loading."""
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = Field(64, ge=8, le=8192)
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    split_seed: int = 0
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    source: str = "minilm-l6"
    """Builtin name (``minilm-l6``), a local model folder, a hub id, or ``random`` (init from ``config``)."""
    num_layers: int | None = Field(None, ge=1)
    """Keep only the first k transformer layers (pretrained weights are kept for those)."""
    tokenizer: str | None = None
    """Tokenizer source; defaults to ``source`` (and to ``minilm-l6`` for ``random``)."""
    model_type: str = "bert"
    pooling: Literal["cls", "mean"] = "cls"
    """``cls``: the architecture's own classification head; ``mean``: a linear head on the masked mean of
    the last hidden states (what sentence-embedding checkpoints such as MiniLM-L6 were trained for)."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Config fields: the whole architecture for ``random``, overrides (e.g. dropout) otherwise."""
    freeze_embeddings: bool = False
    """Keep the input (word) embeddings fixed: for short fine-tunes on CPU this skips the largest
    gradient and optimizer update (11.7M of MiniLM's 22M parameters)."""
    trust_remote_code: bool = False


class OptimizerConfig(_Strict):
    name: Literal["adamw", "lamb", "lars"] = "adamw"
    lr: float = Field(5e-5, gt=0, lt=10)
    """Learning rate at ``reference_batch_size``; scaled to the actual batch by ``lr_scaling``."""
    lr_scaling: Literal["none", "sqrt", "linear"] = "none"
    reference_batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


class ScheduleConfig(_Strict):
    name: Literal["linear", "cosine", "constant"] = "linear"
    warmup_fraction: float | None = Field(0.06, ge=0, lt=1)
    """Warmup as a fraction of the sample budget ..."""
    warmup_samples: int | None = Field(None, ge=0)
    """... or as a number of samples (set ``warmup_fraction: null`` to use this)."""

    @model_validator(mode="after")
    def _one_warmup(self) -> "ScheduleConfig":
        if self.warmup_fraction is not None and self.warmup_samples is not None:
            raise ValueError(
                "set only one of `warmup_fraction` and `warmup_samples`, got "
                f"{self.warmup_fraction} and {self.warmup_samples}"
            )
        return self


class TrainConfig(_Strict):
    batch_size: int = Field(32, ge=1)
    """The effective batch B = micro-batch x accumulation x processes."""
    budget_samples: int = Field(8000, ge=1)
    eval_every_samples: int = Field(2000, ge=1)
    clip_norm: float | None = Field(1.0, gt=0)
    """Global gradient-norm clipping threshold; ``null`` turns clipping off."""
    divergence_factor: float = Field(4.0, gt=1)
    """A training loss above this multiple of its first value stops the trial as diverged."""
    noise_scale: bool = True
    """Measure the gradient noise scale B_simple (logged at each evaluation as ``gns/b_simple``)."""
    noise_scale_ema: float = Field(0.9, ge=0, lt=1)
    """Decay of the moving averages of the |G|² and tr(Σ) estimates (per measured step)."""
    noise_scale_every: int = Field(4, ge=1)
    """Measure the noise scale every this many optimizer steps. Under accumulation a measured step
    lays its micro-batches out with more padding (see ``lbsearch.diagnostics``); 1 measures every step."""

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.budget_samples < self.batch_size:
            raise ValueError(
                f"`budget_samples` must be >= `batch_size`, got {self.budget_samples} < {self.batch_size}"
            )
        return self


class LauncherConfig(_Strict):
    processes: int = Field(1, ge=1, le=64)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto``: bf16 where the device runs it fast (CUDA with bf16, or a CPU with AVX512-BF16 / AMX),
    fp16 on older GPUs, else fp32 (``no``). Resolved before a trial starts; the resolved value is logged."""
    max_micro_batch: int | None = Field(64, ge=1)
    """Per-device micro-batch limit; a larger per-process batch becomes gradient accumulation.
    ``null``: probe it once per model, sequence length, precision and device (cached under mlruns/)."""
    accelerate_config: str | None = None
    """An Accelerate config file (DDP, FSDP, DeepSpeed); passed to ``accelerate launch`` as is."""
    cpu: bool = False
    """Force the CPU even where a GPU is present."""


class MetricConfig(_Strict):
    name: Literal["accuracy", "f1", "loss"] = "accuracy"
    direction: Literal["maximize", "minimize"] | None = None
    target: float | None = None
    """Metric value whose first crossing gives samples-to-target and steps-to-target."""

    @model_validator(mode="after")
    def _direction(self) -> "MetricConfig":
        natural = "minimize" if self.name == "loss" else "maximize"
        if self.direction is None:
            self.direction = natural
        elif self.direction != natural:
            raise ValueError(f"`{self.name}` must be {natural}d, got direction `{self.direction}`")
        if self.target is not None and self.name in ("accuracy", "f1") and not 0 < self.target <= 1:
            raise ValueError(f"`target` for {self.name} must lie in (0, 1], got {self.target}")
        return self


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)

    @model_validator(mode="after")
    def _batch_splits(self) -> "ExperimentConfig":
        if self.train.batch_size % self.launcher.processes:
            raise ValueError(
                f"`train.batch_size` must be divisible by `launcher.processes`, got "
                f"{self.train.batch_size} and {self.launcher.processes}"
            )
        return self


# ----------------------------------------------------------------------------------------------
# Study: how to search


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    optional: bool = False
    """Also try the value ``null`` (e.g. clipping off), as a categorical switch beside the range."""

    @model_validator(mode="after")
    def _range(self) -> "FloatParam":
        if not self.low < self.high:
            raise ValueError(f"`low < high` must hold, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs `low > 0`, got low={self.low}")
        return self


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> "IntParam":
        if not self.low < self.high:
            raise ValueError(f"`low < high` must hold, got low={self.low}, high={self.high}")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError(f"a log range needs `low > 0` and `step: 1`, got low={self.low}, step={self.step}")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Union[None, bool, int, float, str]] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "CategoricalParam":
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"`choices` must be unique, got {self.choices}")
        return self


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


BATCH_KEY = "train.batch_size"


class SamplerConfig(_Strict):
    name: Literal["tpe", "random", "grid", "qmc"] = "tpe"
    """``qmc``: scrambled Sobol points (quasi-random search, as in Shallue et al. 2018)."""
    seed: int = 0
    n_startup_trials: int = Field(5, ge=0)
    """TPE only: random trials before the model takes over."""


class PrunerConfig(_Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0)
    n_warmup_samples: int = Field(0, ge=0)
    """Median only: no pruning before this many samples have been seen."""
    group_by: str | None = None
    """Median only: compare a trial only with trials that have the same value of this parameter
    (``train.batch_size``: each batch size tuned on its own). Default with ``batch_ladder``: the batch size."""


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    experiment: ExperimentConfig
    n_trials: int = Field(ge=1, le=100_000)
    search_space: dict[str, Param] = Field(default_factory=dict)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    objective: Literal["validation"] = "validation"
    """The experiment's metric on the validation split at the end of the budget."""
    storage: str | None = None
    """Optuna storage URL; default: a journal file under mlruns/."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default: sqlite:///mlruns/mlflow.db."""
    heartbeat_interval: int = Field(10, ge=1, le=3600)
    """RDB storage: seconds between a running trial's heartbeats."""
    grace_period: int | None = Field(None, ge=1)
    """RDB storage: a running trial without a heartbeat for this long is failed and retried (default 3 intervals)."""
    max_retries: int = Field(1, ge=0, le=10)
    """How often a trial whose worker died is re-run with the same params."""
    batch_ladder: list[int] | None = Field(None, min_length=2)
    """Batch sizes tuned one by one (the Shallue et al. protocol): trial i runs B = ladder[i mod n] and
    samples the other parameters; pruning compares trials of the same B only."""

    @model_validator(mode="after")
    def _ladder(self) -> "StudyConfig":
        if self.batch_ladder is None:
            return self
        if len(set(self.batch_ladder)) != len(self.batch_ladder) or min(self.batch_ladder) < 1:
            raise ValueError(f"`batch_ladder` must hold distinct positive batch sizes, got {self.batch_ladder}")
        if BATCH_KEY in self.search_space:
            raise ValueError(f"set the batch size either by `batch_ladder` or by `search_space.{BATCH_KEY}`, not both")
        if self.pruner.group_by is None:
            self.pruner.group_by = BATCH_KEY
        return self

    @property
    def space(self) -> dict[str, Param]:
        """The parameters each trial suggests: the search space, plus the batch size of a ladder."""
        if self.batch_ladder is None:
            return self.search_space
        return {BATCH_KEY: CategoricalParam(type="categorical", choices=list(self.batch_ladder))} | self.search_space
