"""The only module that reaches Optuna's private attributes (trial ids, stored trials, system attributes, the
trials a sampler reads, the system attribute of a constraint)."""


from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

if TYPE_CHECKING:
    from collections.abc import Callable


def constraint_attr(name: str) -> str:
    """The trial system attribute in which Optuna's constrained samplers read a constraint's value (<= 0: met)."""
    return f"constraints:{name}"


class SamplerView:
    """A study as a sampler sees it: its trials through ``see(trials, directions, states)``, everything else the
    study's own. Samplers read trials through the private ``Study._get_trials``; this answers it."""

    def __init__(self, study: optuna.Study, see: "Callable[..., list[FrozenTrial]]") -> None:
        self._study, self._see = study, see

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._see(self._study.get_trials(deepcopy=deepcopy), self._study.directions, states)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


def storage_of(study: optuna.Study):
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def stored_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial straight from the storage (no cache, no pruner's view of the study)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def set_trial_system_attrs(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)


