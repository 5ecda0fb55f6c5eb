"""Where a study lives and how its workers share it: storage URLs, opening studies, locks,
heartbeats, and recovering trials whose worker died.

Embedded storage (a journal file under mlruns/, or SQLite) serves the workers of one machine, which
share a file lock; PostgreSQL serves many machines, which share an advisory lock and Optuna's
heartbeats. Optuna keeps a study's storage and a trial's id private; the three helpers that reach
them (``storage_of``, ``trial_id``, ``attach_trial``) are the only such places in lbsearch.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import weakref
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from lbsearch.spec import (
    ATTEMPT_ATTR,
    HOST_ATTR,
    OBJECTIVES_ATTR,
    PID_ATTR,
    RESUME_OF_ATTR,
    RETRY_OF_ATTR,
    RETRYABLE,
    SPEC_ATTR,
    WORKER_DIED,
    Session,
    SpecError,
    StudyConfig,
    TrainConfig,
    sample_unit,
)
from lbsearch.study.access import storage_of, trial_id
from lbsearch.study.pruner import make_pruner
from lbsearch.study.sampler import make_sampler
from lbsearch.study.views import counted, reason

if TYPE_CHECKING:
    from lbsearch.spec import OptunaRef

__all__ = ["Session", "open_storage", "open_study", "load_existing_study", "stored_study", "attach_trial", "trial_id", "study_lock", "heartbeat", "uses_heartbeats", "recover", "host"]


def host() -> str:
    return os.environ.get("LBSEARCH_HOST") or socket.gethostname()


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """Journal file (``journal:///abs/path``), SQLite or any SQLAlchemy URL (RDB with heartbeat; its
    interval defaults to the study field's default, ``StudyConfig.heartbeat_interval``)."""
    heartbeat_interval = heartbeat_interval or StudyConfig.model_fields["heartbeat_interval"].default
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url.removeprefix("journal://")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    from optuna.storages import RDBStorage

    # Stale trials (no heartbeat for grace_period) are failed by optuna.storages.fail_stale_trials;
    # lbsearch re-enqueues them itself, with the same bookkeeping as for the embedded storage.
    def make() -> RDBStorage:
        return RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period or 3 * heartbeat_interval,
                          engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)

    if not url.startswith("postgresql"):
        return make()
    with _advisory_lock(url, 727274):  # workers starting together on a fresh database race to create Optuna's tables
        return make()


def _unit(exp) -> int:
    """Tokens per sample of a language-model experiment (its pruning points are tokens), else 1."""
    data = getattr(exp, "data", None)
    return sample_unit(getattr(exp, "task", "single_label"), data.max_length) if data is not None else 1


def open_study(session: Session, cfg: StudyConfig, *, create: bool = True) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(session.storage_for(cfg), heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    kwargs = dict(study_name=cfg.name, storage=storage, sampler=make_sampler(cfg.sampler, cfg.space, constraints=cfg.constraints),
                  pruner=make_pruner(cfg.pruner, cfg.experiment.train, _unit(cfg.experiment)))
    if not create:
        return optuna.load_study(**kwargs)
    objectives = cfg.objective_list
    study = optuna.create_study(directions=[o.direction for o in objectives], load_if_exists=True, **kwargs)
    names = [o.name for o in objectives]
    if study.user_attrs.get(OBJECTIVES_ATTR, names) != names:
        raise SpecError(None, "objectives", f"study {cfg.name!r} exists with objectives {study.user_attrs[OBJECTIVES_ATTR]}, not {names}")
    study.set_user_attr(OBJECTIVES_ATTR, names)
    return study


def load_existing_study(session: Session, name: str) -> optuna.Study:
    """A study by name, for status / best / reproduce / report; its spec is stored in the study itself."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = session.storage_for(None)
    if url.startswith("journal://") and not Path(url.removeprefix("journal://")).is_file():
        raise SpecError(None, "study", f"no studies under {session.root} (run `lbsearch run STUDY.yaml` first)")
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        raise SpecError(None, "study", f"unknown study {name!r}; known: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def stored_study(study: optuna.Study) -> StudyConfig | None:
    """The study's own config as stored at creation (for its tracking URI), or None."""
    try:
        stored = json.loads(study.user_attrs[SPEC_ATTR])
        return StudyConfig.model_validate(stored["study"] | {"experiment": stored["experiment"]})
    except (KeyError, ValueError):
        return None


def attach_trial(ref: "OptunaRef", train: dict[str, Any], unit: int = 1) -> optuna.Trial:
    """The trial process's handle on its Optuna trial, with the study's pruner (for should_prune)."""
    from lbsearch.spec import PrunerConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = make_pruner(PrunerConfig(**ref.pruner), TrainConfig.model_validate(train), unit)
    study = optuna.load_study(study_name=ref.study_name, storage=open_storage(ref.storage), pruner=pruner)
    return optuna.trial.Trial(study, ref.trial_id)


# ----------------------------------------------------------------------------------------------
# Locks and heartbeats

_ENGINES: dict[str, Any] = {}


@contextlib.contextmanager
def _advisory_lock(url: str, key: int):
    import sqlalchemy

    engine = _ENGINES.get(url) or _ENGINES.setdefault(url, sqlalchemy.create_engine(url, pool_pre_ping=True))
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


@contextlib.contextmanager
def _file_lock(root: Path, name: str):
    """An exclusive lock shared by the workers of one study on this host (fcntl on a file under root)."""
    import fcntl

    (root / "locks").mkdir(parents=True, exist_ok=True)
    with open(root / "locks" / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def study_lock(session: Session, cfg: StudyConfig):
    """Held while a worker counts trials and asks for the next: a PostgreSQL advisory lock for a
    shared database (workers on many machines), a file lock otherwise (one machine)."""
    url = session.storage_for(cfg)
    if url.startswith("postgresql"):
        return _advisory_lock(url, zlib.crc32(f"lbsearch:{cfg.name}".encode()))
    return _file_lock(session.root, cfg.name)


def uses_heartbeats(study: optuna.Study) -> bool:
    """RDB storage with a heartbeat interval (Optuna wraps it in a cache, hence no isinstance)."""
    storage = storage_of(study)
    return hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None


def heartbeat_interval(study: optuna.Study) -> float:
    return storage_of(study).get_heartbeat_interval()


_TOLD: "weakref.WeakSet[optuna.Trial]" = weakref.WeakSet()
"""The trials whose result this process told or is telling: ended here, not superseded."""


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, say: Callable[[str], None] = print, on_superseded: Callable[[], None] = lambda: None):
    """Record the trial's heartbeat while it runs (RDB storage), so other machines can tell it is alive.
    A missed beat is retried at the next interval and said once per outage: after the study's grace
    period without one, another machine fails the trial as ``worker died`` and re-runs it. A beat that
    finds the trial so finished says so and calls ``on_superseded`` (this worker stops its copy), once."""
    if not uses_heartbeats(study):
        yield
        return
    storage, tid, stop = storage_of(study), trial_id(trial), threading.Event()

    def beat() -> None:
        missed = 0
        while not stop.wait(storage.get_heartbeat_interval()):
            try:
                if trial not in _TOLD and storage.get_trial(tid).state.is_finished():  # failed elsewhere while this one ran
                    say(f"[trial {trial.number}] was failed by another worker (this one's heartbeat was lost) and is re-run there: "
                        "this worker stops its copy")
                    on_superseded()
                    return
                storage.record_heartbeat(tid)
            except Exception as err:  # noqa: BLE001 - retried at the next interval, said once
                missed += 1
                if missed == 1:
                    say(f"[trial {trial.number}] heartbeat not recorded ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                        "retrying: past the grace period another worker re-runs this trial")
                continue
            if missed:
                say(f"[trial {trial.number}] heartbeat recorded again after {missed} missed")
                missed = 0

    storage.record_heartbeat(tid)
    thread = threading.Thread(target=beat, daemon=True, name="lbsearch-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def tell_once(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any], values: list[float] | None = None,
              state: TrialState | None = None) -> bool:
    """Set the trial's user attributes and tell its result; False (nothing changed) where another
    worker already finished it (it lost its heartbeat and was failed and re-run elsewhere)."""
    _TOLD.add(trial)  # from here on its end is this worker's own (``heartbeat``)
    try:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, values, state=state)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        if storage_of(study).get_trial(trial_id(trial)).state.is_finished():
            return False
        raise


# ----------------------------------------------------------------------------------------------
# Recovery


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study: optuna.Study, max_retries: int, on_dead: Callable[[FrozenTrial], None]) -> None:
    """Fail the running trials whose worker died (this host: by pid; other machines: by Optuna's
    heartbeat check on RDB storage), call ``on_dead`` for each, and enqueue one re-run of each
    retryable failed trial with the same params."""
    if uses_heartbeats(study):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in before:
                on_dead(t)
    me = host()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(HOST_ATTR) != me or _alive(int(t.user_attrs.get(PID_ATTR, 0))):
            continue
        storage_of(study).set_trial_user_attr(trial_id(t), "reason", WORKER_DIED)
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue  # finished meanwhile by another worker
        on_dead(t)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials if RETRY_OF_ATTR in t.user_attrs}
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried or counted(t, max_retries) or reason(t) not in RETRYABLE:
            continue
        attempt = t.user_attrs.get(ATTEMPT_ATTR, 0) + (reason(t) == WORKER_DIED)
        carried = {k: t.user_attrs[k] for k in (RESUME_OF_ATTR,) if k in t.user_attrs}  # a re-run of a promoted trial goes on with its configuration
        study.enqueue_trial(t.params, user_attrs={RETRY_OF_ATTR: t.number, ATTEMPT_ATTR: attempt} | carried)
