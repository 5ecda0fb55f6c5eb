"""A trial process exits when its orchestrator is gone (a started trial's only way out when the
orchestrator is SIGKILLed; a forked trial also dies with its standby process)."""

from __future__ import annotations

import subprocess
import sys

WATCHER = "import sys, time\nfrom lbsearch.link.watchdog import watch_parent\nwatch_parent(int(sys.argv[1]))\nprint('watching', flush=True)\ntime.sleep(120)\n"


def test_the_trial_exits_with_code_3_once_its_orchestrator_is_gone():
    orchestrator = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    trial = subprocess.Popen([sys.executable, "-c", WATCHER, str(orchestrator.pid)], stdout=subprocess.PIPE, text=True)
    try:
        assert trial.stdout.readline().strip() == "watching"
        assert trial.poll() is None  # the orchestrator lives: the trial goes on
        orchestrator.kill()
        orchestrator.wait(timeout=10)  # reaped: a zombie would still answer kill(pid, 0)
        assert trial.wait(timeout=30) == 3
    finally:
        for proc in (orchestrator, trial):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
