"""Script trials: an experiment of ``kind: script`` runs the user's own training command as the trial.

The experiment keeps the sections that lbsearch derives the trial plan from (``optimizer``,
``schedule``, ``train``, ``launcher``) and the metric the study optimises; ``script`` names the
command and how the trial's values reach it; ``params`` holds the script's own settings (searchable
as ``params.<name>``). What the script receives (``trial_values``): the seed, the effective batch B
and its split (micro-batch x accumulation x processes), the lr after the scaling rule, steps, warmup
steps, the budget, the evaluation interval, clipping, and ``params``. Torch-free.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lbsearch.spec.batch_schedule import scheduled
from lbsearch.spec.config import LauncherConfig, OptimizerConfig, ScheduleConfig, StudyConfig, TrainConfig

if TYPE_CHECKING:
    from lbsearch.spec.plan import TrialPlan

__all__ = ["ScriptConfig", "ScriptMetricConfig", "ScriptExperimentConfig", "ScriptStudyConfig", "experiment_model", "is_script", "trial_values", "VALUE_NAMES", "SPEC_ENV", "PARAMS_ENV", "PARAMS_JSON"]

SPEC_ENV = "LBSEARCH_TRIAL_SPEC"
"""The environment variable that tells a script trial (``lbsearch.api``) where its ``spec.json`` is."""
PARAMS_JSON, PARAMS_ENV = "params.json", "LBSEARCH_PARAMS_FILE"
"""The file of a script trial's values, in its folder (the script's working directory; ``params_as: json``), and the
environment variable that names its path. User scripts open it by name: a rename breaks them."""

VALUE_NAMES = ("seed", "batch_size", "micro_batch", "accumulation", "processes", "lr", "warmup_steps", "steps", "budget_samples",
               "eval_every_samples", "clip_norm", "weight_decay", "schedule", "precision")
"""The values every script trial receives, besides its own ``params``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScriptConfig(_Strict):
    command: str = Field(min_length=1)
    """The training script and its arguments, e.g. ``train.py --epochs 3`` (a path relative to the spec file),
    or ``-m package.module ...``. Started by ``accelerate launch`` in the trial's own folder."""
    params_as: Literal["flags", "env", "json"] = "flags"
    """How the trial's values reach the script: ``--name value`` flags after the command, ``LBSEARCH_<NAME>``
    environment variables, or a ``params.json`` file in the trial's folder (also ``$LBSEARCH_PARAMS_FILE``)."""
    values: list[str] | None = None
    """Which values to pass (default: all of ``trial_values``); a script whose argument parser knows only some
    names lists them here."""
    metrics_file: str | None = None
    """For a script that does not use ``lbsearch.api``: a JSON file of final metrics it writes (relative to the
    trial's folder). Without it, its last stdout line that is a JSON object holds them."""

    @model_validator(mode="after")
    def _module(self) -> "ScriptConfig":
        argv = shlex.split(self.command)
        if not argv or (argv[0] == "-m" and len(argv) < 2):
            raise ValueError(f"`command` must name a script or `-m module`, got {self.command!r}")
        return self


class ScriptMetricConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """The metric the script reports (``lbsearch.api`` ``report`` / ``finish``, or its final JSON)."""
    direction: Literal["maximize", "minimize"] | None = None
    """Default: ``minimize`` for a name containing ``loss``, ``error`` or ``perplexity``, else ``maximize``."""
    target: float | None = None

    @model_validator(mode="after")
    def _direction(self) -> "ScriptMetricConfig":
        if self.direction is None:
            lower = any(w in self.name.lower() for w in ("loss", "error", "perplexity"))
            self.direction = "minimize" if lower else "maximize"
        return self


class ScriptExperimentConfig(_Strict):
    kind: Literal["script"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    script: ScriptConfig
    params: dict[str, Any] = Field(default_factory=dict)
    """The script's own settings (e.g. ``dropout``, ``max_length``); search them as ``params.<name>``."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    metric: ScriptMetricConfig

    @model_validator(mode="after")
    def _checks(self) -> "ScriptExperimentConfig":
        if self.train.batch_size % self.launcher.processes:
            raise ValueError(f"`train.batch_size` must be divisible by `launcher.processes`, got "
                             f"{self.train.batch_size} and {self.launcher.processes}")
        if self.launcher.max_micro_batch is None:
            raise ValueError("a script trial cannot probe its micro-batch: set `launcher.max_micro_batch`")
        if scheduled(self.train):
            raise ValueError("`train.batch_schedule` is for lbsearch's own training loop: a script trial runs one B")
        clash = sorted(set(self.params) & set(VALUE_NAMES))
        if clash:
            raise ValueError(f"`params` must not redefine the values lbsearch derives, got {clash}: set them in "
                             f"`train` / `optimizer` / `schedule` instead")
        unknown = sorted(set(self.script.values or ()) - set(VALUE_NAMES) - set(self.params))
        if unknown:
            raise ValueError(f"`script.values` names {unknown}, which are neither {list(VALUE_NAMES)} nor in `params`")
        return self


class ScriptStudyConfig(StudyConfig):
    experiment: ScriptExperimentConfig  # type: ignore[assignment]


def is_script(raw_or_exp: Any) -> bool:
    if isinstance(raw_or_exp, dict):
        return raw_or_exp.get("kind") == "script"
    return isinstance(raw_or_exp, ScriptExperimentConfig)


def experiment_model(raw: Any) -> type[BaseModel]:
    """The model an experiment mapping validates against: ``kind: script`` or lbsearch's own training."""
    from lbsearch.spec.config import ExperimentConfig

    return ScriptExperimentConfig if is_script(raw) else ExperimentConfig


def trial_values(exp: ScriptExperimentConfig, plan: "TrialPlan") -> dict[str, Any]:
    """What the script receives: the derived plan, the settings it needs, and its own ``params``."""
    values = {"seed": exp.seed, "batch_size": plan.batch_size, "micro_batch": plan.micro_batch, "accumulation": plan.accumulation,
              "processes": plan.processes, "lr": plan.lr, "warmup_steps": plan.warmup_steps, "steps": plan.steps,
              "budget_samples": plan.budget_samples, "eval_every_samples": exp.train.eval_every_samples,
              "clip_norm": exp.train.clip_norm, "weight_decay": exp.optimizer.weight_decay, "schedule": exp.schedule.name,
              "precision": plan.precision} | exp.params
    return {k: v for k, v in values.items() if exp.script.values is None or k in exp.script.values}


