"""The tracked trial: whatever happens inside, its MLflow run ends (no run left RUNNING), with the
reason, and the error goes on up."""

import pytest

from lbsearch.orchestrator.runner import TrialRun, _line_handler, ended_on_error, run_tracked
from lbsearch.spec import FOLDER, INTERRUPTED, TRAIN_LOSS, ExperimentConfig, Session, checkpoint_name, message
from lbsearch.tracking import REASON, STATE, Outbox, tracker_for


@pytest.fixture()
def store(tmp_path):
    said = []
    session = Session(root=tmp_path, out=said.append)
    tracker = tracker_for(session)
    return session, tracker, tracker.experiment("s"), said


def test_a_trial_that_cannot_start_leaves_its_run_failed_not_running(tmp_path, store):
    """Any error inside a tracked trial (here: its working folder cannot be made) ends its MLflow
    run FAILED with the error as the reason, and the error goes on up to the caller."""
    session, tracker, exp_id, _ = store
    (tmp_path / "blocker").write_text("a file, not a folder")
    exp = ExperimentConfig(name="x", model={"source": "random", "config": {"hidden_size": 32}})
    run = TrialRun(exp=exp, data=None, workdir=tmp_path / "blocker" / "trial", prefix="[t]", experiment_id=exp_id, run_name="trial-0")
    with pytest.raises(OSError):
        run_tracked(session, tracker, run)
    (only,) = tracker.client.search_runs([exp_id])
    assert only.info.status == "FAILED"
    assert only.data.tags[STATE] == "failed" and "Error" in only.data.tags[REASON]


@pytest.mark.parametrize("error,status,reason,kept", [(KeyboardInterrupt(), "KILLED", INTERRUPTED, True),
                                                      (ValueError("bad value\nsecond line"), "FAILED", "ValueError: bad value", False)])
def test_an_error_ends_the_run_with_its_reason(tmp_path, store, error, status, reason, kept):
    """Ctrl-C keeps a resumable trial's checkpoints for its re-run; any other error deletes them."""
    _, tracker, exp_id, said = store
    run_id = tracker.child_run(exp_id, None, "trial-0", {}, {})
    workdir = tmp_path / "trial"
    (workdir / FOLDER / checkpoint_name(1)).mkdir(parents=True)
    with pytest.raises(type(error)):
        with ended_on_error(tracker, run_id, workdir, True, said.append):
            raise error
    run = tracker.client.get_run(run_id)
    assert (run.info.status, run.data.tags[REASON]) == (status, reason)
    assert (workdir / FOLDER).is_dir() == kept
    assert said == []


def test_a_run_that_cannot_be_ended_is_said_and_the_first_error_goes_up(tmp_path, store):
    _, tracker, exp_id, said = store
    with pytest.raises(ValueError, match="the trial's own error"):
        with ended_on_error(tracker, "no-such-run", tmp_path / "trial", False, said.append):
            raise ValueError("the trial's own error")
    assert len(said) == 1 and "no-such-run could not be ended" in said[0]


def test_a_stopper_sigterms_the_running_trials_group_and_nothing_once_it_ended():
    import signal
    import subprocess
    import sys

    from lbsearch.orchestrator.runner import Stopper

    stopper = Stopper()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stopper.started(child.pid)
    stopper.stop()  # from the heartbeat's thread: this worker's trial is re-run elsewhere
    assert child.wait(timeout=10) == -signal.SIGTERM and stopper.fired
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stopper.started(other.pid)
    stopper.done()  # the trial ended: a late stop touches nothing
    stopper.stop()
    assert other.poll() is None
    other.kill()
    other.wait()


def test_the_trials_lines_reach_mlflow_and_the_screen_however_the_ranks_wrote_them(store):
    """Ranks share the pipe: a message may follow another rank's unfinished line (both are kept); a message cut short
    is said, not dropped in silence; the other lines are shown and the last JSON object kept (a script's final metrics)."""
    session, tracker, exp_id, said = store
    run_id = tracker.child_run(exp_id, None, "trial-0", {}, {})
    box = Outbox(tracker, said.append, limit_s=60)
    on_line, last = _line_handler(session, box, run_id, "[t]")
    rows = [[TRAIN_LOSS, 0.5, 1000, 32], [TRAIN_LOSS, 0.4, 1001, 64]]
    for line in ["rank 1 says hi" + message("metrics", rows[:1]), message("metrics", rows[1:]), message("metrics", rows)[:40],
                 '{"accuracy": 0.9}', message("tags", {REASON: "x"})]:
        on_line(line)
    assert box.close() == []
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, TRAIN_LOSS)] == [(32, 0.5), (64, 0.4)]
    assert tracker.client.get_run(run_id).data.tags[REASON] == "x"
    assert said[0] == "[t] rank 1 says hi" and "could not be read" in said[1] and said[2] == '[t] {"accuracy": 0.9}' and len(said) == 3
    assert last["line"] == {"accuracy": 0.9}
