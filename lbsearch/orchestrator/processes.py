"""Stopping a trial's process group: SIGTERM, a grace period (a trial's ``train.stop_grace_s``), then SIGKILL."""


from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from lbsearch.spec import TrainConfig


def grace_of(experiment: dict[str, Any]) -> float:
    """The seconds a trial asked to stop has to finish its step and write its checkpoint before SIGKILL: its
    ``train.stop_grace_s`` (the default of ``TrainConfig`` where the experiment has none, as a script's may not)."""
    return float(experiment.get("train", {}).get("stop_grace_s", TrainConfig.model_fields["stop_grace_s"].default))


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:  # 5 s: a server's or a standby process's
    """SIGTERM a process group (a trial, a server started with start_new_session), then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while time.time() < deadline:
            if proc.poll() is not None:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)


