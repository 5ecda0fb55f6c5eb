"""Tables and live progress: plain text where stdout is a file or a pipe, rich drawing where it is a
real terminal (a pseudo-terminal from ``pty``, as ``script`` or tmux give)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

from lbsearch.spec import PROGRESS_SAMPLES
from lbsearch.terminal.console import Progress, active, fmt, print_table, study_progress

ESC = "\x1b["


def _read_all(fd: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> str:
    """Everything written to a pseudo-terminal until the writer exits (or ``timeout``)."""
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc is not None and proc.poll() is not None:
            break
    return out.decode(errors="replace")


def test_plain_table_keeps_its_natural_width_and_no_escape_codes():
    buf = io.StringIO()
    rows = [[0, "complete", 0.81234567, 3e-4, ""], [12, "pruned", None, 0.002, "[pruned] at 320"]]
    print_table(["trial", "state", "value", "optimizer.lr", "reason"], rows, title="study q", caption="complete 1", stream=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "study q" and lines[-1] == "complete 1"
    assert lines[1].split() == ["trial", "state", "value", "optimizer.lr", "reason"]
    assert lines[3].split() == ["0", "complete", "0.8123", "0.0003"] and lines[4].split() == ["12", "pruned", "-", "0.002", "[pruned]", "at", "320"]
    assert lines[3].index("0.8123") + 6 == lines[4].index("-") + 1 and lines[3].index("0.0003") + 6 == lines[4].index("0.002") + 5  # numbers right-aligned
    assert ESC not in buf.getvalue() and all(line == line.rstrip() for line in lines)


def test_table_on_a_terminal_is_drawn_with_rich():
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            print_table(["trial", "value"], [[0, 0.5]], title="study q", stream=tty)
        text = os.read(master, 65536).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert ESC in text and "study q" in text and "0.5" in text


def test_fmt():
    assert (fmt(None), fmt(0.123456), fmt(3), fmt("x")) == ("-", "0.1235", "3", "x")


_DRIVE = """
import time
from lbsearch.spec import EVAL, PROGRESS_SAMPLES, TRAIN_LOSS, TRAIN_MFU, TRAIN_SAMPLES_PER_S
from lbsearch.terminal.console import active, study_progress
with study_progress("s", 2) as shown:
    shown.study(counted=0, complete=0, pruned=0, failed=0, best=None)
    shown.trial_start("[trial 0]", 960, "accuracy")
    print("[trial 0] samples 320/960 loss 0.6900", flush=True)
    active().trial_metrics([[PROGRESS_SAMPLES, 320, 0, 10], [TRAIN_LOSS, 0.69, 0, 10], [EVAL + "accuracy", 0.59, 0, 10],
                            [TRAIN_SAMPLES_PER_S, 100.0, 0, 10], [TRAIN_MFU, 0.123, 0, 10]])
    time.sleep(1.2)
    active().trial_end()
    shown.study(counted=1, complete=1, pruned=0, failed=0, best="0.5900 (trial 0)")
    time.sleep(0.8)
"""


def test_live_progress_draws_the_study_and_the_trial_on_a_terminal():
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _DRIVE], stdout=slave, stderr=slave, env=dict(os.environ, COLUMNS="160", TERM="xterm"))
    os.close(slave)
    try:
        text = _read_all(master, proc)
    finally:
        proc.wait(timeout=30)
        os.close(master)
    assert proc.returncode == 0, text
    assert "[trial 0] samples 320/960 loss 0.6900" in text  # lines scroll above the bars
    for shown in ("study s", "0/2", "trials", "trial 0", "320/960", "samples", "loss 0.6900", "accuracy 0.5900", "100 samples/s", "MFU 12.3%", "left",
                  "1/2", "complete 1 · pruned 0 · failed 0 · best 0.5900 (trial 0)"):
        assert shown in text, shown
    assert ESC in text


def test_no_terminal_no_drawing():
    proc = subprocess.run([sys.executable, "-c", _DRIVE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[trial 0] samples 320/960 loss 0.6900\n"


def test_outside_a_study_the_display_does_nothing():
    assert type(active()) is Progress
    with study_progress("s", 1) as shown:  # pytest's captured stdout is no terminal
        assert shown is active() and type(shown) is Progress
        shown.trial_start("[trial 0]", 10, "loss")
        shown.trial_metrics([[PROGRESS_SAMPLES, 5, 0, 1]])
        shown.trial_end()
