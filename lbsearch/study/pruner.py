"""Pruners in samples seen, grouped by a parameter where the spec asks, never stopping a trial in its lr warmup."""


from __future__ import annotations

import warnings
from typing import Any

import optuna

from lbsearch.spec import PrunerConfig, TrainConfig, TrialPlan

WARMUP_END = "warmup_end_samples"
"""The trial's user attribute: the nominal samples at which its lr warmup is over (``TrialPlan.warmup_end_samples``)."""


def make_pruner(cfg: PrunerConfig, train: TrainConfig, unit: int = 1) -> optuna.pruners.BasePruner:
    """Pruners work on steps; lbsearch's steps are samples seen (x ``unit`` tokens per sample for a
    language model: tokens seen), so trials of any B (and L) line up. The orchestrator (``open_study``)
    and the trial process (``attach_trial``) both build it here."""
    inner = BUILDERS[cfg.name](cfg, train, unit)
    inner = GroupedPruner(inner, cfg.group_by) if cfg.group_by else inner
    return WarmupGuard(inner, unit) if cfg.protect_warmup else inner


def note_warmup(trial: optuna.Trial, plan: TrialPlan) -> None:
    """Tell the pruner where the trial's warmup ends (the trial process, once it has its plan; the replay benchmark likewise)."""
    trial.set_user_attr(WARMUP_END, plan.warmup_end_samples)


def _first_rung(cfg: PrunerConfig, train: TrainConfig) -> int:
    """ASHA's and Hyperband's smallest resource in samples: the first evaluation, or the warm-up where it is later."""
    return min(max(train.eval_every_samples, cfg.n_warmup_samples), train.budget_samples)


def _patient(cfg: PrunerConfig, train: TrainConfig, unit: int) -> optuna.pruners.BasePruner:
    return PatientPruner(BUILDERS[cfg.wraps](cfg, train, unit), cfg.patience, cfg.min_delta)


BUILDERS: dict[str, Any] = {  # one per name in spec.registry.PRUNERS (tests/spec/test_registry.py)
    "none": lambda cfg, train, unit: optuna.pruners.NopPruner(),
    "hyperband": lambda cfg, train, unit: optuna.pruners.HyperbandPruner(min_resource=_first_rung(cfg, train) * unit, max_resource=train.budget_samples * unit,
                                                                        reduction_factor=cfg.reduction_factor),
    # the trial process only reports: the orchestrator pauses each trial at its rung and promotes (lbsearch.study.rungs)
    "asha_promote": lambda cfg, train, unit: optuna.pruners.NopPruner(),
    "asha": lambda cfg, train, unit: optuna.pruners.SuccessiveHalvingPruner(min_resource=_first_rung(cfg, train) * unit, reduction_factor=cfg.reduction_factor),
    "median": lambda cfg, train, unit: optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_samples * unit),
    "percentile": lambda cfg, train, unit: optuna.pruners.PercentilePruner(cfg.percentile, n_startup_trials=cfg.n_startup_trials,
                                                                          n_warmup_steps=cfg.n_warmup_samples * unit),
    "patient": _patient,
}
"""The pruner of each name: ``(cfg, train, tokens per sample) -> pruner``; ``group_by`` wraps it. The warm-up
(``n_warmup_samples``) is each one's own: the median's and percentile's ``n_warmup_steps``, ASHA's and Hyperband's first rung."""


class PatientPruner(optuna.pruners.BasePruner):
    """Optuna's ``PatientPruner`` with one change: the wrapped pruner sees every report, so that ASHA records each rung at
    its own samples seen; its verdict stands only once the trial has gone ``patience`` evaluations without improving."""

    def __init__(self, inner: optuna.pruners.BasePruner, patience: int, min_delta: float) -> None:
        with warnings.catch_warnings():  # "experimental since v2.8.0"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.inner, self.stalled = inner, optuna.pruners.PatientPruner(None, patience, min_delta)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        verdict = self.inner.prune(study, trial)
        return bool(verdict and self.stalled.prune(study, trial))


class WarmupGuard(optuna.pruners.BasePruner):
    """No trial is pruned while its lr is still warming up: before its ``WARMUP_END`` (x ``unit`` tokens per sample) it trails
    trials without warmup at equal samples seen, and is not comparable with them. The wrapped pruner still sees every report
    (ASHA records its rungs); only its verdict waits. A trial that never noted its warmup end is not protected."""

    def __init__(self, inner: optuna.pruners.BasePruner, unit: int = 1) -> None:
        self.inner, self.unit = inner, unit

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        verdict = self.inner.prune(study, trial)
        step = trial.last_step
        return bool(verdict) and (step is None or step >= trial.user_attrs.get(WARMUP_END, 0) * self.unit)


class GroupedPruner(optuna.pruners.BasePruner):
    """Runs a pruner as if the study held only the trials whose ``key`` param equals this trial's."""

    def __init__(self, inner: optuna.pruners.BasePruner, key: str) -> None:
        self.inner, self.key = inner, key

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.inner.prune(_SameParam(study, self.key, trial.params.get(self.key)), trial)


class _SameParam:
    """A read-only view of a study that lists only the trials with ``params[key] == value``."""

    def __init__(self, study: optuna.Study, key: str, value: Any) -> None:
        self._study, self._key, self._value = study, key, value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get(self._key) == self._value]

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.get_trials()


