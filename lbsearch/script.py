"""Script trials: an experiment of ``kind: script`` runs the user's own training command as the trial.

The experiment keeps the sections that lbsearch derives the trial plan from (``optimizer``,
``schedule``, ``train``, ``launcher``) and the metric the study optimises; ``script`` names the
command and how the trial's values reach it; ``params`` holds the script's own settings (searchable
as ``params.<name>``). What the script receives (``trial_values``): the seed, the effective batch B
and its split (micro-batch x accumulation x processes), the lr after the scaling rule, steps, warmup
steps, the budget, the evaluation interval, clipping, and ``params``. Torch-free.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lbsearch.config import LauncherConfig, OptimizerConfig, ScheduleConfig, StudyConfig, TrainConfig

if TYPE_CHECKING:
    from lbsearch.plan import TrialPlan
    from lbsearch.protocol import TrialResult

__all__ = ["ScriptConfig", "ScriptMetricConfig", "ScriptExperimentConfig", "ScriptStudyConfig", "experiment_model", "is_script",
           "trial_values", "script_argv", "script_env", "script_program", "result_from_output", "VALUE_NAMES", "SPEC_ENV"]

SPEC_ENV = "LBSEARCH_TRIAL_SPEC"
"""The environment variable that tells a script trial (``lbsearch.api``) where its ``spec.json`` is."""

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
    from lbsearch.config import ExperimentConfig

    return ScriptExperimentConfig if is_script(raw) else ExperimentConfig


def trial_values(exp: ScriptExperimentConfig, plan: "TrialPlan") -> dict[str, Any]:
    """What the script receives: the derived plan, the settings it needs, and its own ``params``."""
    values = {"seed": exp.seed, "batch_size": plan.batch_size, "micro_batch": plan.micro_batch, "accumulation": plan.accumulation,
              "processes": plan.processes, "lr": plan.lr, "warmup_steps": plan.warmup_steps, "steps": plan.steps,
              "budget_samples": plan.budget_samples, "eval_every_samples": exp.train.eval_every_samples,
              "clip_norm": exp.train.clip_norm, "weight_decay": exp.optimizer.weight_decay, "schedule": exp.schedule.name,
              "precision": plan.precision} | exp.params
    return {k: v for k, v in values.items() if exp.script.values is None or k in exp.script.values}


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def script_argv(exp: ScriptExperimentConfig, values: dict[str, Any], params_file: Path) -> list[str]:
    """The script and its arguments as ``accelerate launch`` runs them (flags appended for ``params_as: flags``;
    ``{params_file}`` in the command becomes the path of ``params.json``)."""
    argv = [a.replace("{params_file}", str(params_file)) for a in shlex.split(exp.script.command)]
    if exp.script.params_as == "flags":
        argv += [x for k, v in values.items() if v is not None for x in (f"--{k}", _text(v))]
    return argv


def script_env(exp: ScriptExperimentConfig, values: dict[str, Any], spec_file: Path, params_file: Path) -> dict[str, str]:
    env = {SPEC_ENV: str(spec_file), "LBSEARCH_PARAMS_FILE": str(params_file)}
    if exp.script.params_as == "env":
        env |= {f"LBSEARCH_{k.upper()}": _text(v) for k, v in values.items() if v is not None}
    return env


def _final_metrics(exp: ScriptExperimentConfig, workdir: Path, last_json: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if exp.script.metrics_file:
        path = workdir / exp.script.metrics_file
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            return None, f"its metrics file {exp.script.metrics_file} could not be read ({type(err).__name__})"
        return (found, "") if isinstance(found, dict) else (None, f"its metrics file {exp.script.metrics_file} holds no JSON object")
    return last_json, "it printed no JSON line" if last_json is None else ""


def result_from_output(exp: ScriptExperimentConfig, workdir: Path, code: int, last_json: dict[str, Any] | None) -> "TrialResult | None":
    """The result of a script that exited without writing one through ``lbsearch.api``: complete when it
    exited 0 with the metric in its metrics file or its last JSON line; None (a failed trial) otherwise."""
    from lbsearch.protocol import TrialResult

    if code != 0:
        return None
    metrics, why = _final_metrics(exp, workdir, last_json)
    name = exp.metric.name
    value = (metrics or {}).get(name, (metrics or {}).get(f"eval_{name}"))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        why = why or f"its final metrics lack a finite `{name}`"
        return TrialResult(state="failed", reason=f"the script exited 0 without a result: {why}")
    numbers = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    budget = exp.train.budget_samples - exp.train.budget_samples % exp.train.batch_size
    return TrialResult(state="complete", value=float(value), validation=numbers | {name: float(value)},
                       samples=budget, steps=budget // exp.train.batch_size)


def script_program(exp: ScriptExperimentConfig, plan: "TrialPlan", workdir: Path):
    """For ``launch.run_trial_process``: each rank runs ``-m lbsearch.run_script <command> [flags]``
    with the trial's values as the experiment says (``params.json`` is written in any case)."""

    from lbsearch.launch import _has_gpu

    # several CPU ranks start through torchrun, which tells Accelerate nothing of the CPU: the entry does
    cpu = {"LBSEARCH_CPU": "1"} if exp.launcher.cpu or not _has_gpu() else {}

    def program(spec_file: Path) -> tuple[list[str], dict[str, str]]:
        values = trial_values(exp, plan)
        params_file = workdir / "params.json"
        params_file.write_text(json.dumps(values, indent=1))
        env = script_env(exp, values, spec_file, params_file) | cpu
        return ["-m", "lbsearch.run_script", *script_argv(exp, values, params_file)], env

    return program
