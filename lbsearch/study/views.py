"""Read-only views of a study: trial rows, the best trial, a CSV table, a one-line summary.

Trial bookkeeping lives in Optuna user attributes, so every worker sees it: ``config`` (the fully
resolved experiment that ran), ``mlflow_run_id``, ``host`` / ``pid`` of the orchestrator running
it, ``reason`` (why pruned or failed), ``retry_of`` / ``attempt`` for re-runs, and the result
metrics (``test_*``, ``samples``, ``samples_to_target`` ...). Torch-free and MLflow-free.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lbsearch.spec import (
    ATTEMPT_ATTR,
    CONFIG_ATTR,
    INTERRUPTED,
    METRIC_ATTR,
    OBJECTIVES_ATTR,
    PAUSED,
    PAUSED_STATE,
    PROMOTED_STATE,
    RESUME_OF_ATTR,
    RESUMED_FROM,
    RUN_ID,
    RUNG_ATTR,
    SPEC_ATTR,
    TRACKING_LOST,
    WORKER_DIED,
    LauncherConfig,
    sample_unit,
)

__all__ = ["RUN_ID", "ROW_STATES", "RESUMED_FROM", "reason", "counted", "objectives", "trial_rows", "status_columns", "value_columns", "is_multi", "pareto", "pick", "best_trial", "best_value", "to_csv",
           "summary", "spent", "budget_used", "budget_line"]


def reason(t: FrozenTrial) -> str:
    """lbsearch sets a reason before it fails a trial; a failed trial without one was failed by
    Optuna's heartbeat check (RDB storage): its worker died on some machine."""
    return t.user_attrs.get("reason", WORKER_DIED if t.state == TrialState.FAIL else "")


def counted(t: FrozenTrial, max_retries: int) -> bool:
    """Does this finished trial count toward n_trials? Not when a re-run of it takes its place."""
    if t.state == TrialState.PRUNED and reason(t).startswith("constraint"):
        return False  # never trained: a suggestion the spec rules out
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state != TrialState.FAIL:
        return False
    why = reason(t)
    if why in (INTERRUPTED, TRACKING_LOST):  # stopped from outside: re-run, never the trial's own fault
        return False
    return not (why == WORKER_DIED and t.user_attrs.get(ATTEMPT_ATTR, 0) < max_retries)


def _metric(study: optuna.Study) -> str:
    return study.user_attrs.get(METRIC_ATTR, "accuracy")


def objectives(study: optuna.Study) -> list[str]:
    """The study's objective names (``metric`` for a study made before objectives were named)."""
    return study.user_attrs.get(OBJECTIVES_ATTR) or ["metric"]


def value_columns(study: optuna.Study) -> list[str]:
    """``value`` for a single-objective study, one column per objective otherwise."""
    names = objectives(study)
    return ["value"] if len(names) == 1 else names


def _values(study: optuna.Study, t: FrozenTrial) -> dict[str, Any]:
    return {name: (t.values[i] if t.values else None) for i, name in enumerate(value_columns(study))}


FACTS = ("test", "samples", "seconds", "mfu")
"""The columns of a trial row between its values and its params."""


def status_columns(study: optuna.Study) -> list[str]:
    """The columns of ``lbsearch status``, in order: every key of ``trial_rows`` but the MLflow run id."""
    params = sorted({k for t in study.get_trials(deepcopy=False) for k in t.params})
    return ["trial", "state", *value_columns(study), *FACTS, *params, "reason"]


ROW_STATES = ("complete", "pruned", PAUSED_STATE, PROMOTED_STATE, "fail", "running", "waiting")
"""The states a row shows (Optuna's, lower-case, and a paused trial's), in the order ``status`` counts them."""


def _shown_state(t: FrozenTrial, onward: dict[int, int]) -> tuple[str, str]:
    """A trial's state and reason as a row shows them: one paused at its rung (``asha_promote``) is ``paused``, or ``promoted``
    once a trial goes on with it (``onward``: paused trial -> the trial that resumed it)."""
    why = reason(t)
    if t.state != TrialState.PRUNED or why != PAUSED:
        return t.state.name.lower(), why
    where = f"rung {t.user_attrs.get(RUNG_ATTR, 0)} ({t.user_attrs.get('samples')} samples)"
    return (PROMOTED_STATE, f"paused at {where}; goes on as trial {onward[t.number]}") if t.number in onward else (PAUSED_STATE, f"paused at {where}")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows, trials = [], study.get_trials(deepcopy=False)
    onward: dict[int, int] = {}
    for t in trials:
        if RESUME_OF_ATTR in t.user_attrs:
            onward.setdefault(t.user_attrs[RESUME_OF_ATTR], t.number)
    for t in trials:
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        facts = {"test": t.user_attrs.get(f"test_{_metric(study)}"), "samples": t.user_attrs.get("samples"),
                 "seconds": round(dur, 1) if dur is not None else None, "mfu": t.user_attrs.get("mfu")}
        assert tuple(facts) == FACTS
        state, why = _shown_state(t, onward)
        rows.append({"trial": t.number, "state": state, "reason": why, **_values(study, t), **facts, **dict(t.params),
                     RUN_ID: t.user_attrs.get(RUN_ID, "")})
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials that no other complete trial beats on every objective, by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def pick(study: optuna.Study, rule: str | None = None) -> FrozenTrial | None:
    """The best trial on objective ``rule`` (default: the first objective) among the Pareto front;
    ties go to the other objectives in order, then to the earlier trial."""
    names = objectives(study)
    if rule is not None and rule not in names:
        raise ValueError(f"--pick must be one of the study's objectives: {', '.join(names)}; got {rule!r}")
    front = pareto(study) if is_multi(study) else [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not front:
        return None
    first = names.index(rule) if rule else 0
    order = [first] + [i for i in range(len(names)) if i != first]
    signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]
    return max(front, key=lambda t: (*(signs[i] * t.values[i] for i in order), -t.number))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial (multi-objective: ``pick`` by the first objective)."""
    return pick(study)


def best_value(study: optuna.Study, t: FrozenTrial) -> float:
    """The validation metric of a trial (the objective of a single-objective study)."""
    return t.user_attrs.get(f"validation_{_metric(study)}", t.values[0] if t.values else float("nan"))


def summary(study: optuna.Study, n_trials: int) -> str:
    trials = study.get_trials(deepcopy=False)
    c = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = best_trial(study)
    b = f"best {best_value(study, best):.4f} (trial {best.number})" if best else "best -"
    used = budget_used(study)
    budget = f" · {budget_line(*used)}" if used else ""
    gone, stops = {t.user_attrs[RESUME_OF_ATTR] for t in trials if RESUME_OF_ATTR in t.user_attrs}, [t for t in trials if t.state == TrialState.PRUNED and reason(t) == PAUSED]
    waits = f" · paused {sum(t.number not in gone for t in stops)}" if stops else ""  # pruned: for good; a paused trial may yet go on
    return f"[study {study.study_name}] done {c[TrialState.COMPLETE]} · pruned {c[TrialState.PRUNED] - len(stops)}{waits} · failed {c[TrialState.FAIL]} of {n_trials} · {b}{budget}"


# ----------------------------------------------------------------------------------------------
# The study's compute (``budget:``)


def _own(t: FrozenTrial, unit: str, checkpointed: int) -> float:
    """What trial ``t`` itself trained, in ``unit``. A re-run resumed from a checkpoint counts only the samples after it;
    the trial it resumed counts at least up to that checkpoint (an interrupted trial is told with 0 samples)."""
    config = json.loads(t.user_attrs.get(CONFIG_ATTR, "{}"))
    if unit == "device_hours":  # the trial's own clock (not the attempt it resumed), x the processes holding a device
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else 0.0
        return (t.user_attrs.get("wall_s") or dur) * config.get("launcher", {}).get("processes", LauncherConfig.model_fields["processes"].default) / 3600
    per = sample_unit(config.get("task", "single_label"), config.get("data", {}).get("max_length", 0)) if config else 1
    seen = max(t.user_attrs.get("samples") or 0, (t.last_step or 0) // per, checkpointed)
    return max(0, seen - t.user_attrs.get(RESUMED_FROM["samples"], 0)) * (per if unit == "tokens" else 1)


def spent(study: optuna.Study, unit: str) -> float:
    """The compute the study's finished trials trained, in ``samples``, ``tokens`` (samples x tokens per sample) or
    ``device_hours`` (each trial's seconds x its processes), each part counted once."""
    trials = study.get_trials(deepcopy=False)
    checkpointed: dict[int, int] = {}  # trial number -> the samples of the checkpoint a re-run took over from it
    for t in trials:
        if RESUMED_FROM["trial"] in t.user_attrs:
            n = t.user_attrs[RESUMED_FROM["trial"]]
            checkpointed[n] = max(checkpointed.get(n, 0), t.user_attrs.get(RESUMED_FROM["samples"], 0))
    return sum(_own(t, unit, checkpointed.get(t.number, 0)) for t in trials if t.state.is_finished())


def budget_used(study: optuna.Study) -> tuple[float, float, str] | None:
    """``(used, limit, unit)`` of the ``budget`` in the study's stored spec (set by each ``run``); None without one."""
    budget = json.loads(study.user_attrs.get(SPEC_ATTR, "{}")).get("study", {}).get("budget") or {}
    unit, limit = next(((k, v) for k, v in budget.items() if v is not None), (None, None))
    return None if unit is None else (spent(study, unit), float(limit), unit)


def budget_line(used: float, limit: float, unit: str) -> str:
    """E.g. ``budget: 12,480 / 20,000 samples (62%)``."""
    fmt = "{:,.2f}" if unit == "device_hours" else "{:,.0f}"
    return f"budget: {fmt.format(used)} / {fmt.format(limit)} {unit.replace('_', '-')} ({used / limit:.0%})"
