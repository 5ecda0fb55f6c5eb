"""Typed, strict configuration loaded from YAML.

An *experiment* says what to train (data, model, optimizer, schedule, budget, metric, launcher);
a *study* says how to search it. Unknown keys are errors that list the valid ones, and every
error names the file and the field: ``studies/x.yaml: search_space.optimizer.lr.low: ...``.
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "SpecError",
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
    "load_experiment",
    "load_study",
    "parse_set",
    "apply_params",
]

BUILTIN_DATASETS = ("rotten_tomatoes",)
BUILTIN_MODELS = ("minilm-l6",)
_DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".bz2", ".gz")


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


# ----------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(path, None, "file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(path, None, f"malformed YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(path, None, f"expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set a.b=value`` items; values are read as YAML (``1e-4``, ``null``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(None, "--set", f"expected key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c``; keys that themselves contain dots (``search_space.optimizer.lr.high``) are
    matched greedily against the keys present."""
    keys = dotted.split(".")
    node = raw
    while len(keys) > 1:
        n = next((n for n in range(len(keys) - 1, 1, -1) if ".".join(keys[:n]) in node), 1)
        key, keys = ".".join(keys[:n]), keys[n:]
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise SpecError(None, dotted, f"`{key}` is not a section")
        node = nxt
    node[keys[0]] = value


def apply_params(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted ``params`` key set to its value."""
    raw = copy.deepcopy(raw)
    for key, value in params.items():
        _set_path(raw, key, value)
    return raw


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The valid keys of the section at ``loc`` (for "unknown key" messages)."""
    cls: Any = model
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            if part in ("float", "int", "categorical"):  # discriminated union tag in the loc
                cls = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}[part]
                continue
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = args[0] if args else ann
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return None


def _raise_validation(path: Path | None, model: type[BaseModel], err: ValidationError, prefix: str = "") -> None:
    errors = err.errors()
    # an unknown key is usually a misspelt one, which then also shows up as "missing": report the typo
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    if loc and loc[0] == "search_space":  # drop pydantic's union-member tag
        loc = tuple(p for i, p in enumerate(loc) if not (i == 2 and p in ("float", "int", "categorical")))
    field = ".".join(str(p) for p in loc)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    kind = first["type"]
    if kind == "extra_forbidden":
        valid = _field_names(model, tuple(first["loc"])[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid or [], n=1)
        msg = "unknown key" + (f" (did you mean `{close[0]}`?)" if close else "") + (f"; valid keys: {', '.join(valid)}" if valid else "")
    elif kind == "missing":
        msg = "required field is missing"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if "input" in first and kind not in ("value_error",) and not isinstance(first["input"], dict):
            msg += f", got {first['input']!r}"
    raise SpecError(path, field or None, msg) from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make local data/model paths in an experiment absolute, relative to its spec file."""

    def local(value: Any) -> Any:
        if not isinstance(value, str) or value in BUILTIN_DATASETS + BUILTIN_MODELS + ("random",):
            return value
        candidate = (base / value).expanduser()
        looks_local = value.startswith((".", "/", "~")) or value.lower().endswith(_DATA_SUFFIXES)
        if candidate.exists() or (looks_local and not Path(value).is_absolute()):
            return str(candidate.resolve())
        return value

    data = raw.get("data")
    if isinstance(data, dict):
        if "source" in data:
            data["source"] = local(data["source"])
        if isinstance(data.get("files"), dict):
            data["files"] = {k: local(v) for k, v in data["files"].items()}
    model = raw.get("model")
    if isinstance(model, dict):
        for key in ("source", "tokenizer"):
            if key in model:
                model[key] = local(model[key])
    launcher = raw.get("launcher")
    if isinstance(launcher, dict) and isinstance(launcher.get("accelerate_config"), str):
        launcher["accelerate_config"] = str((base / launcher["accelerate_config"]).resolve())


def _check_local_sources(path: Path | None, exp: ExperimentConfig) -> None:
    """Missing local files are spec errors, found before anything runs."""
    src = exp.data.source
    if exp.data.files:
        for split, file in exp.data.files.items():
            if not Path(file).is_file():
                raise SpecError(path, f"data.files.{split}", f"file not found: {file}")
    elif src not in BUILTIN_DATASETS and Path(src).is_absolute() and not Path(src).exists():
        raise SpecError(path, "data.source", f"file not found: {src}")
    for key in ("source", "tokenizer"):
        value = getattr(exp.model, key)
        if value and value not in BUILTIN_MODELS + ("random",) and Path(value).is_absolute() and not Path(value).is_dir():
            raise SpecError(path, f"model.{key}", f"model folder not found: {value}")
    if exp.model.source == "random" and not exp.model.config:
        raise SpecError(path, "model.config", "a `random` model needs its architecture in `config` (e.g. hidden_size)")


def validate_experiment(raw: dict[str, Any], path: Path | None = None, prefix: str = "") -> ExperimentConfig:
    try:
        exp = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        _raise_validation(path, ExperimentConfig, err, prefix)
    try:
        _check_local_sources(path, exp)
    except SpecError as err:
        raise SpecError(path, f"{prefix}.{err.field}" if prefix else err.field, err.message) from None
    return exp


def _split_overrides(overrides: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    inner = {k[len(prefix) + 1 :]: v for k, v in overrides.items() if k.startswith(prefix + ".")}
    outer = {k: v for k, v in overrides.items() if not k.startswith(prefix + ".")}
    return inner, outer


def load_experiment_raw(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    path = Path(path)
    raw = apply_params(_read_yaml(path), overrides or {})
    _resolve_paths(raw, path.parent)
    return raw


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate an experiment spec; ``overrides`` are dotted ``--set`` keys."""
    path = Path(path)
    return validate_experiment(load_experiment_raw(path, overrides), path)


def _check_search_space(path: Path, study: StudyConfig, exp_raw: dict[str, Any]) -> None:
    """Each searched field must exist, and each end of its range must give a valid experiment."""
    for key, param in study.search_space.items():
        field = f"search_space.{key}"
        parts = key.split(".")
        names = _field_names(ExperimentConfig, tuple(parts[:-1]))
        parent_is_dict = parts[0] == "model" and len(parts) >= 3 and parts[1] == "config"
        if not parent_is_dict and (names is None or parts[-1] not in names):
            raise SpecError(path, field, f"`{key}` is not a field of the experiment")
        if isinstance(param, CategoricalParam):
            probes = list(param.choices)
        else:
            probes = [param.low, param.high] + ([None] if isinstance(param, FloatParam) and param.optional else [])
        for value in probes:
            try:
                validate_experiment(apply_params(exp_raw, {key: value}), None)
            except SpecError as err:
                raise SpecError(path, field, f"value {value!r} gives an invalid experiment: {err}") from None
    if study.sampler.name == "grid":
        bad = [k for k, p in study.search_space.items() if not isinstance(p, CategoricalParam)]
        if bad:
            raise SpecError(path, f"search_space.{bad[0]}", "the grid sampler needs `type: categorical` for every parameter")


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[StudyConfig, dict[str, Any]]:
    """Load a study spec and its experiment.

    Args:
        path: The study YAML. Its ``experiment`` is a path relative to it; its optional
            ``experiment_overrides`` (dotted fields) change that experiment for this study.
        overrides: Dotted ``--set`` keys; ``experiment.*`` keys go to the experiment.

    Returns:
        The validated study, and the experiment as raw (path-resolved) data, to which trial
        params are applied.
    """
    path = Path(path)
    raw = _read_yaml(path)
    exp_over, study_over = _split_overrides(overrides or {}, "experiment")
    raw = apply_params(raw, study_over)
    spec_over = raw.pop("experiment_overrides", None) or {}
    if not isinstance(spec_over, dict) or not all(isinstance(k, str) for k in spec_over):
        raise SpecError(path, "experiment_overrides", "expected a mapping of dotted experiment fields to values, e.g. {train.budget_samples: 8000}")
    exp_over = spec_over | exp_over  # --set experiment.* wins over the spec's own overrides
    exp_ref = raw.get("experiment")
    if isinstance(exp_ref, str):
        exp_path = (path.parent / exp_ref).resolve()
        if not exp_path.is_file():
            raise SpecError(path, "experiment", f"experiment file not found: {exp_ref}")
        exp_raw = load_experiment_raw(exp_path, exp_over)
        exp_file: Path = exp_path
    elif isinstance(exp_ref, dict):
        exp_raw = apply_params(exp_ref, exp_over)
        _resolve_paths(exp_raw, path.parent)
        exp_file = path
    else:
        raise SpecError(path, "experiment", "required: the path of an experiment YAML (or an inline mapping)")
    launcher = raw.get("launcher")
    if launcher is not None:  # the study's launcher section overrides the experiment's
        if not isinstance(launcher, dict):
            raise SpecError(path, "launcher", "expected a mapping")
        exp_raw = apply_params(exp_raw, {f"launcher.{k}": v for k, v in launcher.items()})
    validate_experiment(exp_raw, exp_file if exp_file != path else path, "" if exp_file != path else "experiment")
    study_raw = {k: v for k, v in raw.items() if k != "launcher"}
    study_raw["experiment"] = exp_raw
    try:
        study = StudyConfig.model_validate(study_raw)
    except ValidationError as err:
        _raise_validation(path, StudyConfig, err)
    _check_search_space(path, study, exp_raw)
    return study, exp_raw


def lr_for_batch(opt: OptimizerConfig, batch_size: int) -> float:
    """lr = base_lr * (B / B_ref)^alpha; alpha 0.5 (Malladi et al. 2022), 1 (Goyal et al. 2017)."""
    alpha = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[opt.lr_scaling]
    return opt.lr * math.pow(batch_size / opt.reference_batch_size, alpha)

