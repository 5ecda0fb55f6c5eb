"""The outbox of a trial's MLflow calls: in order, held through an outage (a real connection refused),
given up past the limit, saved and replayed into a real SQLite store; an error retrying cannot cure
is raised as it is."""

from __future__ import annotations

import time

import pytest

from lbsearch.orchestrator.launch import free_port
from lbsearch.spec import TRACKING_LOST, TRAIN_LOSS, TRIALS, TrackingOutage
from lbsearch.tracking import OUTBOX_FILE, REASON, STATE, Outbox, Tracker, TrackingError, is_outage, replay_outboxes, save_outbox


@pytest.fixture
def store(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    run_id = tracker.child_run(tracker.experiment("outbox"), None, "trial-0", {}, {})
    return tracker, run_id


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """A tracker of a server that is not there: every call is refused at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return Tracker(f"http://127.0.0.1:{free_port()}", tmp_path)


def _steps(tracker: Tracker, run_id: str, key: str = TRAIN_LOSS) -> list[int]:
    return [m.step for m in tracker.client.get_metric_history(run_id, key)]


def test_calls_go_in_order_and_rows_of_one_run_as_one_batch(store):
    tracker, run_id = store
    said: list[str] = []
    box = Outbox(tracker, said.append, limit_s=60)
    for step in range(1, 51):
        box.metric_rows(run_id, [[TRAIN_LOSS, 1.0 / step, 1000 + step, step]])
    box.tags(run_id, {STATE: "complete"})
    box.end(run_id, "FINISHED")
    assert box.close() == []
    assert _steps(tracker, run_id) == list(range(1, 51))
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[STATE] == "complete"
    assert said == []  # nothing to say when MLflow answers


def test_an_outage_is_said_once_and_past_the_limit_the_trial_is_stopped_once(nowhere):
    said: list[str] = []
    box = Outbox(nowhere, said.append, prefix="[trial 3]", limit_s=1.0)
    box.metric_rows("r1", [[TRAIN_LOSS, 1.0, 0, 1]])
    box.check()  # within the limit: the trial trains on
    deadline = time.time() + 20
    while not box.lost() and time.time() < deadline:
        box.metric_rows("r1", [[TRAIN_LOSS, 0.5, 0, 2]])
        time.sleep(0.2)
    assert box.lost()
    with pytest.raises(TrackingOutage, match="unreachable for"):
        box.check()
    box.check()  # raised once: the rows a stopping trial still sends are kept, not refused
    assert len(said) == 1 and said[0].startswith("[trial 3] MLflow unreachable")
    assert not box.flush(0.1)
    unsent = box.close(0)
    assert unsent[0] == ["metric_rows", "r1", [[TRAIN_LOSS, 1.0, 0, 1]]] and len(unsent) >= 2


def test_an_error_retrying_cannot_cure_is_raised_as_it_is(store):
    tracker, _ = store
    box = Outbox(tracker, print, limit_s=60)
    box.metric_rows("no-such-run", [[TRAIN_LOSS, 1.0, 0, 1]])
    box.flush(10)
    with pytest.raises(TrackingError) as err:
        box.check()
    assert not is_outage(err.value)
    box.close(0)


def test_calls_kept_through_an_outage_are_replayed_in_order_and_the_file_goes(store, nowhere, tmp_path):
    tracker, run_id = store
    folder = tmp_path / TRIALS / "s" / "0000-abc"
    save_outbox([["metric_rows", run_id, [[TRAIN_LOSS, 0.9, 1, 1]], 1], ["metric_rows", run_id, [[TRAIN_LOSS, 0.8, 2, 2]]]], folder)
    save_outbox([["tags", run_id, {REASON: TRACKING_LOST}], ["end", run_id, "KILLED"]], folder)  # appended
    said: list[str] = []
    assert replay_outboxes(nowhere, [folder], said.append) == 0  # still down: kept for later
    assert (folder / OUTBOX_FILE).is_file() and "kept for later (4 left" in said[-1]
    assert replay_outboxes(tracker, [folder, tmp_path / "elsewhere"], said.append) == 4
    assert not (folder / OUTBOX_FILE).exists()
    assert _steps(tracker, run_id) == [1, 2]
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[REASON] == TRACKING_LOST


class _SlowStore(Tracker):
    """The real SQLite store, each batch of rows half a second late (a store under load)."""

    def metric_rows(self, run_id, rows):  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        super().metric_rows(run_id, rows)


def test_settle_waits_until_the_rows_queued_so_far_are_in_mlflow_and_not_through_an_outage(tmp_path, nowhere):
    """At a trial's `sync` (a checkpoint) the orchestrator settles the outbox: the checkpoint announced on the console has its
    metric rows in MLflow, even if the machine dies right after (tests/cli/test_resume.py kills it at that line)."""
    slow = _SlowStore(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    run_id = slow.child_run(slow.experiment("outbox"), None, "trial-0", {}, {})
    box = Outbox(slow, lambda _: None, limit_s=60)
    box.metric_rows(run_id, [[TRAIN_LOSS, 0.5, 1000, 20]])
    box.settle()
    assert _steps(slow, run_id) == [20]  # at once, not half a second later
    box.close()
    down = Outbox(nowhere, lambda _: None, limit_s=60)
    down.metric_rows("r1", [[TRAIN_LOSS, 1.0, 0, 1]])
    deadline = time.time() + 20
    while down.down_since is None and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    down.settle()
    assert time.time() - t0 < 1.0  # an outage does not hold the console: the rows stay queued under the outbox's limit
    down.close(wait_s=0)
