"""The standby process's fork guard (``lbsearch.trial.standby.refusal``): it sees native threads too. (Named apart from
tests/cli/test_standby.py: two test files of one name do not import side by side.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_native_thread_pool_started_after_the_imports_refuses_the_fork():
    # in a fresh process: torch imported, nothing computed yet, then one OpenMP region (2 threads) in the main thread.
    # No Python thread runs at any point, so a guard that counted only Python's threads would fork.
    script = textwrap.dedent("""
        import threading
        import torch
        from lbsearch.trial.standby import os_threads, refusal
        base = os_threads()
        print(refusal(base))
        torch.set_num_threads(2)
        torch.ones(512, 512) @ torch.ones(512, 512)
        print(threading.active_count(), os_threads() > base)
        print(refusal(base))
        print(refusal(os_threads()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0] == "None"  # right after the imports: it may fork
    assert out[1] == "1 True"  # one Python thread, and native threads that were not there before
    assert out[2].endswith("native thread(s) started in it after its imports (an OpenMP, BLAS or tokenizers pool)")
    assert out[3] == "None"  # counted from there on, nothing new


def test_a_python_thread_refuses_the_fork_and_is_named():
    script = textwrap.dedent("""
        import threading, time
        from lbsearch.trial.standby import os_threads, refusal
        base = os_threads()
        threading.Thread(target=time.sleep, args=(30,), name="busy-loader", daemon=True).start()
        print(refusal(base))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "a Python thread runs in it (busy-loader)"
