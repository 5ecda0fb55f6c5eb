"""The orchestrator: ask Optuna, launch the trial process, tell Optuna, mirror it all in MLflow.

Trial bookkeeping, kept in Optuna user attributes so that every worker sees it:
``config`` (the fully resolved experiment), ``mlflow_run_id``, ``host`` / ``pid`` of the
orchestrator running it, ``reason`` (why pruned or failed), ``retry_of`` / ``attempt`` for re-runs,
and the result metrics (``test_*``, ``samples``, ``samples_to_target`` ...).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from lbsearch.batching import plan_batch
from lbsearch.config import BATCH_KEY, ExperimentConfig, SpecError, StudyConfig, apply_params, lr_for_batch, validate_experiment
from lbsearch.data import prepare_data
from lbsearch.launch import resolve_precision, run_trial_process
from lbsearch.search import make_pruner, make_sampler, open_storage, storage_url, suggest
from lbsearch.worker import METRICS_MARK
from lbsearch.tracking import Tracker, default_tracking_uri, flatten, git_commit, versions

__all__ = ["Session", "run_study", "open_study", "trial_rows", "best_trial", "reproduce", "train_once"]

RETRYABLE = ("interrupted", "worker died")
MLFLOW_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


@dataclass
class Session:
    """Where state lives: the mlruns root, the Optuna storage URL and the MLflow tracking URI."""

    root: Path
    storage: str | None = None
    tracking_uri: str | None = None
    out: Callable[[str], None] = field(default=lambda s: print(s, flush=True))

    def storage_for(self, study: StudyConfig | None) -> str:
        if study is not None:
            return storage_url(study, self.root, self.storage)
        return self.storage or f"journal://{(self.root / 'optuna.journal').resolve()}"

    def tracker(self, study: StudyConfig | None = None) -> Tracker:
        uri = self.tracking_uri or (study.tracking_uri if study else None) or default_tracking_uri(self.root)
        return Tracker(uri, self.root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    return os.environ.get("LBSEARCH_HOST") or socket.gethostname()


def _reason(t: FrozenTrial) -> str:
    """lbsearch sets a reason before it fails a trial; a failed trial without one was failed by
    Optuna's heartbeat check (RDB storage): its worker died on some machine."""
    return t.user_attrs.get("reason", "worker died" if t.state == TrialState.FAIL else "")


def _counted(t: FrozenTrial, max_retries: int) -> bool:
    """Does this finished trial count toward n_trials? Not when a re-run of it takes its place."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state == TrialState.FAIL:
        reason = _reason(t)
        if reason == "interrupted":
            return False
        if reason == "worker died" and t.user_attrs.get("attempt", 0) < max_retries:
            return False
        return True
    return False


def _requeue(study: optuna.Study, cfg: StudyConfig, tracker: Tracker | None) -> None:
    """Fail trials whose orchestrator died (this host: by pid; elsewhere: by Optuna's heartbeat on
    RDB storage); close their MLflow runs; re-enqueue retryable trials once."""
    host = _host()
    if _heartbeats(study):
        for number in _fail_stale(study):
            t = study.trials[number]
            if tracker is not None and t.user_attrs.get("mlflow_run_id"):
                tracker.tags(t.user_attrs["mlflow_run_id"], {"lbsearch.state": "failed", "lbsearch.reason": "worker died"})
                tracker.end(t.user_attrs["mlflow_run_id"], "KILLED")
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.RUNNING and t.user_attrs.get("host") == host and not _alive(int(t.user_attrs.get("pid", 0))):
            study._storage.set_trial_user_attr(t._trial_id, "reason", "worker died")
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):
                continue  # finished meanwhile by another worker
            if tracker is not None and t.user_attrs.get("mlflow_run_id"):
                run_id = t.user_attrs["mlflow_run_id"]
                tracker.tags(run_id, {"lbsearch.state": "failed", "lbsearch.reason": "worker died"})
                tracker.end(run_id, "KILLED")
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials if "retry_of" in t.user_attrs}
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried or _counted(t, cfg.max_retries):
            continue
        reason = _reason(t)
        if reason not in RETRYABLE:
            continue
        attempt = t.user_attrs.get("attempt", 0) + (reason == "worker died")
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "attempt": attempt})


def _heartbeats(study: optuna.Study) -> bool:
    """RDB storage with a heartbeat interval (Optuna wraps it in a cache, hence no isinstance)."""
    storage = study._storage
    return hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None


def _fail_stale(study: optuna.Study) -> list[int]:
    """Optuna's heartbeat check: RUNNING trials whose heartbeat is older than the grace period -> FAIL."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in before)


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Record the trial's heartbeat while it runs (RDB storage), so other machines can tell it is alive."""
    storage = study._storage
    if not _heartbeats(study):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                pass

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, daemon=True, name="lbsearch-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


_ENGINES: dict[str, Any] = {}


@contextlib.contextmanager
def _study_lock(session: Session, cfg: StudyConfig):
    """Workers on many machines share a PostgreSQL study: a session advisory lock there; otherwise
    (journal, SQLite: one machine) a file lock."""
    url = session.storage_for(cfg)
    if not url.startswith("postgresql"):
        with _host_lock(session.root, cfg.name):
            yield
        return
    import zlib

    import sqlalchemy

    engine = _ENGINES.get(url) or _ENGINES.setdefault(url, sqlalchemy.create_engine(url, pool_pre_ping=True))
    key = zlib.crc32(f"lbsearch:{cfg.name}".encode())
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextlib.contextmanager
def _host_lock(root: Path, name: str):
    """An exclusive lock shared by the workers of one study on this host (fcntl on a file under root)."""
    import fcntl

    (root / "locks").mkdir(parents=True, exist_ok=True)
    with open(root / "locks" / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_study(session: Session, cfg: StudyConfig, *, create: bool = True) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(session.storage_for(cfg), heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    tr = cfg.experiment.train
    kwargs = dict(
        study_name=cfg.name,
        storage=storage,
        sampler=make_sampler(cfg.sampler, cfg.space),
        pruner=make_pruner(cfg.pruner, eval_every=tr.eval_every_samples, budget=tr.budget_samples),
    )
    if not create:
        return optuna.load_study(**kwargs)
    return optuna.create_study(direction=cfg.experiment.metric.direction, load_if_exists=True, **kwargs)


def load_existing_study(session: Session, name: str) -> optuna.Study:
    """A study by name, for status / best / reproduce; its spec is stored in the study itself."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = session.storage_for(None)
    if url.startswith("journal://") and not Path(url.removeprefix("journal://")).is_file():
        raise SpecError(None, "study", f"no studies under {session.root} (run `lbsearch run STUDY.yaml` first)")
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        raise SpecError(None, "study", f"unknown study {name!r}; known: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def _finish(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any], tracker: Tracker, run_id: str) -> str:
    state = result["state"]
    reason = result.get("reason")
    attrs = {"reason": reason} if reason else {}
    for key in ("samples", "steps", "samples_to_target", "steps_to_target", "samples_per_s", "wall_s", "first_step_s", "b_simple"):
        if result.get(key) is not None:
            attrs[key] = result[key]
    for split in ("validation", "test"):
        for k, v in (result.get(split) or {}).items():
            attrs[f"{split}_{k}"] = v
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if state == "complete":
        study.tell(trial, result["value"])
    elif state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
    label = "interrupted" if reason == "interrupted" else state
    tracker.tags(run_id, {"lbsearch.state": state, **({"lbsearch.reason": reason} if reason else {})})
    tracker.end(run_id, MLFLOW_STATUS[label])
    return state


def _trial_files(session: Session, cfg: dict[str, Any], study_name: str | None, number: int | None, spec_file: Path | None) -> dict[str, str]:
    cmd = f"lbsearch reproduce {study_name} --trial {number}" if study_name else "lbsearch train config.json"
    if session.root.resolve() != (Path.cwd() / "mlruns").resolve():
        cmd += f" --mlruns {shlex.quote(str(session.root))}"
    if session.storage:
        cmd += f" --storage {shlex.quote(session.storage)}"
    return {
        "config.json": json.dumps(cfg, indent=1),
        "reproduce.sh": f"# re-run this trial from its resolved config and compare metrics\n{cmd}\n"
        f"# or train the config alone: lbsearch train config.json\n",
        "versions.json": json.dumps(versions(), indent=1),
    }


def _derived(exp: ExperimentConfig) -> dict[str, Any]:
    limit = exp.launcher.max_micro_batch
    plan = plan_batch(exp.train.batch_size, exp.launcher.processes, limit) if limit else None
    if plan is None:  # probed by the trial: the tags lbsearch.micro_batch / lbsearch.accumulation say what ran
        return {"derived.micro_batch": "probe", "derived.processes": exp.launcher.processes, "derived.precision": exp.launcher.precision,
                "derived.lr": lr_for_batch(exp.optimizer, exp.train.batch_size), "derived.steps": exp.train.budget_samples // exp.train.batch_size}
    return {
        "derived.micro_batch": plan.micro_batch,
        "derived.accumulation": plan.accumulation,
        "derived.processes": plan.processes,
        "derived.precision": exp.launcher.precision,
        "derived.lr": lr_for_batch(exp.optimizer, exp.train.batch_size),
        "derived.steps": exp.train.budget_samples // exp.train.batch_size,
    }


def _resolved(exp: ExperimentConfig) -> ExperimentConfig:
    """Fill in what depends on the machine (``precision: auto``), so the saved config is exact."""
    exp = exp.model_copy(deep=True)
    exp.launcher.precision = resolve_precision(exp.launcher.precision, exp.launcher.cpu)
    return exp


def _worker_spec(exp: ExperimentConfig, data, tracking_uri: str | None, run_id: str | None, optuna_ref: dict | None) -> dict[str, Any]:
    return {
        "experiment": exp.model_dump(mode="json"),
        "data_path": str(data.path),
        "num_labels": data.num_labels,
        "pad_id": data.pad_id,
        "vocab_size": data.vocab_size,
        "optuna": optuna_ref,
        "mlflow": {"tracking_uri": tracking_uri, "run_id": run_id} if run_id else None,
    }


def _line_printer(session: Session, prefix: str, tracker: Tracker | None = None, run_id: str | None = None) -> Callable[[str], None]:
    """Show the trial's output; forward its metric lines to its MLflow run."""

    def on_line(line: str) -> None:
        if line.startswith(METRICS_MARK):
            if tracker is not None and run_id:
                tracker.metric_rows(run_id, json.loads(line[len(METRICS_MARK) :]))
            return
        if not line.strip() or line.startswith(("Loading weights", "The following values were not passed", "To avoid this warning")):
            return
        session.out(f"{prefix} {line}")

    return on_line


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "reason": _reason(t),
                "value": t.value,
                "test": t.user_attrs.get(f"test_{study.user_attrs.get('metric', 'accuracy')}"),
                "samples": t.user_attrs.get("samples"),
                "seconds": round(dur, 1) if dur is not None else None,
                **{k: v for k, v in t.params.items()},
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id", ""),
            }
        )
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(done, key=lambda t: (sign * t.value, -t.number))


def _update_parent(study: optuna.Study, tracker: Tracker, parent: str, step: int) -> None:
    rows = trial_rows(study)
    tracker.artifacts(parent, {"trials.csv": _csv(rows)})
    best = best_trial(study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    tracker.metrics(parent, {f"trials/{k}": v for k, v in counts.items()}, step)
    if best is not None:
        tracker.metrics(parent, {"best/value": best.value, "best/test": best.user_attrs.get(f"test_{study.user_attrs.get('metric')}")}, step)
        tracker.tags(parent, {"best.trial": best.number, "best.value": best.value, "best.mlflow_run_id": best.user_attrs.get("mlflow_run_id", "")}
                     | {f"best.{k}": v for k, v in best.params.items()})


def _summary(study: optuna.Study, n_trials: int) -> str:
    trials = study.get_trials(deepcopy=False)
    c = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = best_trial(study)
    b = f"best {best.value:.4f} (trial {best.number})" if best else "best -"
    return f"[study {study.study_name}] done {c[TrialState.COMPLETE]} · pruned {c[TrialState.PRUNED]} · failed {c[TrialState.FAIL]} of {n_trials} · {b}"


def run_study(session: Session, cfg: StudyConfig, exp_raw: dict[str, Any], *, spec_file: Path | None = None, max_trials: int | None = None) -> int:
    """Create or resume the study and run trials until ``n_trials`` count (0: done, 130: interrupted)."""
    exp0 = cfg.experiment
    data = prepare_data(exp0, session.root / "cache")  # bad data is a spec error, before anything is created
    study = open_study(session, cfg)
    study.set_user_attr("metric", exp0.metric.name)
    study.set_user_attr("spec", json.dumps({"study": cfg.model_dump(mode="json", exclude={"experiment"}), "experiment": exp_raw}))
    tracker = session.tracker(cfg)
    exp_id = tracker.experiment(cfg.name)
    parent = tracker.parent_run(exp_id, cfg.name, {
        "n_trials": cfg.n_trials, "sampler": cfg.sampler.name, "sampler.seed": cfg.sampler.seed, "pruner": cfg.pruner.name,
        "metric": exp0.metric.name, "search_space": json.dumps({k: v.model_dump() for k, v in cfg.search_space.items()}),
    })
    tracker.tags(parent, {"optuna.version": optuna.__version__, "data.digest": data.digest, "git.commit": git_commit(spec_file.parent if spec_file else None)})
    host, pid = _host(), os.getpid()
    ran = 0
    session.out(_summary(study, cfg.n_trials))
    try:
        while max_trials is None or ran < max_trials:
            trial = None
            with _study_lock(session, cfg):  # count-then-ask is atomic among all the study's workers
                _requeue(study, cfg, tracker)
                trials = study.get_trials(deepcopy=False)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                waiting = sum(t.state == TrialState.WAITING for t in trials)
                counted = sum(_counted(t, cfg.max_retries) for t in trials)
                if counted + running < cfg.n_trials or waiting:
                    if cfg.batch_ladder and not waiting:  # the next rung; retries keep theirs
                        rung = cfg.batch_ladder[(counted + running) % len(cfg.batch_ladder)]
                        study.enqueue_trial({BATCH_KEY: rung}, skip_if_exists=False)
                    trial = study.ask()
                    trial.set_user_attr("host", host)
                    trial.set_user_attr("pid", pid)
                elif counted >= cfg.n_trials or not _heartbeats(study):
                    break
            if trial is None:  # other machines' trials may yet die: stay until their heartbeats settle it
                time.sleep(study._storage.get_heartbeat_interval())
                continue
            ran += 1
            with _heartbeat(study, trial):
                _run_one(session, cfg, exp_raw, study, trial, tracker, exp_id, parent, data, spec_file)
            _update_parent(study, tracker, parent, trial.number)
            session.out(_summary(study, cfg.n_trials))
    except KeyboardInterrupt:
        session.out(f"[study {cfg.name}] interrupted; run the same command again to resume")
        _update_parent(study, tracker, parent, len(study.trials))
        tracker.end(parent, "KILLED")
        return 130
    trials = study.get_trials(deepcopy=False)
    if sum(_counted(t, cfg.max_retries) for t in trials) >= cfg.n_trials and not any(t.state == TrialState.RUNNING for t in trials):
        tracker.end(parent, "FINISHED")
    best = best_trial(study)
    if best is not None:
        session.out(f"[study {cfg.name}] best trial {best.number}: {exp0.metric.name} {best.value:.4f} (test {best.user_attrs.get('test_' + exp0.metric.name, float('nan')):.4f}) params {best.params}")
    return 0


def _run_one(session, cfg, exp_raw, study, trial, tracker, exp_id, parent, data, spec_file) -> None:
    prefix = f"[trial {trial.number}]"
    try:
        params = suggest(trial, cfg.space)
        exp = _resolved(validate_experiment(apply_params(exp_raw, params), None))
    except SpecError as err:  # a combination the spec allows but the experiment refuses
        trial.set_user_attr("reason", f"invalid params: {err}")
        study.tell(trial, state=TrialState.FAIL)
        session.out(f"{prefix} failed: invalid params: {err}")
        return
    resolved = exp.model_dump(mode="json")
    trial.set_user_attr("config", json.dumps(resolved))
    tags = {"lbsearch.study": cfg.name, "lbsearch.role": "trial", "lbsearch.trial": trial.number, "optuna.trial_id": trial._trial_id,
            "data.digest": data.digest, "git.commit": git_commit(spec_file.parent if spec_file else None)}
    if "retry_of" in trial.user_attrs:
        tags["lbsearch.retry_of"] = trial.user_attrs["retry_of"]
    run_id = tracker.child_run(exp_id, parent, f"trial-{trial.number}", tags, flatten(resolved) | _derived(exp) | {f"search.{k}": v for k, v in trial.params.items()})
    trial.set_user_attr("mlflow_run_id", run_id)
    tracker.artifacts(run_id, _trial_files(session, resolved, cfg.name, trial.number, spec_file))
    session.out(f"{prefix} start {', '.join(f'{k}={_fmt(v)}' for k, v in params.items())}")
    workdir = session.root / "trials" / cfg.name / f"{trial.number:04d}-{uuid.uuid4().hex[:6]}"
    spec = _worker_spec(exp, data, tracker.uri, run_id, {
        "storage": session.storage_for(cfg), "study_name": cfg.name, "trial_id": trial._trial_id, "pruner": cfg.pruner.model_dump(),
    })
    t0 = time.time()
    try:
        result = _run_with_oom_retries(session, spec, exp, workdir, prefix, tracker, run_id)
    except KeyboardInterrupt:
        _finish(study, trial, {"state": "failed", "reason": "interrupted"}, tracker, run_id)
        _log_stdout(tracker, run_id, workdir)
        raise
    if exp.model_dump(mode="json") != resolved:  # the config that ran (after OOM retries), for reproduce
        trial.set_user_attr("config", json.dumps(exp.model_dump(mode="json")))
    state = _finish(study, trial, result, tracker, run_id)
    _log_stdout(tracker, run_id, workdir)
    detail = f" ({result['reason']})" if result.get("reason") and result["reason"] != "pruned" else ""
    value = f" {cfg.experiment.metric.name} {result['value']:.4f}" if result.get("value") is not None else ""
    session.out(f"{prefix} {state}{detail}{value} in {time.time() - t0:.1f}s")


def _run_with_oom_retries(session, spec, exp: ExperimentConfig, workdir: Path, prefix: str, tracker: Tracker, run_id: str) -> dict[str, Any]:
    """Run the trial; on out-of-memory halve the micro-batch limit (B unchanged: more accumulation) and retry.

    ``exp`` is updated in place to the limit that finally ran, so the saved config reproduces it."""
    while True:
        result = run_trial_process(spec, workdir, on_line=_line_printer(session, prefix, tracker, run_id))
        ran = result.get("plan")
        if ran and exp.launcher.max_micro_batch is None:  # probed: record the limit that ran
            exp.launcher.max_micro_batch = ran["max_micro_batch"]
            tracker.tags(run_id, {"lbsearch.micro_batch": ran["micro_batch"], "lbsearch.accumulation": ran["accumulation"]})
        if not result.get("oom") or exp.launcher.max_micro_batch is None:
            return result
        plan = plan_batch(exp.train.batch_size, exp.launcher.processes, exp.launcher.max_micro_batch)
        if plan.micro_batch == 1:
            return result
        smaller = plan_batch(exp.train.batch_size, exp.launcher.processes, max(1, plan.micro_batch // 2))
        session.out(f"{prefix} out of memory at micro-batch {plan.micro_batch}: retrying with micro-batch "
                    f"{smaller.micro_batch} x accumulation {smaller.accumulation} (B = {exp.train.batch_size} unchanged)")
        exp.launcher.max_micro_batch = smaller.micro_batch
        spec["experiment"] = exp.model_dump(mode="json")
        retries = int(tracker.client.get_run(run_id).data.tags.get("lbsearch.oom_retries", 0)) + 1
        tracker.tags(run_id, {"lbsearch.oom_retries": retries, "lbsearch.micro_batch": smaller.micro_batch,
                              "lbsearch.accumulation": smaller.accumulation})


def _log_stdout(tracker: Tracker, run_id: str, workdir: Path) -> None:
    log = workdir / "stdout.log"
    if log.is_file():
        tracker.artifacts(run_id, {"stdout.log": log.read_text()[-200_000:]})


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _compare(a: float | None, b: float | None, tol: float) -> bool:
    return a is not None and b is not None and math.isfinite(a) and abs(a - b) <= tol


def reproduce(session: Session, name: str, *, number: int | None = None, tolerance: float | None = None) -> int:
    """Re-run a trial from its saved resolved config as a new MLflow run; 0 when metrics agree."""
    study = load_existing_study(session, name)
    if number is None:
        target = best_trial(study)
        if target is None:
            raise SpecError(None, "study", f"study {name!r} has no complete trial to reproduce")
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not matches or "config" not in matches[0].user_attrs:
            raise SpecError(None, "--trial", f"study {name!r} has no trial {number} with a saved config")
        target = matches[0]
    cfg = json.loads(target.user_attrs["config"])
    exp = ExperimentConfig.model_validate(cfg)
    data = prepare_data(exp, session.root / "cache")
    tracker = session.tracker()
    exp_id = tracker.experiment(name)
    orig_run = target.user_attrs.get("mlflow_run_id", "")
    parent = None
    if orig_run:
        parent = tracker.client.get_run(orig_run).data.tags.get("mlflow.parentRunId")
    run_id = tracker.child_run(exp_id, parent, f"reproduce-trial-{target.number}",
                               {"lbsearch.study": name, "lbsearch.role": "reproduce", "lbsearch.reproduces": orig_run,
                                "lbsearch.reproduces_trial": target.number, "data.digest": data.digest, "git.commit": git_commit()},
                               flatten(cfg) | _derived(exp))
    tracker.artifacts(run_id, {"config.json": json.dumps(cfg, indent=1), "versions.json": json.dumps(versions(), indent=1)})
    prefix = f"[reproduce {target.number}]"
    session.out(f"{prefix} re-running trial {target.number} of {name} from its saved config (MLflow run {run_id})")
    workdir = session.root / "trials" / name / f"reproduce-{target.number:04d}-{uuid.uuid4().hex[:6]}"
    try:
        result = run_trial_process(_worker_spec(exp, data, tracker.uri, run_id, None), workdir, on_line=_line_printer(session, prefix, tracker, run_id))
    except KeyboardInterrupt:
        tracker.end(run_id, "KILLED")
        raise
    ok_state = result["state"] == "complete"
    tracker.tags(run_id, {"lbsearch.state": result["state"], **({"lbsearch.reason": result["reason"]} if result.get("reason") else {})})
    _log_stdout(tracker, run_id, workdir)
    if tolerance is None:
        tolerance = 0.0 if exp.launcher.cpu or not _cuda() else 0.01
    metric = exp.metric.name
    rows = [("validation", metric, target.user_attrs.get(f"validation_{metric}", target.value), (result.get("validation") or {}).get(metric)),
            ("test", metric, target.user_attrs.get(f"test_{metric}"), (result.get("test") or {}).get(metric)),
            ("validation", "loss", target.user_attrs.get("validation_loss"), (result.get("validation") or {}).get("loss"))]
    same = ok_state and all(_compare(new, old, tolerance) for _, _, old, new in rows if old is not None)
    for split, m, old, new in rows:
        session.out(f"{prefix} {split} {m}: original {old!r} reproduced {new!r}")
    tracker.tags(run_id, {"lbsearch.reproduced": "yes" if same else "no", "lbsearch.tolerance": tolerance})
    tracker.end(run_id, "FINISHED" if ok_state else "FAILED")
    session.out(f"{prefix} {'reproduced: metrics identical' if same and tolerance == 0 else 'reproduced within tolerance ' + str(tolerance) if same else 'MISMATCH'}")
    return 0 if same else 1


def report(session: Session, name: str, out: Path | None = None) -> int:
    """Write the batch-scaling report of a study and log it to the study's parent MLflow run."""
    from lbsearch.report import write_report

    study = load_existing_study(session, name)
    out = out or session.root / "reports" / name
    summary = write_report(study, out)
    tracker = session.tracker(_stored_study(study))
    parent = tracker.find_parent(name)
    if parent is not None:
        tracker.artifact_dir(parent, out, "report")
        sf, lf = summary["steps_fit"], summary["lr_fit"]
        tracker.metrics(parent, {"report/b_crit": sf.get("b_crit"), "report/s_min": sf.get("s_min"), "report/lr_alpha": lf.get("alpha"),
                                 "report/lr_alpha_ci_low": lf.get("ci_low"), "report/lr_alpha_ci_high": lf.get("ci_high")})
    sf, lf, rng = summary["steps_fit"], summary["lr_fit"], summary["b_simple_range"]
    session.out(f"[report {name}] {summary['trials']} trials over batch sizes {[r['batch_size'] for r in summary['per_batch_size']]}")
    session.out(f"[report {name}] B_crit {sf['b_crit']:.0f}, S_min {sf['s_min']:.0f} steps" if "b_crit" in sf else f"[report {name}] B_crit: {sf['error']}")
    session.out(f"[report {name}] lr exponent {lf['alpha']:.2f} ({int(100 * lf['confidence'])}% CI {lf['ci_low']:.2f} .. {lf['ci_high']:.2f})" if "alpha" in lf
                else f"[report {name}] lr exponent: {lf['error']}")
    session.out(f"[report {name}] B_simple {rng[0]:.0f} .. {rng[1]:.0f}" if rng else f"[report {name}] B_simple: not measured")
    session.out(f"[report {name}] {out / 'index.html'}" + (f" (also in MLflow run {parent}, artifacts report/)" if parent else ""))
    return 0


def _stored_study(study: optuna.Study) -> StudyConfig | None:
    """The study's own config as stored at creation (for its tracking URI), or None."""
    try:
        stored = json.loads(study.user_attrs["spec"])
        return StudyConfig.model_validate(stored["study"] | {"experiment": stored["experiment"]})
    except (KeyError, ValueError):
        return None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_once(session: Session, exp: ExperimentConfig, *, spec_file: Path | None = None) -> int:
    """One training run of an experiment, no search: an MLflow run in the experiment's own MLflow experiment."""
    exp = _resolved(exp)
    data = prepare_data(exp, session.root / "cache")
    tracker = session.tracker()
    exp_id = tracker.experiment(f"train-{exp.name}")
    resolved = exp.model_dump(mode="json")
    run_id = tracker.child_run(exp_id, None, exp.name, {"lbsearch.role": "train", "data.digest": data.digest,
                                                        "git.commit": git_commit(spec_file.parent if spec_file else None)},
                               flatten(resolved) | _derived(exp))
    tracker.artifacts(run_id, _trial_files(session, resolved, None, None, spec_file))
    workdir = session.root / "trials" / f"train-{exp.name}" / uuid.uuid4().hex[:8]
    try:
        result = run_trial_process(_worker_spec(exp, data, tracker.uri, run_id, None), workdir, on_line=_line_printer(session, "[train]", tracker, run_id))
    except KeyboardInterrupt:
        tracker.tags(run_id, {"lbsearch.state": "failed", "lbsearch.reason": "interrupted"})
        tracker.end(run_id, "KILLED")
        raise
    tracker.tags(run_id, {"lbsearch.state": result["state"], **({"lbsearch.reason": result["reason"]} if result.get("reason") else {})})
    _log_stdout(tracker, run_id, workdir)
    tracker.end(run_id, MLFLOW_STATUS.get(result["state"], "FAILED"))
    if result["state"] != "complete":
        session.out(f"[train] {result['state']}: {result.get('reason')}")
        return 1
    m = exp.metric.name
    session.out(f"[train] validation {m} {result['validation'][m]:.4f} · test {m} {result['test'][m]:.4f} · MLflow run {run_id}")
    return 0
