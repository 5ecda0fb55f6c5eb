"""Compressed variants of a study's kept model in MLflow: each variant (int8, pruned at a sparsity, pruned
and fine-tuned) is a run of the study's experiment (role ``compress``, under the study's parent run) with
its measured values as metrics, and a version of the registered model ``compressed_name(study)``
(``<study>-compressed``) with the same values as version tags and an alias of its variant's name
(``models:/<study>-compressed@int8``). The original's measured row is a run of its own, not a new
version: its model is ``models:/<study>@best``. Torch-free; MLflow through ``Tracker``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException

from lbsearch.spec import SpecError, models_dir
from lbsearch.tracking.tags import MACHINE, MODEL, MODEL_VERSION, ROLE, STUDY, TRIAL

if TYPE_CHECKING:
    from lbsearch.tracking.tracker import Tracker

__all__ = ["compressed_name", "variant_dir", "record_variant", "variant_rows", "find_variant", "VARIANT", "COMPRESS_ROLE", "RECIPE", "LOAD_AVERAGE"]

VARIANT, COMPRESS_ROLE = "lbsearch.variant", "compress"
RECIPE, LOAD_AVERAGE = "lbsearch.recipe", "lbsearch.load_average"
"""A variant's run: how it was made (the recipe as JSON; null for the original) and the machine's load averages while it was measured."""
_TRIAL, _FOLDER = TRIAL, MODEL


def compressed_name(study: str) -> str:
    """The registered model of a study's compressed variants: ``<study>-compressed``, beside the study's own (``registered_name``)."""
    return f"{study}-compressed"


def variant_dir(root: Path, study: str, number: int, variant: str) -> Path:
    """Where a variant of trial ``number``'s kept model lies: ``<mlruns>/models/<study>-compressed/trial-<N>-<variant>``."""
    return models_dir(root, compressed_name(study)) / f"trial-{number}-{variant}"


def record_variant(tracker: "Tracker", *, study: str, experiment_id: str, parent: str | None, number: int, variant: str,
                   values: dict[str, float], tags: dict[str, Any], folder: Path | None) -> str | None:
    """One measured variant of trial ``number``'s model: a finished run with ``values`` as metrics and
    ``tags``; with a ``folder``, logged as a model and registered (alias ``variant``). Returns the version."""
    run_tags = {STUDY: study, ROLE: COMPRESS_ROLE, _TRIAL: number, VARIANT: variant} | tags
    run_id = tracker.child_run(experiment_id, parent, f"compress-trial-{number}-{variant}", run_tags, {})
    version = None
    try:
        tracker.metrics(run_id, values)
        if folder is not None:
            name = compressed_name(study)
            with contextlib.suppress(MlflowException):  # exists already
                tracker.client.create_registered_model(name, description=f"lbsearch: quantized and pruned variants of study {study}'s best model")
            model_id = tracker.log_model(experiment_id, run_id, f"trial-{number}-{variant}", folder, {STUDY: study, VARIANT: variant})
            version_tags = {_TRIAL: str(number), VARIANT: variant, _FOLDER: str(folder)} | {k: f"{v:.6g}" for k, v in values.items()}
            version = tracker.register_model(name, model_id, run_id, version_tags, alias=variant)
            tracker.tags(run_id, {MODEL_VERSION: version, _FOLDER: str(folder)})
    except BaseException:
        tracker.end(run_id, "FAILED")
        raise
    tracker.end(run_id, "FINISHED")
    return version


def variant_rows(tracker: "Tracker", study: str, number: int) -> list[dict[str, Any]]:
    """The newest measured row of each variant of trial ``number``'s model: ``variant``, ``version``
    (None for the original), the run's metrics and its ``lbsearch.machine``, oldest variant first."""
    exp = tracker.client.get_experiment_by_name(study)
    if exp is None:
        return []
    query = f"tags.`{ROLE}` = '{COMPRESS_ROLE}' and tags.`{STUDY}` = '{study}' and tags.`{_TRIAL}` = '{number}'"
    runs = tracker.client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[str, Any] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            newest.setdefault(run.data.tags[VARIANT], run)
    rows = [{"variant": v, "version": r.data.tags.get(MODEL_VERSION), "machine": r.data.tags.get(MACHINE),
             "start": r.info.start_time} | r.data.metrics for v, r in newest.items()]
    return sorted(rows, key=lambda r: r.pop("start"))


def find_variant(tracker: "Tracker", study: str, ref: str) -> tuple[Path, dict[str, str]]:
    """The folder and version tags (and ``run_id``: its measured run) of a registered variant of ``study``, by version number or alias (``int8``)."""
    name = compressed_name(study)
    try:
        v = tracker.client.get_model_version(name, ref) if ref.isdigit() else tracker.client.get_model_version_by_alias(name, ref)
    except MlflowException:
        known = sorted(f"{m.version} ({m.tags.get(VARIANT, '?')})" for m in tracker.client.search_model_versions(f"name = '{name}'"))
        raise SpecError(None, "--model", f"no version or alias {ref!r} of registered model {name!r} (versions: {', '.join(known) or 'none'}; "
                        f"see `lbsearch compress {study}`)") from None
    folder = Path(v.tags.get(_FOLDER, ""))
    if not (folder / "config.json").is_file():
        raise SpecError(None, "--model", f"version {v.version} of {name!r} has no model folder on disk ({folder})")
    return folder, dict(v.tags) | {"run_id": v.run_id}
