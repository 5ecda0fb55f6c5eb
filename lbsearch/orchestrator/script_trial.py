"""Script trials on the orchestrator's side: the command line and environment of a script, and the result of a script that ignores the API."""


from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbsearch.spec import PARAMS_ENV, PARAMS_JSON, SPEC_ENV, ScriptExperimentConfig, trial_values

if TYPE_CHECKING:
    from lbsearch.spec import TrialPlan, TrialResult


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
    env = {SPEC_ENV: str(spec_file), PARAMS_ENV: str(params_file)}
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
    from lbsearch.spec import TrialResult

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
    """For ``launch.run_trial_process``: each rank runs ``-m lbsearch.integrations.run_script <command> [flags]``
    with the trial's values as the experiment says (``params.json`` is written in any case)."""

    from lbsearch.orchestrator.launch import _has_gpu

    # several CPU ranks start through torchrun, which tells Accelerate nothing of the CPU: the entry does
    cpu = {"LBSEARCH_CPU": "1"} if exp.launcher.cpu or not _has_gpu() else {}

    def program(spec_file: Path) -> tuple[list[str], dict[str, str]]:
        values = trial_values(exp, plan)
        params_file = workdir / PARAMS_JSON
        params_file.write_text(json.dumps(values, indent=1))
        env = script_env(exp, values, spec_file, params_file) | cpu
        return ["-m", "lbsearch.integrations.run_script", *script_argv(exp, values, params_file)], env

    return program


