"""Storage and recovery on a real journal file: which storage a session uses, the study lock, and
trials whose worker died (failed, their MLflow run closed by the caller, re-run once)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SPECS
from optuna.trial import TrialState

from lbsearch.spec import ATTEMPT_ATTR, HOST_ATTR, PID_ATTR, RETRY_OF_ATTR, WORKER_DIED
from lbsearch.spec.config import SpecError
from lbsearch.spec.load import load_study
from lbsearch.spec.session import Session
from lbsearch.study.storage import host, load_existing_study, open_study, recover, study_lock
from lbsearch.study.views import counted, reason


@pytest.fixture
def study_cfg():
    cfg, _ = load_study(SPECS / "tiny_study.yaml")
    return cfg


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_storage_url_precedence(tmp_path, study_cfg):
    assert Session(tmp_path).storage_for(study_cfg) == f"journal://{tmp_path.resolve() / 'optuna.journal'}"
    study_cfg.storage = "sqlite:///spec.db"
    assert Session(tmp_path).storage_for(study_cfg) == "sqlite:///spec.db"
    assert Session(tmp_path, storage="postgresql://x/y").storage_for(study_cfg) == "postgresql://x/y"


def test_a_dead_workers_trial_is_failed_closed_and_re_run_once(tmp_path, study_cfg):
    session = Session(tmp_path)
    study = open_study(session, study_cfg)
    alive = study.ask()
    alive.set_user_attr(HOST_ATTR, host())
    alive.set_user_attr(PID_ATTR, os.getpid())
    dead = study.ask()
    dead.set_user_attr(HOST_ATTR, host())
    dead.set_user_attr(PID_ATTR, _dead_pid())
    elsewhere = study.ask()
    elsewhere.set_user_attr(HOST_ATTR, "another-machine")
    elsewhere.set_user_attr(PID_ATTR, _dead_pid())  # not this host's to judge (its heartbeat would tell, on RDB storage)
    closed = []
    recover(study, 1, lambda t: closed.append(t.number))  # max_retries 1
    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
    assert reason(trials[1]) == WORKER_DIED and closed == [dead.number]
    assert not counted(trials[1], max_retries=1)  # its re-run takes its place
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == dead.params and retry.user_attrs == {RETRY_OF_ATTR: dead.number, ATTEMPT_ATTR: 1}
    recover(study, 1, closed.append)  # idempotent: one re-run only
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1 and closed == [dead.number]


def test_failed_retry_counts_once_retries_are_used_up(tmp_path, study_cfg):
    study = open_study(Session(tmp_path), study_cfg)
    trial = study.ask()
    trial.set_user_attr("reason", WORKER_DIED)
    trial.set_user_attr(ATTEMPT_ATTR, 1)
    study.tell(trial, state=TrialState.FAIL)
    t = study.trials[0]
    assert counted(t, max_retries=1) and not counted(t, max_retries=2)


def test_study_lock_is_exclusive_across_processes(tmp_path, study_cfg):
    session = Session(tmp_path)
    probe = ("import fcntl, sys; fh = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')\n")
    lock_file = tmp_path / "locks" / f"{study_cfg.name}.lock"

    def other() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(lock_file)], capture_output=True, text=True, timeout=60).stdout.strip()

    with study_lock(session, study_cfg):
        assert other() == "held"
    assert other() == "free"


def test_unknown_study_is_a_one_line_error(tmp_path, study_cfg):
    with pytest.raises(SpecError, match="no studies under"):
        load_existing_study(Session(tmp_path), "tiny-study")
    open_study(Session(tmp_path), study_cfg)
    with pytest.raises(SpecError, match="unknown study 'nope'; known: tiny-study"):
        load_existing_study(Session(tmp_path), "nope")
    assert Path(tmp_path / "optuna.journal").is_file()


def test_a_result_for_a_trial_another_worker_finished_is_not_told_and_nothing_crashes():
    """A worker whose heartbeat was lost: another machine failed its trial (and re-runs it). Its own
    result then changes nothing, and its loop goes on instead of crashing on Optuna's error."""
    import optuna
    from optuna.trial import TrialState

    from lbsearch.study import tell_once

    study = optuna.create_study()
    trial = study.ask()
    assert tell_once(study, trial, {"samples": 10}, [0.5])
    assert study.trials[0].value == 0.5 and study.trials[0].user_attrs == {"samples": 10}
    lost = study.ask()
    study.tell(lost.number, state=TrialState.FAIL)  # what the other machine's recovery does
    assert not tell_once(study, lost, {"samples": 20}, [0.9])
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].user_attrs == {}


def test_a_worker_whose_trial_was_failed_elsewhere_hears_it_at_its_next_beat_and_stops_its_copy(tmp_path):
    """Its heartbeat was lost: another machine failed the trial (and re-runs it). At its next beat
    this worker says so and stops its copy (``on_superseded``), once, and beats no more."""
    import threading
    import time

    import optuna
    from optuna.trial import TrialState

    from lbsearch.study import heartbeat, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    said: list[str] = []
    stopped = threading.Event()
    with heartbeat(study, trial, said.append, on_superseded=stopped.set):
        time.sleep(1.5)
        assert not stopped.is_set() and said == []  # beating, still its own
        study.tell(trial.number, state=TrialState.FAIL)  # what the other machine's recovery does
        assert stopped.wait(5)
        time.sleep(1.5)
    assert len(said) == 1 and said[0].startswith(f"[trial {trial.number}] was failed by another worker")


def test_a_trial_told_at_its_end_is_not_taken_for_one_failed_elsewhere(tmp_path):
    import threading
    import time

    import optuna

    from lbsearch.study import heartbeat, open_storage, tell_once

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    stopped = threading.Event()
    with heartbeat(study, trial, print, on_superseded=stopped.set):
        time.sleep(1.2)
        assert tell_once(study, trial, {}, [0.5])
    time.sleep(1.5)
    assert not stopped.is_set()
