"""The study part of ``benchmarks/gpu.py``: a study end to end through the CLI (``lbsearch run``) and the
same search through HF ``Trainer.hyperparameter_search`` (``benchmarks/_gpu_hf.py``), each a process of
its own timed from outside (Python start, imports, data preparation and every trial in both).

Ask -> first step, per trial: the MLflow timestamp of the trial's ``progress/step`` row of step 1 (the
worker stamps a step's rows with the step's time) minus the Optuna trial's ``datetime_start`` (set
when the orchestrator asks). Both clocks are this machine's wall clock. Where step 1 has no row (a
worker that logs every n steps), the first logged step's time is used and the figure is an upper
bound (``exact: false``). ``first_step_s`` (the worker's own clock, from its start: process launch and
imports excluded) is kept beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _bench import ROOT

from lbsearch.spec import PROGRESS_STEP, TRAIN_LOSS, OptimizerConfig
from lbsearch.study import RUN_ID

HF_SCRIPT = Path(__file__).resolve().parent / "_gpu_hf.py"
LR = {"low": 3e-5, "high": 3e-4}


def _env() -> dict[str, str]:
    """The child processes import this checkout's lbsearch, installed or not."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), PYTHONUNBUFFERED="1")


def lbsearch_study(spec: Path, overrides: dict[str, Any], n_trials: int, work: Path) -> dict[str, Any]:
    """``lbsearch run`` of an ``n_trials`` study over the learning rate (TPE seeded, no pruning, no model kept)."""
    name = "gpu-study"
    study = work / "gpu_study.yaml"
    study.write_text(json.dumps({"name": name, "experiment": str(spec), "experiment_overrides": overrides, "n_trials": n_trials,
                                 "search_space": {"optimizer.lr": {"type": "float", **LR, "log": True}},
                                 "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "none"}, "save_model": "none"}))
    mlruns = work / "mlruns"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "lbsearch.cli", "run", str(study), "--mlruns", str(mlruns)],
                         capture_output=True, text=True, cwd=work, env=_env())
    wall = time.perf_counter() - t0
    out = {"command": f"lbsearch run {study.name} --mlruns mlruns", "exit_code": run.returncode, "wall_s": wall,
           "tail": (run.stdout[-1200:] + run.stderr[-1200:]) if run.returncode else run.stdout[-600:]}
    try:
        out["trials"] = trial_starts(name, mlruns)
    except Exception as err:  # noqa: BLE001 - the wall time stands; say why the per-trial times are missing
        out["trials"], out["trials_error"] = [], f"{type(err).__name__}: {err}"
    print(f"lbsearch study: exit {run.returncode}, {len(out['trials'])} trials in {wall:.1f} s", flush=True)
    return out


def trial_starts(name: str, mlruns: Path) -> list[dict[str, Any]]:
    """Per trial: ask (Optuna) -> first optimizer step (MLflow row of step 1), state, worker times."""
    import optuna
    from mlflow.tracking import MlflowClient

    from lbsearch.study import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(f"journal://{(mlruns / 'optuna.journal').resolve()}"))
    client = MlflowClient(f"sqlite:///{(mlruns / 'mlflow.db').resolve()}")
    rows = []
    for t in study.trials:
        run_id, ask = t.user_attrs.get(RUN_ID), t.datetime_start.timestamp() if t.datetime_start else None
        first, exact = _first_step_row(client, run_id) if run_id else (None, False)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "lr": t.params.get("optimizer.lr"),
                     "ask_to_first_step_s": first / 1000 - ask if first and ask else None, "exact": exact,
                     "first_step_s": t.user_attrs.get("first_step_s"), "wall_s": t.user_attrs.get("wall_s"),
                     "ask_to_tell_s": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
                     "mfu": t.user_attrs.get("mfu"), "value": t.value})
    return rows


def _first_step_row(client, run_id: str) -> tuple[int | None, bool]:
    """The time (ms) of the trial's first logged optimizer step, and whether that step is step 1."""
    steps = sorted(client.get_metric_history(run_id, PROGRESS_STEP), key=lambda m: m.value)
    if steps:
        return steps[0].timestamp, steps[0].value == 1
    losses = sorted(client.get_metric_history(run_id, TRAIN_LOSS), key=lambda m: m.step)
    return (losses[0].timestamp, False) if losses else (None, False)


def hf_search(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """``benchmarks/_gpu_hf.py`` in a process of its own: HF Trainer.hyperparameter_search, Optuna backend."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(HF_SCRIPT), json.dumps(settings | {"lr": LR, "weight_decay": OptimizerConfig().weight_decay, "output_dir": str(work / "hf")})],
                         capture_output=True, text=True, cwd=work, env=_env())
    wall = time.perf_counter() - t0
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    out = {"command": f"python {HF_SCRIPT.name} '<settings>'", "exit_code": run.returncode, "wall_s": wall,
           "report": json.loads(lines[-1]) if lines else None}
    if run.returncode:
        out["tail"] = run.stdout[-1200:] + run.stderr[-2000:]
    print(f"HF hyperparameter_search: exit {run.returncode} in {wall:.1f} s", flush=True)
    return out
