"""The trial process dies with its parent: a thread that exits the process when the orchestrator is gone."""


from __future__ import annotations

import os
import threading
import time


def watch_parent(pid: int) -> None:
    """Exit when the orchestrator (``pid``) dies, so that no orphan trial keeps the CPU or GPU."""

    def loop() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass

    threading.Thread(target=loop, daemon=True, name="lbsearch-watchdog").start()


