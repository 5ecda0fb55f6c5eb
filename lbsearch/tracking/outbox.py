"""A trial's MLflow calls through a tracking outage: sent in order by a thread of their own, held and
retried while the tracking store is unreachable, never lost.

The orchestrator reads a trial's output line by line and logs its metric rows, tags and end through an
``Outbox``: the reader never waits on MLflow (a blocked reader would fill the trial's pipe and stall
its training). While the store fails, the calls wait in order and are retried with a growing pause;
when it answers again they all go, in order, and the outage is said once at its start and once at its
end. An outage longer than ``outage_limit()`` seconds interrupts the trial (``TrackingOutage``): it is
stopped with a checkpoint and failed as ``TRACKING_LOST``, which is re-run from that checkpoint; the
calls not sent are saved beside its checkpoints (``save_outbox``) and sent by the next ``lbsearch run`` of the
study (``replay_outboxes``), so the trial's MLflow run gets every row and its end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbsearch.spec import TrackingOutage
from lbsearch.tracking.tracker import Tracker, TrackingError

__all__ = ["Outbox", "is_outage", "outage_limit", "replay_outboxes", "save_outbox", "wait_for_tracking", "OUTBOX_FILE"]

OUTBOX_FILE = "outbox.jsonl"
"""In a trial's folder: the MLflow calls an outage kept from its run, one JSON list per line."""
OUTAGE_ENV, OUTAGE_DEFAULT_S = "LBSEARCH_TRACKING_OUTAGE_S", 900.0
"""How long a trial trains on while MLflow is unreachable before it is stopped (seconds; the environment
variable overrides the default, ``outage_limit`` reads both)."""
PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                       "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "FEATURE_DISABLED"})
"""MLflow error codes that retrying cannot cure (a bad call, a deleted run): these fail the trial as before."""


def outage_limit() -> float:
    """Seconds a trial trains on while MLflow is unreachable (``LBSEARCH_TRACKING_OUTAGE_S``, else ``OUTAGE_DEFAULT_S``)."""
    raw = os.environ.get(OUTAGE_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else OUTAGE_DEFAULT_S
    except ValueError:
        return OUTAGE_DEFAULT_S


def is_outage(err: BaseException) -> bool:
    """An MLflow error that may pass: a server that does not answer, a store that is locked or down."""
    return isinstance(err, TrackingError) and getattr(err, "error_code", "") not in PERMANENT


def first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0][:200]


class Outbox:
    """A trial run's MLflow calls (``metric_rows``, ``tags``, ``artifacts``, ``end``), sent in order by
    one thread. ``check()`` raises ``TrackingOutage`` once the store has failed for ``limit_s`` seconds
    and an error that retrying cannot cure as it is; ``close(wait_s)`` returns the calls not sent."""

    def __init__(self, tracker: Tracker, say: Callable[[str], None], prefix: str = "", limit_s: float | None = None) -> None:
        self.tracker, self.say, self.prefix = tracker, say, prefix
        self.limit_s = outage_limit() if limit_s is None else limit_s
        self.calls: deque[list[Any]] = deque()
        self.cond = threading.Condition()
        self.closing = self.stopped = self.raised = False
        self.down_since: float | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send_all, name="lbsearch-outbox", daemon=True)
        self.thread.start()

    def metric_rows(self, run_id: str, rows: list[list[Any]]) -> None:
        self._put(["metric_rows", run_id, rows])

    def metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._put(["metric_rows", run_id, [[k, float(v), now, step] for k, v in values.items() if v is not None]])

    def tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self._put(["tags", run_id, {k: str(v) for k, v in tags.items()}])

    def artifacts(self, run_id: str, files: dict[str, str]) -> None:
        self._put(["artifacts", run_id, files])

    def end(self, run_id: str, status: str) -> None:
        self._put(["end", run_id, status])

    def lost(self) -> bool:
        return self.down_since is not None and time.time() - self.down_since > self.limit_s

    def check(self) -> None:
        """Raise (once) what ends the trial: an error retrying cannot cure, or an outage past the limit."""
        if self.raised:
            return
        if self.error is not None:
            self.raised = True
            raise self.error
        if self.lost():
            self.raised = True
            raise TrackingOutage(f"MLflow unreachable for {time.time() - self.down_since:.0f} s (limit {self.limit_s:.0f} s, {OUTAGE_ENV})")

    def flush(self, wait_s: float | None = None) -> bool:
        """Wait up to ``wait_s`` seconds (default: what is left of the outage limit) until every call
        went; False where some are still waiting (the store is down)."""
        with self.cond:
            self.cond.wait_for(lambda: not self.calls or self.error is not None or not self.thread.is_alive(), self._left(wait_s))
            return not self.calls

    def settle(self, wait_s: float = 10.0) -> None:
        """While the store answers, wait (at most ``wait_s``) until the calls queued so far went (a trial's ``sync`` at a
        checkpoint: the checkpoint announced on the console has its metric rows in MLflow, even if the machine dies right
        after). During an outage it does not wait: the calls stay queued, the outbox's own limit applies."""
        if self.down_since is None:
            self.flush(wait_s)

    def _left(self, wait_s: float | None) -> float:
        if wait_s is not None:
            return max(0.0, wait_s)
        return max(0.0, self.limit_s - (time.time() - self.down_since)) if self.down_since is not None else self.limit_s

    def close(self, wait_s: float | None = None) -> list[list[Any]]:
        """Wait up to ``wait_s`` seconds (default: what is left of the outage limit) for every call to
        be sent; stop the thread; return the calls not sent, in order."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join(self._left(wait_s))
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.thread.join(30.0)  # one call in flight at most
        return list(self.calls)

    def _put(self, call: list[Any]) -> None:
        with self.cond:
            self.calls.append(call)
            self.cond.notify_all()

    def _send_all(self) -> None:
        pause = 1.0
        while True:
            with self.cond:
                while not self.calls and not self.closing and not self.stopped:
                    self.cond.wait()
                if self.stopped or not self.calls or self.error is not None:
                    return
                call = _merged(self.calls)
            try:
                send(self.tracker, call)
            except TrackingError as err:
                if not is_outage(err):
                    self.error = err
                    return
                self._down(err)
                with self.cond:
                    self.cond.wait_for(lambda: self.stopped, timeout=pause)
                pause = min(30.0, pause * 2)
                continue
            with self.cond:
                for _ in range(call[3] if call[0] == "metric_rows" else 1):
                    self.calls.popleft()
                self.cond.notify_all()
            pause = self._up(pause)

    def _down(self, err: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.time()
            self.say(f"{self.prefix} MLflow unreachable ({first_line(err)}): the trial trains on; its metrics wait and are "
                     f"sent when MLflow answers (up to {self.limit_s:.0f} s, {OUTAGE_ENV})")

    def _up(self, pause: float) -> float:
        if self.down_since is not None:
            self.say(f"{self.prefix} MLflow reachable again after {time.time() - self.down_since:.0f} s: the waiting metrics are logged")
            self.down_since = None
        return 1.0


def _merged(calls: deque[list[Any]]) -> list[Any]:
    """The first call; consecutive metric rows of one run go as one call (``["metric_rows", run, rows, n]``)."""
    first = calls[0]
    if first[0] != "metric_rows":
        return first
    rows, n = [], 0
    for call in calls:
        if call[0] != "metric_rows" or call[1] != first[1] or len(rows) >= 5000:
            break
        rows += call[2]
        n += 1
    return ["metric_rows", first[1], rows, n]


def send(tracker: Tracker, call: list[Any]) -> None:
    kind, run_id, payload = call[:3]
    if kind == "metric_rows":
        tracker.metric_rows(run_id, payload)
    elif kind == "tags":
        tracker.tags(run_id, payload)
    elif kind == "artifacts":
        tracker.artifacts(run_id, payload)
    elif kind == "end":
        tracker.end(run_id, payload)
    else:
        raise ValueError(f"unknown MLflow call {kind!r}")


def save_outbox(calls: list[list[Any]], folder: Path) -> Path:
    """Append ``calls`` to ``folder/outbox.jsonl`` (fsynced), for ``replay_outboxes``."""
    path = folder / OUTBOX_FILE
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for call in calls:
            fh.write(json.dumps(call[:3]) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def replay_outboxes(tracker: Tracker, folders: list[Path], say: Callable[[str], None]) -> int:
    """Send the calls an outage kept (``save_outbox``) in each of ``folders``; a file is removed once all its calls
    went. Returns the number of calls sent; a store still down leaves the rest for the next time."""
    sent = 0
    for path in sorted(f / OUTBOX_FILE for f in folders if (f / OUTBOX_FILE).is_file()):
        calls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        done = 0
        try:
            for call in calls:
                send(tracker, call)
                done += 1
        except TrackingError as err:
            rest = calls[done:]
            path.write_text("".join(json.dumps(c) + "\n" for c in rest))
            say(f"MLflow calls of {path.parent.name} kept for later ({len(rest)} left: {first_line(err)})")
            return sent + done
        path.unlink()
        sent += done
        say(f"MLflow calls an outage kept for {path.parent.name} are logged ({done})")
    return sent


def wait_for_tracking(tracker: Tracker, limit_s: float, say: Callable[[str], None]) -> bool:
    """Poll the tracking store for up to ``limit_s`` seconds; True once it answers."""
    deadline, pause = time.time() + limit_s, 1.0
    while True:
        try:
            tracker.client.search_experiments(max_results=1)
            return True
        except TrackingError as err:
            if time.time() >= deadline:
                return False
            if pause == 1.0:
                say(f"MLflow unreachable ({first_line(err)}): the next trial waits for it (up to {limit_s:.0f} s, {OUTAGE_ENV})")
            time.sleep(min(pause, max(0.0, deadline - time.time())))
            pause = min(30.0, pause * 2)
