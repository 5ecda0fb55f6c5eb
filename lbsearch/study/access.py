"""The only module that reaches Optuna's private attributes (trial ids, stored trials, system attributes)."""


from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

if TYPE_CHECKING:
    pass


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


