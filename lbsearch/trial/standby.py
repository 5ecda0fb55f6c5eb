"""The standby server inside a trial process: import once, then fork one trial per request from the orchestrator."""


from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import traceback
from typing import Callable

__all__ = ["preload", "serve", "forked_from"]

forked_from: int | None = None
"""In a trial forked from the standby process: that process's pid (the trial tags ``lbsearch.start``)."""


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
    sock = socket.socket(fileno=0)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        except OSError:
            return 0
        if not msg or not fds:
            return 0  # the orchestrator is gone
        request = json.loads(msg)
        if threading.active_count() > 1:  # an import started a thread: a fork would not carry it; the trial starts anew
            os.close(fds[0])
            sock.send(b"no")
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


