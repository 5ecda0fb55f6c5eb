"""MLflow layout: an experiment per study, a parent run per study, a nested run per trial.

lbsearch maps study -> run itself (optuna-integration's MLflowCallback is deprecated and logs only
final values). Everything goes through ``MlflowClient`` with explicit run ids, so nothing depends
on MLflow's process-global "active run".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lbsearch.spec import PROGRESS_STEP
from lbsearch.tracking.tags import ROLE, STUDY

if TYPE_CHECKING:
    from lbsearch.spec import Session, StudyConfig

__all__ = ["MODEL_ID_TAG", "Tracker", "tracker_for", "experiment_links", "versions", "git_commit", "flatten"]

TrackingError = MlflowException
"""What MLflow raises when the tracking store fails a call; callers outside this package catch this name."""

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow's mark of a model-training experiment (``genai_development`` marks a GenAI one)."""
MODEL_ID_TAG = "lbsearch.model_id"
"""On a registered model version: its logged model (MLflow's SQL registry does not keep a version's ``model_id``)."""
SYSTEM_METRICS_INTERVAL = 10.0
"""Seconds between system-metric samples: a point every 10 s costs nothing next to a trial (see benchmarks/tracking.py)."""
PACKAGES = ("lbsearch", "torch", "transformers", "optuna", "mlflow", "accelerate", "datasets", "pydantic", "pytorch-optimizer", "numpy")


def versions() -> dict[str, str]:
    """An allow-list of package versions and settings; never the environment."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        out["torch.threads"] = str(torch.get_num_threads())
        out["cuda"] = str(torch.version.cuda)
        out["cuda.available"] = str(torch.cuda.is_available())
    except ImportError:
        pass
    return out


def git_commit(cwd: Path | None = None) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


# Transient under concurrent writers: SQLite's locked database, and two workers inserting the same
# row at once (e.g. one dataset logged by two trials): the retry finds the row the other one wrote.
_TRANSIENT = ("locked", "unique constraint", "duplicate key")


def _retry(fn, *args, tries: int = 8, **kwargs):
    for i in range(tries):
        try:
            return fn(*args, **kwargs)
        except MlflowException as err:
            if not any(t in str(err).lower() for t in _TRANSIENT) or i == tries - 1:
                raise
            time.sleep(0.2 * (i + 1))


def _new_sqlite_from_template(uri: str) -> None:
    """A new SQLite store starts as a copy of an empty one. MLflow builds a store by running its schema
    migrations (about 5 s on a small CPU, for every new project folder); the empty store is the same
    every time for one MLflow version, so MLflow itself makes it once, into the user's cache, and new
    stores copy it. The copy holds no experiment: MLflow adds its Default experiment when it first
    opens the store, as it would have. Any failure leaves MLflow to build the store itself."""
    from sqlalchemy.engine import make_url

    db = make_url(uri).database
    if not db or db == ":memory:" or Path(db).exists():
        return
    tmp = Path(f"{db}.tmp{os.getpid()}")
    try:
        shutil.copyfile(_empty_store(), tmp)
        os.replace(tmp, db)
    except Exception as err:  # noqa: BLE001 - an unwritable cache, a full disk: MLflow's own path still works
        tmp.unlink(missing_ok=True)  # never a half-copied file beside the store
        logging.getLogger(__name__).debug("no template for the new MLflow store (%s): MLflow builds it", err)


def _empty_store() -> Path:
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lbsearch"
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        db = Path(tmp) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("DELETE FROM experiment_tags")
            con.execute("DELETE FROM experiments")  # the Default experiment, with this temporary folder's artifact path
        os.replace(db, path)  # atomic: a concurrent maker's copy is as good
    return path


class Tracker:
    def __init__(self, tracking_uri: str, root: Path) -> None:
        self.uri = tracking_uri
        self.root = root
        if tracking_uri.startswith("sqlite:"):
            # the first use creates the tables (alembic migrations): concurrent workers would race
            import fcntl

            (root / "locks").mkdir(parents=True, exist_ok=True)
            with open(root / "locks" / "mlflow-init.lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                _new_sqlite_from_template(tracking_uri)
                self.client = MlflowClient(tracking_uri=tracking_uri)
                self.client.search_experiments(max_results=1)
        else:
            self.client = MlflowClient(tracking_uri=tracking_uri)
        import psutil

        psutil.cpu_percent()  # psutil's first CPU reading in a process is 0.0: the system metrics' first sample starts from here

    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = (self.root / "artifacts" / name).resolve().as_uri() if self.uri.startswith("sqlite") else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by another worker
            return self.client.get_experiment_by_name(name).experiment_id

    def parent_run(self, experiment_id: str, study: str, params: dict[str, Any], nest_under: str | None = None) -> str:
        """Find the study's parent run, or create it (``nest_under``: as a child of that run). Under a race the oldest one wins."""
        query = f"tags.`{ROLE}` = 'parent' and tags.`{STUDY}` = '{study}'"
        found = self.client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])
        if found:
            run_id = found[0].info.run_id
        else:
            nest = {"mlflow.parentRunId": nest_under} if nest_under else {}
            run = _retry(self.client.create_run, experiment_id, run_name=study, tags={ROLE: "parent", STUDY: study} | nest)
            _retry(self.client.log_batch, run.info.run_id, params=_params(params))
            found = self.client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"])
            run_id = found[0].info.run_id
            if run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        if self.client.get_run(run_id).info.status != "RUNNING":
            _retry(self.client.update_run, run_id, status="RUNNING")
        return run_id

    def find_parent(self, study: str, experiment: str | None = None) -> str | None:
        """The study's parent run, in the MLflow experiment ``experiment`` (default: the one named after the study)."""
        exp = self.client.get_experiment_by_name(experiment or study)
        if exp is None:
            return None
        query = f"tags.`{ROLE}` = 'parent' and tags.`{STUDY}` = '{study}'"
        found = self.client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"])
        return found[0].info.run_id if found else None

    def artifact_dir(self, run_id: str, folder: Path, artifact_path: str) -> None:
        _retry(self.client.log_artifacts, run_id, str(folder), artifact_path)

    def child_run(self, experiment_id: str, parent: str | None, name: str, tags: dict[str, Any], params: dict[str, Any]) -> str:
        all_tags = dict(tags) | ({"mlflow.parentRunId": parent} if parent else {})
        run = _retry(self.client.create_run, experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
        _retry(self.client.log_batch, run.info.run_id, params=_params(params))
        return run.info.run_id

    def artifacts(self, run_id: str, files: dict[str, str]) -> None:
        for name, text in files.items():
            _retry(self.client.log_text, run_id, text, name)

    def tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        _retry(self.client.log_batch, run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items() if v is not None])

    def metric_rows(self, run_id: str, rows: list[list[Any]]) -> None:
        """Rows of [key, value, timestamp_ms, step], as sent by the trial process."""
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, step) for k, v, ts, step in rows]
        for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
            _retry(self.client.log_batch, run_id, metrics=metrics[i : i + 900])

    def copy_metrics(self, src: str, dst: str, max_step: int) -> None:
        """Copy ``src``'s metric histories up to optimizer step ``max_step`` into ``dst`` (a resumed
        trial's run: one curve). Metrics are logged at the data seen (samples, or tokens); ``src``'s
        own ``progress/step`` says which data that step had seen (a run without it counts in steps)."""
        keys = [key for key in self.client.get_run(src).data.metrics if not key.startswith("system/")]
        at = [m.step for m in self.client.get_metric_history(src, PROGRESS_STEP) if m.value <= max_step] if PROGRESS_STEP in keys else [max_step]
        upto = max(at, default=-1)
        rows = [[m.key, m.value, m.timestamp, m.step] for key in keys for m in self.client.get_metric_history(src, key) if m.step <= upto]
        self.metric_rows(dst, rows)

    def end(self, run_id: str, status: str) -> None:
        _retry(self.client.set_terminated, run_id, status=status)

    def experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            _retry(self.client.set_experiment_tag, experiment_id, k, v)

    def datasets(self, run_id: str, inputs: list) -> None:
        """``mlflow.entities.DatasetInput`` items: the run's Datasets column and lineage."""
        _retry(self.client.log_inputs, run_id, datasets=inputs)

    def untag(self, run_id: str, key: str) -> None:
        """Take ``key`` off the run; a tag already gone (another worker of the study took it off) is fine."""
        try:
            _retry(self.client.delete_tag, run_id, key)
        except MlflowException as err:
            if "no tag with name" not in str(err).lower():
                raise

    def run_ids(self, experiment_id: str, query: str) -> list[str]:
        return [r.info.run_id for r in self.client.search_runs([experiment_id], query)]

    def log_model(self, experiment_id: str, run_id: str, name: str, folder: Path, tags: dict[str, str]) -> str:
        """Log ``folder`` (a saved model) as an MLflow logged model of ``run_id``; returns its model id."""
        from mlflow.entities import LoggedModelOutput

        model = _retry(self.client.create_logged_model, experiment_id, name=name, source_run_id=run_id, tags=tags, model_type="text-classification")
        _retry(self.client.log_model_artifacts, model.model_id, str(folder))
        _retry(self.client.finalize_logged_model, model.model_id, "READY")
        _retry(self.client.log_outputs, run_id, [LoggedModelOutput(model.model_id, 0)])
        return model.model_id

    def register_model(self, name: str, model_id: str, run_id: str, tags: dict[str, str], alias: str) -> str:
        """A new version of the registered model ``name`` from a logged model, with ``alias`` on it."""
        with contextlib.suppress(MlflowException):  # exists already
            self.client.create_registered_model(name, description="lbsearch: the best trial's model of the study of this name")
        # the model's own location as the source: MLflow 3.17 resolves a `models:/<id>` source through the
        # process-global tracking URI, not this client's
        source = self.client.get_logged_model(model_id).artifact_location
        version = _retry(self.client.create_model_version, name, source, run_id=run_id, tags=tags | {MODEL_ID_TAG: model_id}, model_id=model_id,
                         await_creation_for=0)
        _retry(self.client.set_registered_model_alias, name, alias, version.version)
        return str(version.version)

    def drop_alias(self, name: str, alias: str) -> bool:
        """Remove ``alias`` from the registered model ``name``; False where there was none."""
        try:
            self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return False
        _retry(self.client.delete_registered_model_alias, name, alias)
        return True

    def drop_model_versions(self, name: str, keep: str) -> None:
        """Delete every version of ``name`` but ``keep``, with its logged model and that model's files."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        for v in self.client.search_model_versions(f"name = '{name}'"):
            if str(v.version) == keep:
                continue
            model_id = v.model_id or v.tags.get(MODEL_ID_TAG)
            if model_id:
                with contextlib.suppress(MlflowException, OSError):
                    get_artifact_repository(self.client.get_logged_model(model_id).artifact_location).delete_artifacts()
                    self.client.delete_logged_model(model_id)
            _retry(self.client.delete_model_version, name, str(v.version))

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval: float = SYSTEM_METRICS_INTERVAL) -> Iterator[None]:
        """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU with ``nvidia-ml-py``)
        on ``run_id`` while the block runs, every ``interval`` seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
        overrides it), plus one last sample for the tail so that a short run has one too. Off when
        ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is false."""
        if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower() in ("false", "0", "no"):
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines per trial
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()  # stops the thread at once (it waits on an event), flushes what it logged
            monitor.collect_metrics()
            with contextlib.suppress(MlflowException):
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()


def _params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k[:250], json.dumps(v) if not isinstance(v, str) else v[:6000]) for k, v in params.items()]


def tracker_for(session: "Session", study: "StudyConfig | None" = None) -> Tracker:
    """The tracker of a session's MLflow store (``Session.tracking_uri_for``)."""
    return Tracker(session.tracking_uri_for(study), session.root)


def experiment_links(uri: str, base: str) -> list[str]:
    """One line per experiment (lbsearch's: one per study): its runs, in MLflow's model-training view."""
    try:
        exps = MlflowClient(tracking_uri=uri).search_experiments(max_results=100, order_by=["last_update_time DESC"])
    except Exception as err:  # noqa: BLE001 - no store yet, a server that is down: the UI itself will say more
        return [f"  (no experiments listed: {str(err).splitlines()[0][:120]})"]
    return [f"  {e.name:<24} {base}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning" for e in exps if e.name != "Default"]
