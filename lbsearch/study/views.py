"""Read-only views of a study: trial rows, the best trial, a CSV table, a one-line summary.

Trial bookkeeping lives in Optuna user attributes, so every worker sees it: ``config`` (the fully
resolved experiment that ran), ``mlflow_run_id``, ``host`` / ``pid`` of the orchestrator running
it, ``reason`` (why pruned or failed), ``retry_of`` / ``attempt`` for re-runs, and the result
metrics (``test_*``, ``samples``, ``samples_to_target`` ...). Torch-free and MLflow-free.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lbsearch.spec import INTERRUPTED, TRACKING_LOST, WORKER_DIED

__all__ = ["reason", "counted", "objectives", "trial_rows", "status_columns", "value_columns", "is_multi", "pareto", "pick", "best_trial", "best_value", "to_csv", "summary"]



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
    return not (why == WORKER_DIED and t.user_attrs.get("attempt", 0) < max_retries)


def _metric(study: optuna.Study) -> str:
    return study.user_attrs.get("metric", "accuracy")


def objectives(study: optuna.Study) -> list[str]:
    """The study's objective names (``metric`` for a study made before objectives were named)."""
    return study.user_attrs.get("objectives") or ["metric"]


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


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        facts = {"test": t.user_attrs.get(f"test_{_metric(study)}"), "samples": t.user_attrs.get("samples"),
                 "seconds": round(dur, 1) if dur is not None else None, "mfu": t.user_attrs.get("mfu")}
        assert tuple(facts) == FACTS
        rows.append({"trial": t.number, "state": t.state.name.lower(), "reason": reason(t), **_values(study, t), **facts, **dict(t.params),
                     "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")})
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
    return f"[study {study.study_name}] done {c[TrialState.COMPLETE]} · pruned {c[TrialState.PRUNED]} · failed {c[TrialState.FAIL]} of {n_trials} · {b}"
