"""Kept models: which trained models stay on disk (``save_model``), where, and the best one in MLflow.

A complete trial saves its model in its working folder (``lbsearch.trial.model.save_model``); here the
orchestrator keeps it under ``<mlruns>/models/<study>/trial-<N>/`` or deletes it, and logs the best
one to the study's MLflow experiment as a model (a *logged model* whose source run is the trial's
run) registered in the Model Registry under the study's name, alias ``best``. Torch-free and, until it logs, MLflow-free.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lbsearch.spec import BEST_ALIAS, models_dir, registered_name, trial_model_dir
from lbsearch.tracking.tags import MODEL, MODEL_VERSION, ROLE, STUDY, TRIAL

if TYPE_CHECKING:
    from lbsearch.tracking.tracker import Tracker

__all__ = ["keep_trial_model", "keep_train_model", "drop_best", "registered_name", "BEST_ALIAS"]

def drop_best(tracker: "Tracker", study: str) -> bool:
    """Take the ``best`` alias off the study's registered model (its best trial's model is gone); True if there was one."""
    return tracker.drop_alias(registered_name(study), BEST_ALIAS)


def _move(saved: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(saved), str(folder))


def keep_trial_model(tracker: "Tracker", root: Path, *, study: str, experiment_id: str, number: int, run_id: str, saved: Path,
                     policy: str, best: int | None) -> Path | None:
    """After trial ``number`` completed and saved its model in ``saved``: keep it when ``policy``
    (``save_model``) says so, delete the models it no longer keeps, and log and register it when it
    is the study's ``best`` trial (``best``: ``lbsearch.study.best_trial``, i.e. ``views.pick``: on a tie the earlier
    trial). Call under the study lock. Returns where the model is kept."""
    folder = trial_model_dir(root, study, number)
    kept = policy == "all" or best == number
    if kept:
        _move(saved, folder)  # an OSError here (a full disk) leaves every kept model as it was
    else:
        shutil.rmtree(saved, ignore_errors=True)
    if best == number and kept:
        model_id = tracker.log_model(experiment_id, run_id, f"trial-{number}", folder, {STUDY: study, TRIAL: str(number)})
        version = tracker.register_model(registered_name(study), model_id, run_id, {TRIAL: str(number)}, alias=BEST_ALIAS)
        if policy == "best":  # the earlier bests' copies in MLflow go too: one model on disk
            tracker.drop_model_versions(registered_name(study), keep=version)
        tracker.tags(run_id, {MODEL: str(folder), MODEL_VERSION: version})
    if policy == "best" and best is not None:  # only once the registry points at the best: never a moment with no model
        for other in models_dir(root, study).glob("trial-*"):
            if other.name != f"trial-{best}":
                shutil.rmtree(other, ignore_errors=True)
    return folder if kept else None


def keep_train_model(tracker: "Tracker", root: Path, *, name: str, experiment_id: str, run_id: str, saved: Path) -> tuple[Path, str | None]:
    """``lbsearch train``'s model: kept under ``models/train-<name>/<run id>`` and logged to its run.
    Returns the folder and, where MLflow refused the model, why (the model stays on disk)."""
    from mlflow.exceptions import MlflowException

    folder = models_dir(root, f"train-{name}") / run_id
    _move(saved, folder)
    why = None
    try:
        tracker.log_model(experiment_id, run_id, name, folder, {ROLE: "train"})
    except (OSError, MlflowException) as err:
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    tracker.tags(run_id, {MODEL: str(folder)})
    return folder, why
