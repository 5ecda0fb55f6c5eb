"""The standby server inside a trial process: import once, then fork one trial per request from the orchestrator."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from lbsearch.data import local_model_type
from lbsearch.spec import LM_TASKS, ExperimentConfig

__all__ = ["ahead", "preload", "serve", "forked_from", "os_threads", "refusal"]

forked_from: int | None = None
"""In a trial forked from the standby process: that process's pid (the trial tags ``lbsearch.start``)."""


def ahead(spec_file: Path) -> list[str]:
    """What a trial imports before its clock starts (``wall_s``, ``first_step_s``), and the standby
    process imports ahead: transformers' modelling core and the model family's code, and for a
    classifier the metrics' scikit-learn (``spec_file``: the trial's spec; the standby process's is
    that of the trial it was started beside, which the later trials of a study most likely share)."""
    names = ["transformers.modeling_utils", "transformers.masking_utils"]
    try:
        exp = ExperimentConfig.model_validate(json.loads(spec_file.read_text())["experiment"])
    except Exception:  # noqa: BLE001 - only a guess at what to import ahead
        return names
    kind = (local_model_type(exp.model) or "").replace("-", "_")  # xlm-roberta: transformers.models.xlm_roberta
    if kind.isidentifier():
        names.append(f"transformers.models.{kind}.modeling_{kind}")
    return names + ([] if exp.task in LM_TASKS else ["sklearn.metrics", "scipy.stats"])


def preload(names: list[str]) -> None:
    """Import these modules; one that fails is left to fail where it is used."""
    import importlib

    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def serve(names: list[str], run: Callable[[list[str]], int]) -> int:
    """In the standby process: import ``names``, then for each trial sent on stdin (its spec path,
    its environment, its output pipe) fork a child that runs ``run([spec])``; reply its pid, then its exit code."""
    preload(names)
    baseline = os_threads()  # the imports' own threads (torch starts one); nothing computes here after them
    sock = socket.socket(fileno=0)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        except OSError:
            return 0
        if not msg or not fds:
            return 0  # the orchestrator is gone
        request = json.loads(msg)
        why = refusal(baseline)
        if why:  # the trial starts anew; the orchestrator says why, once
            os.close(fds[0])
            sock.send(f"no {why}".encode())
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(sock, fds[0], request, run)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        os.close(fds[0])
        try:
            sock.send(f"pid {pid}".encode())
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            sock.send(f"exit {pid} {code}".encode())
        except OSError:
            return 0


def os_threads() -> int:
    """This process's threads as the kernel sees them: Python's and native ones (OpenMP, BLAS, Rust pools)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: Python's own count
        return threading.active_count()


def refusal(baseline: int) -> str | None:
    """Why this process must not fork a trial now, or None. A fork carries only the calling thread: a
    Python thread's work would be lost, and a native pool that ran (an OpenMP region, once run in the
    parent, can hang a forked child at its first parallel op) would be left broken; CUDA does not
    survive a fork once initialised. ``baseline``: the threads counted right after the imports."""
    if threading.active_count() > 1:
        return f"a Python thread runs in it ({', '.join(t.name for t in threading.enumerate() if t is not threading.current_thread())})"
    extra = os_threads() - baseline
    if extra > 0:
        return f"{extra} native thread(s) started in it after its imports (an OpenMP, BLAS or tokenizers pool)"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in it"
    return None


def _child(sock: socket.socket, out: int, request: dict, run: Callable[[list[str]], int]) -> None:
    """The forked trial: its own process group, stdout and stderr on ``out``, the trial's environment."""
    global forked_from
    code, forked_from = 1, os.getppid()
    try:
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.setpgid(0, 0)
        _die_with_parent(forked_from)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # in place of the socket: stdin reads nothing
        os.close(null)
        sock.detach()
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv[1:] = [request["spec"]]
        code = run([request["spec"]])
    except BaseException:  # noqa: BLE001 - reported in the trial's output
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the standby process ends (Linux ``PR_SET_PDEATHSIG``): a trial it forked and can no
    longer report on never runs on unseen. Elsewhere a no-op: the trial still watches the orchestrator."""
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the call
        os._exit(1)


