"""The replay of ``pruner: asha_promote`` over a table (``search_efficiency.py``): successive halving that pauses a trial at
its rung and resumes it when promoted, by lbsearch's own rules (``lbsearch.study.rungs``: ``rungs``, ``promotable``,
``last_resort``, ``rung_to_run``), as the study loop applies them. A promoted trial is a new Optuna trial with ``resume_of``
that reports its configuration's earlier values again (as a resumed trial does) and pays only for the samples after its
pause; ``n_trials`` counts configurations. Stops at the first complete trial within tolerance, as every replay does."""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from lbsearch.spec import DIVERGED_REASON, PAUSED, RESUME_OF_ATTR, RUNG_ATTR
from lbsearch.spec.config import ExperimentConfig, PrunerConfig
from lbsearch.study.rungs import last_resort, promotable, rung_to_run, rungs


def _run_to_rung(trial: optuna.Trial, row: dict[str, Any], pause_at: int | None, start: int) -> tuple[int, float | None]:
    """Report the row's curve from the start (the part before ``start`` samples was paid for by the paused trial) up to the
    rung; returns (samples seen, the final value where it completes, else None: paused or diverged, told here)."""
    complete = row["state"] == "complete"
    for i, e in enumerate(row["evals"]):
        trial.report(e["value"], step=e["nominal_samples"])
        last = complete and i == len(row["evals"]) - 1
        if e["samples"] > start and pause_at is not None and e["nominal_samples"] >= pause_at and not last:
            trial.set_user_attr("reason", PAUSED)
            trial.set_user_attr("samples", e["samples"])
            return e["samples"], None
    if not complete:
        trial.set_user_attr("reason", row["reason"] or DIVERGED_REASON)
    return row["samples"], row["value"] if complete else None


def replay_promote(pruner: PrunerConfig, base: ExperimentConfig, n_trials: int, target: float, seed: int,
                   ask: Callable[[optuna.Study, int], tuple[optuna.Trial, dict[str, Any]]]) -> dict[str, Any]:
    """One search: before each new configuration, a paused trial that is promotable goes on (``ask(study, number)``: the
    trial asked with its sampler seeded by (seed, number) and its params suggested, fixed where enqueued, and its row)."""
    study = optuna.create_study(direction=base.metric.direction, pruner=optuna.pruners.NopPruner())
    points, sign = rungs(pruner, base.train), 1 if base.metric.direction == "maximize" else -1
    spent: list[int] = []
    tried, first = 0, None
    while first is None:
        found = promotable(study, points, pruner.reduction_factor) or (last_resort(study, points) if tried >= n_trials else None)
        if found is None and tried >= n_trials:
            break
        if found is not None:
            study.enqueue_trial(found[0].params, user_attrs={RESUME_OF_ATTR: found[0].number})
        trial, row = ask(study, len(study.trials))
        tried += found is None
        k = rung_to_run(study.trials, trial)
        trial.set_user_attr(RUNG_ATTR, k)
        start = found[0].user_attrs["samples"] if found is not None else 0
        seen, value = _run_to_rung(trial, row, points[k] if k < len(points) else None, start)
        spent.append(seen - start)
        if value is None:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        study.tell(trial, value)
        if sign * (value - target) >= 0:
            first = trial.number
    trials = [{"params": t.params, "state": t.state.name.lower(), "samples": n, "resume_of": t.user_attrs.get(RESUME_OF_ATTR)}
              for t, n in zip(study.trials, spent)]
    return {"seed": seed, "samples_to_best": None if first is None else sum(spent), "trials_to_best": None if first is None else first + 1,
            "samples_total": sum(spent), "pruned": sum(t["state"] != "complete" for t in trials), "trials": trials}
