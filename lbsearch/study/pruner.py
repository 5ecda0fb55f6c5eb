"""Pruners in samples seen, grouped by a parameter where the spec asks."""


from __future__ import annotations

from typing import Any

import optuna

from lbsearch.spec import PrunerConfig, TrainConfig


def make_pruner(cfg: PrunerConfig, train: TrainConfig, unit: int = 1) -> optuna.pruners.BasePruner:
    """Pruners work on steps; lbsearch's steps are samples seen (x ``unit`` tokens per sample for a
    language model: tokens seen), so trials of any B (and L) line up. The orchestrator (``open_study``)
    and the trial process (``attach_trial``) both build it here."""
    inner = BUILDERS[cfg.name](cfg, train, unit)
    return GroupedPruner(inner, cfg.group_by) if cfg.group_by else inner


BUILDERS: dict[str, Any] = {  # one per name in spec.registry.PRUNERS (tests/study/test_pruner.py)
    "none": lambda cfg, train, unit: optuna.pruners.NopPruner(),
    "hyperband": lambda cfg, train, unit: optuna.pruners.HyperbandPruner(min_resource=train.eval_every_samples * unit, max_resource=train.budget_samples * unit,
                                                                        reduction_factor=cfg.reduction_factor),
    "asha": lambda cfg, train, unit: optuna.pruners.SuccessiveHalvingPruner(min_resource=train.eval_every_samples * unit, reduction_factor=cfg.reduction_factor),
    "median": lambda cfg, train, unit: optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_samples * unit),
}
"""The pruner of each name: ``(cfg, train, tokens per sample) -> pruner``; ``group_by`` wraps it."""


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


