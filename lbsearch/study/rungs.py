"""Successive halving with promotion (``pruner: asha_promote``), the study's side: the rungs, which trials are paused,
and which paused trial is promoted next. Torch-free and MLflow-free.

A trial runs to its rung and is *paused* there with its checkpoint: told to Optuna as pruned with the reason ``paused``
and the user attribute ``rung`` (the index of the rung it stopped at). Promoting it enqueues a new Optuna trial with the
same params and the user attribute ``resume_of`` (the paused trial's number), which resumes from that checkpoint and runs
to the next rung (or, from the last rung, to the budget). A paused trial with such a continuation is *promoted*.

A configuration is a lineage of trials: a first trial, the re-runs of an interrupted one (``retry_of``) and the
continuations of a paused one (``resume_of``). Its value at a rung is its intermediate value at the first evaluation
at or past the rung's samples (a large B evaluates past the nominal point; it pauses there too).
"""

from __future__ import annotations

import math
from typing import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from lbsearch.spec import PAUSED, RESUME_OF_ATTR, RETRY_OF_ATTR, RUNG_ATTR, PrunerConfig, TrainConfig
from lbsearch.study.views import counted, reason

__all__ = ["rungs", "is_paused", "promoted", "continuation", "configurations", "rung_to_run", "promotable", "last_resort"]


def rungs(cfg: PrunerConfig, train: TrainConfig) -> list[int]:
    """The rungs in samples seen: the first evaluation (or ``n_warmup_samples``, where later) x ``reduction_factor``^k, those below the budget."""
    first, out = min(max(train.eval_every_samples, cfg.n_warmup_samples), train.budget_samples), []
    while first * cfg.reduction_factor ** len(out) < train.budget_samples:
        out.append(first * cfg.reduction_factor ** len(out))
    return out


def continuation(t: FrozenTrial) -> bool:
    """A trial that goes on with a configuration paused earlier (or re-runs such a trial): it is not a new configuration."""
    return RESUME_OF_ATTR in t.user_attrs


def configurations(trials: Iterable[FrozenTrial], max_retries: int) -> int:
    """The configurations a study has finished, which ``n_trials`` counts: its counted trials (``views.counted``) less the
    continuations of paused ones. A configuration paused at a rung counts: promoted or not, it was tried."""
    return sum(counted(t, max_retries) and not continuation(t) for t in trials)


def promoted(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of the paused trials that a continuation (waiting, running or finished) goes on with."""
    return {t.user_attrs[RESUME_OF_ATTR] for t in trials if RESUME_OF_ATTR in t.user_attrs}


def is_paused(t: FrozenTrial) -> bool:
    """Stopped at its rung by ``asha_promote`` (whether promoted since or not)."""
    return t.state == TrialState.PRUNED and reason(t) == PAUSED


def rung_to_run(trials: list[FrozenTrial], trial: FrozenTrial | optuna.Trial) -> int:
    """The index of the rung that ``trial`` runs to: a re-run's is that of the trial it re-runs, a continuation's the next one
    after its paused trial's, a new configuration's 0."""
    by_number = {t.number: t for t in trials}
    attrs = trial.user_attrs
    if RETRY_OF_ATTR in attrs and attrs[RETRY_OF_ATTR] in by_number:
        return by_number[attrs[RETRY_OF_ATTR]].user_attrs.get(RUNG_ATTR, 0)
    if RESUME_OF_ATTR in attrs and attrs[RESUME_OF_ATTR] in by_number:
        return by_number[attrs[RESUME_OF_ATTR]].user_attrs.get(RUNG_ATTR, 0) + 1
    return 0


def _root(t: FrozenTrial, by_number: dict[int, FrozenTrial]) -> int:
    while (parent := t.user_attrs.get(RETRY_OF_ATTR, t.user_attrs.get(RESUME_OF_ATTR))) in by_number:
        t = by_number[parent]
    return t.number


def _values_at(trials: list[FrozenTrial], step: int) -> dict[int, float]:
    """Each configuration's (by its first trial's number) value at the first evaluation at or past ``step``, where it got there."""
    by_number, out = {t.number: t for t in trials}, {}
    for t in trials:
        past = [s for s in t.intermediate_values if s >= step]
        if past:
            out.setdefault(_root(t, by_number), t.intermediate_values[min(past)])
    return out


def _order(values: dict[int, float], direction: optuna.study.StudyDirection) -> list[int]:
    """Configurations from best to worst (NaN last, ties to the earlier one)."""
    sign = -1 if direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(values, key=lambda n: (math.isnan(values[n]), sign * values[n] if not math.isnan(values[n]) else 0.0, n))


def _waiting(trials: list[FrozenTrial], rung_samples: list[int]) -> list[FrozenTrial]:
    """The paused trials not promoted yet (a paused trial always has a rung below the budget)."""
    gone = promoted(trials)
    return [t for t in trials if is_paused(t) and t.number not in gone and t.user_attrs.get(RUNG_ATTR, 0) < len(rung_samples)]


def promotable(study: optuna.Study, rung_samples: list[int], eta: int, unit: int = 1) -> tuple[FrozenTrial, str] | None:
    """The paused trial to promote now, and why: one in the top 1/``eta`` (floor) of the configurations that reached its rung,
    from the highest rung down, the best first (Li et al. 2020's ASHA; Syne Tune's ``type="promotion"``). None: start a new one.
    ``unit``: tokens per sample (a language model reports its values at tokens seen)."""
    trials = study.get_trials(deepcopy=False)
    by_number, best = {t.number: t for t in trials}, None
    for t in _waiting(trials, rung_samples):
        k = t.user_attrs.get(RUNG_ATTR, 0)
        order = _order(_values_at(trials, rung_samples[k] * unit), study.direction)
        rank = order.index(_root(t, by_number)) if _root(t, by_number) in order else len(order)
        if rank < len(order) // eta and (best is None or (-k, rank) < (-best[0], best[1])):
            best = (k, rank, t, len(order))
    if best is None:
        return None
    k, rank, t, n = best
    return t, f"#{rank + 1} of {n} at rung {k} ({rung_samples[k]} samples), in the top {n // eta}"


def last_resort(study: optuna.Study, rung_samples: list[int], unit: int = 1) -> tuple[FrozenTrial, str] | None:
    """Once no new configuration may start and none is promotable, nothing runs and no trial is complete: the paused trial
    of the highest rung with the best value there, so that the study ends with a complete trial."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return None
    by_number, paused = {t.number: t for t in trials}, _waiting(trials, rung_samples)
    if not paused:
        return None
    k = max(t.user_attrs.get(RUNG_ATTR, 0) for t in paused)
    order = _order(_values_at(trials, rung_samples[k] * unit), study.direction)
    at_k = [t for t in paused if t.user_attrs.get(RUNG_ATTR, 0) == k]
    t = min(at_k, key=lambda t: order.index(_root(t, by_number)) if _root(t, by_number) in order else len(order))
    return t, f"best paused at the highest rung {k} ({rung_samples[k]} samples), as no trial is complete"
