"""Typed, strict configuration (loading it is ``lbsearch.spec.load``): an *experiment* says what to train (data, model,
optimizer, schedule, budget, metric, launcher); a *study* says how to search it. Unknown keys are errors that list the valid
ones, and every error names the file and the field: ``studies/x.yaml: search_space.optimizer.lr.low: ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lbsearch.spec.batch_schedule import WithBatchSchedule, check_batch_schedule
from lbsearch.spec.branch import WithBranching
from lbsearch.spec.distill import WithDistill
from lbsearch.spec.executor import WithExecutor
from lbsearch.spec.registry import GROUPING_PRUNERS, LrScalingName, PrunerName, SamplerName, ScheduleName
from lbsearch.spec.tasks import LM_TASKS, DataConfig, MetricConfig, TaskKind, check_task, count_in_tokens

__all__ = ["SpecError", "BATCH_KEY", "DataConfig", "ModelConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig", "LauncherConfig", "MetricConfig",
           "ExperimentConfig", "FloatParam", "IntParam", "CategoricalParam", "SamplerConfig", "PrunerConfig", "BudgetConfig", "StudyConfig"]


class SpecError(Exception):
    """A spec that cannot be used. ``str(err)`` is the one line shown to the user."""

    def __init__(self, file: str | Path | None, field: str | None, message: str) -> None:
        self.file, self.field, self.message = file, field, message
        where = ": ".join(str(p) for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# ---------------------------------------------------------------------------------------------- Experiment: what to train

class ModelConfig(_Strict):
    source: str = "minilm-l6"
    """Builtin name (``minilm-l6``), a local model folder, a hub id, or ``random`` (init from ``config``)."""
    num_layers: int | None = Field(None, ge=1)
    """Keep only the first k transformer layers (pretrained weights are kept for those); mapped to each family's own field (``n_layers``, ``n_layer``, ...)."""
    tokenizer: str | None = None
    """Tokenizer source; unset: ``source``'s (the builtin model's, ``BUILTIN_MODELS[0]``, for ``random``)."""
    model_type: str = "bert"
    pooling: Literal["cls", "mean", "last"] = "cls"
    """``cls``: the architecture's own sequence-classification head (a decoder's pools its last token); ``mean`` / ``last``: a linear
    head on the masked mean / the last real token of the bare model's last hidden states, any family (MiniLM-L6 was trained for mean)."""
    pad_token: str | None = None
    """The token to pad with, for a tokenizer that has none; default: its pad token, else its eos token."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Config fields: the whole architecture for ``random``, overrides (e.g. dropout) otherwise."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass (the model's ``gradient_checkpointing_enable``): less memory for a larger micro-batch, ~30% more compute per step."""
    freeze_embeddings: bool = False
    """Keep the input (word) embeddings fixed: for short fine-tunes on CPU this skips the largest gradient and optimizer update (11.7M of MiniLM's 22M parameters)."""
    trust_remote_code: bool = False


class OptimizerConfig(_Strict):
    name: Literal["adamw", "lamb", "lars"] = "adamw"
    lr: float = Field(5e-5, gt=0, lt=10)
    """Learning rate at ``reference_batch_size``; at batch B it is lr x (B / reference_batch_size)^α (``spec.plan.lr_for_batch``)."""
    lr_scaling: LrScalingName = "none"
    lr_scaling_alpha: float | None = Field(None, ge=0, le=2)
    """α itself, in place of a named ``lr_scaling`` rule: a study may search it (e.g. a float from 0 to 1)."""
    reference_batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    fused: bool = True
    """AdamW's fused kernel (CPU and CUDA): one pass over the parameters instead of one per operation."""
    decay_embeddings: bool = True
    """Weight decay on embedding tables too (norm weights and biases never decay); language-model recipes often turn it off."""

    @model_validator(mode="after")
    def _one_alpha(self) -> "OptimizerConfig":
        if self.lr_scaling_alpha is not None and "lr_scaling" in self.model_fields_set and self.lr_scaling != "none":  # α replaces the default rule
            raise ValueError(f"set only one of `lr_scaling` and `lr_scaling_alpha`, got {self.lr_scaling} and {self.lr_scaling_alpha}")
        return self


class ScheduleConfig(_Strict):
    name: ScheduleName = "linear"
    warmup_fraction: float | None = Field(0.06, ge=0, lt=1)
    """Warmup as a fraction of the sample budget ..."""
    warmup_samples: int | None = Field(None, ge=0)
    """... or as a number of samples (set ``warmup_fraction: null`` to use this)."""
    warmup_tokens: int | None = Field(None, ge=0)
    """Language models: warmup in tokens (sequences x ``data.max_length``); replaces the other two."""
    min_lr_ratio: float = Field(0.0, ge=0, lt=1)
    """``linear`` / ``cosine``: decay to this fraction of the peak learning rate instead of to zero (its warmup starts from it too)."""

    @model_validator(mode="after")
    def _one_warmup(self) -> "ScheduleConfig":
        if self.warmup_fraction is not None and self.warmup_samples is not None:
            raise ValueError(f"set only one of `warmup_fraction` and `warmup_samples`, got {self.warmup_fraction} and {self.warmup_samples}")
        return self


class TrainConfig(_Strict, WithBatchSchedule):  # `batch_schedule`: lbsearch.spec.batch_schedule
    batch_size: int = Field(32, ge=1)
    """The effective batch B = micro-batch x accumulation x processes."""
    budget_samples: int = Field(8000, ge=1)
    eval_every_samples: int = Field(2000, ge=1)
    budget_tokens: int | None = Field(None, ge=1)
    """Language models: the budget in tokens; sets ``budget_samples`` to ``budget_tokens // data.max_length`` sequences."""
    eval_every_tokens: int | None = Field(None, ge=1)
    """Language models: evaluate every this many tokens (sets ``eval_every_samples``)."""
    clip_norm: float | None = Field(1.0, gt=0)
    """Global gradient-norm clipping threshold; ``null`` turns clipping off."""
    divergence_factor: float = Field(4.0, gt=1)
    """A training loss above this multiple of its first value stops the trial as diverged."""
    max_skipped_steps: int = Field(20, ge=1)  # fp16: more GradScaler-skipped steps in a row stop the trial (reason overflow)
    log_every_steps: int = Field(10, ge=1)
    """Read the steps' loss and gradient norm on the host (metric rows, the stop decision) every this many optimizer steps, at each evaluation
    and checkpoint, and about every 2 s where steps are slow; between reads no step waits for the device (``lbsearch.trial.readings``)."""
    noise_scale: bool = True
    """Measure the gradient noise scale B_simple (logged at each evaluation as ``gns/b_simple``)."""
    noise_scale_ema: float = Field(0.9, ge=0, lt=1)
    """Decay of the moving averages of the |G|² and tr(Σ) estimates (per measured step)."""
    noise_scale_every: int = Field(4, ge=1)
    """Measure the noise scale every this many optimizer steps (a measured step pads its micro-batches more: ``lbsearch.trial.diagnostics``)."""
    checkpoint_every_samples: int | None = Field(None, ge=1)
    """Write a checkpoint (``lbsearch.trial.checkpoint``) each time this many more samples are seen; a re-run resumes from it."""
    checkpoint_every_minutes: float | None = Field(30.0, gt=0)
    """... or, where that is unset, after each this many minutes of training (a shorter trial writes none); ``null``: none by time."""
    checkpoint_on_stop: bool = True
    """SIGTERM (a scheduler's pre-emption, Ctrl-C in the orchestrator) writes a checkpoint at the next step boundary."""
    stop_grace_s: float = Field(30.0, gt=0)
    """Seconds a trial asked to stop has to finish its step and write that checkpoint before it is killed."""

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.budget_samples < self.batch_size:
            raise ValueError(f"`budget_samples` must be >= `batch_size`, got {self.budget_samples} < {self.batch_size}")
        return self


class LauncherConfig(_Strict):
    processes: int = Field(1, ge=1, le=64)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto``: bf16 where the device runs it fast (CUDA with bf16, a CPU with AVX512-BF16 / AMX), fp16 on older GPUs, else fp32."""
    max_micro_batch: int | None = Field(64, ge=1)
    """Per-device micro-batch limit; a larger per-process batch becomes gradient accumulation. ``null``: probe it once per model, sequence length, precision and device (cached under mlruns/)."""
    accelerate_config: str | None = None
    """An Accelerate config file (DDP, FSDP, DeepSpeed, dynamo, machines). What it sets is used as set: lbsearch
    passes ``accelerate launch`` only what the file leaves unset (``lbsearch.spec.accelerate_file``)."""
    num_machines: int | None = Field(None, ge=1, le=1024)
    """Nodes one trial spans (``launcher.processes`` counts the processes on all of them). Unset: the config file's, else ``SLURM_NNODES`` / ``NNODES``, else 1."""
    machine_rank: int | None = Field(None, ge=0)
    """This node's rank. Unset: the config file's, else ``SLURM_NODEID`` / ``NODE_RANK``, else 0."""
    main_process_ip: str | None = None
    """Node 0's address. Unset: the config file's, else ``MASTER_ADDR``, else 127.0.0.1."""
    main_process_port: int | None = Field(None, ge=1, le=65535)
    """Node 0's rendezvous port. Unset: the config file's, else ``MASTER_PORT``, else a free port per trial."""
    cpu: bool = False
    """Force the CPU even where a GPU is present."""
    compile: bool = False
    """``torch.compile`` (inductor) through Accelerate, each layer compiled once: repays only long trials (docs/how_a_trial_runs.md)."""
    pack: bool = True
    """Mean / last-token heads: micro-batches packed in rows of ``data.max_length`` (``lbsearch.trial.packing``), if the model passes its check."""
    pad_to_multiple_of: int | None = Field(None, ge=1)
    """Round each micro-batch's length up to a multiple of this (default 16 with ``compile``: few shapes, few compilations; else 1)."""
    peak_tflops: float | None = Field(None, gt=0)
    """One device's peak for MFU; default: the GPU table in ``lbsearch.trial.flops``, or this CPU's matmul rate, measured once."""


class ExperimentConfig(_Strict, WithBranching, WithDistill):  # `branching`: lbsearch.spec.branch; `distill`: lbsearch.spec.distill
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    task: TaskKind = "single_label"
    """``single_label``, ``multi_label`` or ``regression``: the loss, the labels and the metrics follow from it."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)

    @model_validator(mode="after")
    def _task(self) -> "ExperimentConfig":
        check_task(self.task, self.data, self.metric)
        count_in_tokens(self.task, self.train, self.schedule, self.data.max_length)
        return self

    @model_validator(mode="after")
    def _batch_splits(self) -> "ExperimentConfig":
        if self.launcher.processes % (machines := self.launcher.num_machines or 1):
            raise ValueError(f"`launcher.processes` (on all machines) must be divisible by `launcher.num_machines`, got "
                             f"{self.launcher.processes} and {machines}")
        if self.train.batch_size % self.launcher.processes:
            raise ValueError(f"`train.batch_size` must be divisible by `launcher.processes`, got {self.train.batch_size} and {self.launcher.processes}")
        check_batch_schedule(self.train, self.task in LM_TASKS, self.data.max_length, self.launcher.processes, self.branching is not None)
        return self


# ---------------------------------------------------------------------------------------------- Study: how to search

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
    name: SamplerName = "gp_ordinal"
    """One of ``registry.SAMPLERS`` (the default: benchmarks/search_efficiency.py, docs/results.md)."""
    seed: int = 0
    """The study's seed. Each trial's draws come from (seed, trial number): reproducible, and never the same for two workers or for a resumed study (a Sobol sequence keeps one seed)."""
    n_startup_trials: int = Field(5, ge=0)
    """TPE and GP: random trials (gp_ordinal: Sobol points) before the model takes over."""


class PrunerConfig(_Strict):
    name: PrunerName = "none"
    """One of ``registry.PRUNERS``."""
    n_startup_trials: int = Field(3, ge=0)
    """Median and percentile: trials that finish before pruning starts."""
    n_warmup_samples: int = Field(0, ge=0)
    """One field for every pruner: no trial is pruned before it has seen this many samples (ASHA and Hyperband: their first rung)."""
    protect_warmup: bool = False  # every pruner: no trial is pruned before its own lr warmup is over (lbsearch.study.pruner.WarmupGuard)
    reduction_factor: int = Field(3, ge=2)
    """ASHA and Hyperband: 1/reduction_factor of the trials go on at each rung."""
    percentile: float = Field(75.0, gt=0, lt=100)
    """Percentile: a trial goes on while its best value is within the best ``percentile`` % of the finished trials' at the same samples seen."""
    patience: int = Field(2, ge=0)
    """Patient: the evaluations a trial may go without improving (by more than ``min_delta``) before ``wraps`` may stop it."""
    min_delta: float = Field(0.0, ge=0)
    wraps: Literal["median", "percentile", "asha"] = "median"
    """Patient: the pruner that decides once the trial's patience has run out."""
    group_by: str | None = None
    """Compare a trial only with trials of the same value of this parameter (``registry.GROUPING_PRUNERS``); default with ``batch_ladder``: B."""

    @model_validator(mode="after")
    def _grouping(self) -> "PrunerConfig":
        if self.group_by is not None and self.name not in GROUPING_PRUNERS:
            raise ValueError(f"`group_by` works with the {', '.join(GROUPING_PRUNERS[:-1])} and {GROUPING_PRUNERS[-1]} pruners, not `{self.name}`")
        return self


class ObjectiveConfig(_Strict):
    name: Literal["metric", "samples_to_target", "steps_to_target", "wall_time", "samples"]
    """``metric``: the validation metric at the end of the budget; ``samples_to_target`` / ``steps_to_target``: when the metric first
    reached ``metric.target`` (twice the budget when it never did); ``wall_time``: the trial's seconds; ``samples``: samples seen."""
    direction: Literal["maximize", "minimize"] | None = None
    """Default: the metric's own direction for ``metric``, ``minimize`` for the costs."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class WarmStartConfig(_Strict):
    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """An earlier study in the same storage (or in ``storage``) whose best trials run first."""
    top_k: int = Field(3, ge=1, le=1000)
    storage: str | None = None


class BudgetConfig(_Strict):
    """The compute a study may spend: it starts no trial once its finished trials have trained this much."""
    samples: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)  # language models: samples x data.max_length
    device_hours: float | None = Field(None, gt=0)  # each trial's seconds x its processes

    @model_validator(mode="after")
    def _one(self) -> "BudgetConfig":
        if len(given := [k for k, v in self if v is not None]) != 1:
            raise ValueError(f"set exactly one of `samples`, `tokens`, `device_hours`, got {', '.join(given) or 'none'}")
        return self


class StudyConfig(_Strict, WithExecutor):  # `executor`: lbsearch.spec.executor
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    experiment: ExperimentConfig
    n_trials: int = Field(ge=1, le=100_000)
    budget: BudgetConfig | None = None
    """Stop at this much compute (``lbsearch.study.views.spent``) or at ``n_trials``, whichever comes first."""
    parallel: int = Field(1, ge=1, le=64)
    """Trials at once on this host, each on its own devices (``lbsearch.orchestrator.parallel``); ``run --parallel N`` overrides it."""
    search_space: dict[str, Param] = Field(default_factory=dict)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    objective: Literal["validation"] = "validation"
    """The experiment's metric on the validation split at the end of the budget (see ``objectives``)."""
    objectives: list[ObjectiveConfig] | None = None
    """What the study optimises; two or more make a multi-objective study (a Pareto front), e.g. ``[metric, samples_to_target]``. Default: ``[metric]``."""
    constraints: list[str] = Field(default_factory=list)
    """Expressions over the params that every trial must satisfy, e.g. ``train.batch_size < 512 or optimizer.lr <= 1e-3``;
    a suggestion that violates one is told as pruned (reason ``constraint``) without training. With the grid
    sampler they leave points out of the grid, e.g. ``seed == 0 or train.batch_size in [16, 32]``."""
    warm_start: WarmStartConfig | None = None
    """Run the best ``top_k`` configurations of an earlier study first."""
    storage: str | None = None
    """Optuna storage URL; default: a journal file under mlruns/."""
    save_model: Literal["best", "all", "none"] = "best"
    """Kept models (under mlruns/models/<study>/): the best complete trial's only, every complete trial's, or none."""
    tracking_uri: str | None = None
    """MLflow tracking URI; default: sqlite:///mlruns/mlflow.db."""
    heartbeat_interval: int = Field(10, ge=1, le=3600)
    """RDB storage: seconds between a running trial's heartbeats."""
    grace_period: int | None = Field(None, ge=1)
    """RDB storage: a running trial without a heartbeat for this long is failed and retried (default 3 intervals)."""
    max_retries: int = Field(1, ge=0, le=10)
    """How often a trial whose worker died is re-run with the same params."""
    batch_ladder: list[int] | None = Field(None, min_length=2)
    """Batch sizes tuned one by one (the Shallue et al. protocol): trial i runs B = ladder[i mod n] and samples the other parameters; pruning compares trials of the same B only."""

    @model_validator(mode="after")
    def _ladder(self) -> "StudyConfig":
        if self.batch_ladder is None:
            return self
        if len(set(self.batch_ladder)) != len(self.batch_ladder) or min(self.batch_ladder) < 1:
            raise ValueError(f"`batch_ladder` must hold distinct positive batch sizes, got {self.batch_ladder}")
        if BATCH_KEY in self.search_space:
            raise ValueError(f"set the batch size either by `batch_ladder` or by `search_space.{BATCH_KEY}`, not both")
        if self.pruner.group_by is None and self.pruner.name in GROUPING_PRUNERS:
            self.pruner.group_by = BATCH_KEY
        return self

    @model_validator(mode="after")
    def _objectives(self) -> "StudyConfig":
        objs = self.objectives or []
        names = [o.name for o in objs]
        if len(set(names)) != len(names):
            raise ValueError(f"`objectives` must be distinct, got {names}")
        if (needs_target := [n for n in names if n.endswith("_to_target")]) and self.experiment.metric.target is None:
            raise ValueError(f"objective `{needs_target[0]}` needs `metric.target` in the experiment")
        for o in objs:
            natural = self.experiment.metric.direction if o.name == "metric" else "minimize"
            if o.direction is None:
                o.direction = natural
        if names not in ([], ["metric"]) and self.pruner.name != "none":
            why = "several objectives" if len(names) > 1 else f"the objective `{names[0]}`"
            raise ValueError(f"pruning compares validation {self.experiment.metric.name} along the way, which cannot "
                             f"rank trials by {why} (Optuna prunes single-objective studies only): set `pruner: {{name: none}}`")
        if self.budget and self.budget.tokens and getattr(self.experiment, "task", None) not in LM_TASKS:
            raise ValueError(f"`budget.tokens` is for language-model tasks ({', '.join(LM_TASKS)}); this experiment counts samples: use `budget.samples`")
        from lbsearch.spec.constraints import parse

        parse(self.constraints, set(self.space))
        return self

    @property
    def objective_list(self) -> list[ObjectiveConfig]:
        return self.objectives or [ObjectiveConfig(name="metric", direction=self.experiment.metric.direction)]

    @property
    def space(self) -> dict[str, Param]:
        """The parameters each trial suggests: the search space, plus the batch size of a ladder."""
        if self.batch_ladder is None:
            return self.search_space
        return {BATCH_KEY: CategoricalParam(type="categorical", choices=list(self.batch_ladder))} | self.search_space
