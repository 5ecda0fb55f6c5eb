"""Stopping a trial: its grace between SIGTERM and SIGKILL is its own ``train.stop_grace_s`` on every node."""

from __future__ import annotations

import subprocess
import sys
import time

from lbsearch.orchestrator.processes import grace_of, stop_group
from lbsearch.spec import TrainConfig


def test_a_trials_grace_is_its_stop_grace_or_the_configs_default():
    assert grace_of({"train": {"stop_grace_s": 7}}) == 7.0
    assert grace_of({}) == TrainConfig().stop_grace_s  # a script experiment without a train section: the default


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_and_not_before():
    """A process that traps SIGTERM (a trial writing its checkpoint) lives through the grace, then is killed."""
    code = "import signal, time; signal.signal(signal.SIGTERM, lambda *a: None); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    stop_group(proc, grace=1.5)
    assert proc.poll() is not None and 1.4 <= time.monotonic() - t0 < 10
