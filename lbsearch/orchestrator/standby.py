"""A standby worker: one process per study that has done a trial's imports and forks each trial.

A trial's process spends its first seconds single-threaded, in the interpreter and the imports of
torch, transformers, Accelerate and scikit-learn (``benchmarks/overhead.py``). Inside ``standby()``
(the study loop, when more than one trial is left to run), the first one-process trial (CPU or GPU) of
lbsearch's own worker starts a standby process: the same command and environment, less the spec
path. It imports all that once, then waits on a socket. That trial and each later one whose command
(less the spec path) and environment are the standby's is a child forked from it: its own process
group, its output on a pipe the orchestrator reads, the trial's environment,
``lbsearch.trial.worker.main`` on its spec. It trains in a fresh process, as a started one would;
only the imports are shared. (Before, the first trial started as its own process and the standby
imported beside it: two processes importing at once, which on a 2-core machine slowed both.) When
the standby process cannot fork (it died, or refused), the trial starts as before. It refuses when a
thread started in it after its imports, Python's or a native pool's (an OpenMP region run in the
parent can hang a forked child), or CUDA is initialised in it; the study says so once, with the reason.

A trial with another command or environment (say, another precision) gets a standby process of its
own (``KEEP`` at once). A one-process GPU trial forks too: CUDA does not survive a fork once the
driver is touched, so the standby process never touches it (``PYTORCH_NVML_BASED_CUDA_CHECK=1``:
torch asks NVML, not the driver, whether a GPU is there) and the child initialises CUDA itself; if
an import initialised it anyway, the standby process refuses and says why. Trials of several
processes or of a script always start as before. The standby process ends when
``standby()`` exits, and by itself when the orchestrator dies (its socket closes); a trial forked
from it watches the orchestrator as every trial does, and is killed if the standby process dies
first. Its command line names the first trial's spec, so it can be found beside the trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from lbsearch.spec import FLAG

__all__ = ["standby", "start"]


NO_CUDA = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
"""The standby process's own environment on top of its trials': ``torch.cuda.is_available()`` asks NVML and
leaves the CUDA driver untouched, so a child forked from it may initialise CUDA (the child gets the trial's)."""

KEEP = 2
"""Standby processes kept at once, one per trial command and environment (the least recently used goes)."""

_servers: dict[tuple, "_Server | None"] | None = None  # by key, least recently used first (None: refused); None outside standby()
_say: Callable[[str], None] = print


@contextlib.contextmanager
def standby(say: Callable[[str], None] = print) -> Iterator[None]:
    """Trials started inside (one at a time, as the study loop runs them) are forked from a standby
    process. ``say``: where a standby process's refusal to fork is said (once per trial command)."""
    global _servers, _say
    (outer, _servers), (outer_say, _say) = (_servers, {}), (_say, say)
    try:
        yield
    finally:
        servers, _servers, _say = [v for v in _servers.values() if v is not None], outer, outer_say
        while servers:
            with contextlib.suppress(Exception):
                servers.pop().end()


def _key(cmd: list[str], env: dict[str, str], spec_file: Path) -> tuple | None:
    """What the standby process must have been started with to fork this trial; None when none may
    (not the built-in worker as one process, CPU or GPU: ``accelerate launch``, a script)."""
    if cmd != [sys.executable, "-m", "lbsearch.trial.worker", str(spec_file)]:
        return None
    return tuple(cmd[:-1]), tuple(sorted(env.items()))


def start(cmd: list[str], env: dict[str, str], spec_file: Path, **popen):
    """The trial's process: forked from the standby process when one fits, else ``Popen(cmd, env=env,
    **popen)``; inside ``standby()`` the first fitting trial starts the standby process beside it."""
    key = _key(cmd, env, spec_file) if _servers is not None and popen.get("cwd") is None else None
    if key is None:
        return subprocess.Popen(cmd, env=env, **popen)
    servers: dict = _servers  # type: ignore[assignment]
    if key in servers and servers[key] is None:  # a standby process refused to fork these trials: none again
        return subprocess.Popen(cmd, env=env, **popen)
    server = servers.pop(key, None)
    if server is not None:
        proc = server.fork(spec_file, env)
        servers[key] = server  # the most recently used last
        if proc is not None:
            return proc
        servers.pop(key).end()  # it died (a new one starts beside this trial) or refused
        if server.refused:
            _refused(servers, key, server)
            return subprocess.Popen(cmd, env=env, **popen)
    while sum(v is not None for v in servers.values()) >= KEEP:  # trials that alternate two settings (say, the precision) keep both
        oldest = next(k for k, v in servers.items() if v is not None)
        servers.pop(oldest).end()
    with contextlib.suppress(OSError):
        servers[key] = server = _Server(cmd[:-1], env, spec_file)
        proc = server.fork(spec_file, env)  # once its imports are done, as a started trial's would be
        if proc is not None:
            return proc
        servers.pop(key).end()
        if server.refused:
            _refused(servers, key, server)
    return subprocess.Popen(cmd, env=env, **popen)


def _refused(servers: dict, key: tuple, server: "_Server") -> None:
    """No standby process for these trials again: said once, with the standby's reason."""
    servers[key] = None
    _say(f"standby process {server.proc.pid} cannot fork trials ({server.refused}): this study's trials start as new processes")


class _Server:
    """The orchestrator's side of a standby process."""

    def __init__(self, prefix: list[str], env: dict[str, str], spec_file: Path) -> None:
        self.refused = ""  # why it answered that it cannot fork (a thread runs in it, CUDA is initialised)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs, open(spec_file.parent.parent / "standby.log", "a") as log:  # what it says before a trial has an output
            self.proc = subprocess.Popen([*prefix, FLAG, str(spec_file)], env=env | NO_CUDA, stdin=theirs, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def fork(self, spec_file: Path, env: dict[str, str]) -> "_Forked | None":
        """A trial forked from it, or None when it cannot (it died, or waits on a child still)."""
        if self.proc.poll() is not None:
            return None
        read, write = os.pipe()
        pid = 0
        try:
            socket.send_fds(self.sock, [json.dumps({"spec": str(spec_file), "env": env}).encode()], [write])
            deadline = time.time() + 120  # its imports may still run
            while select.select([self.sock], [], [], max(0.0, deadline - time.time()))[0]:
                words = self.sock.recv(4096).decode().split()
                if not words or words[0] != "exit":  # ("exit" of the last trial: a stop that gave up waiting for it)
                    pid = int(words[1]) if words[:1] == ["pid"] else 0
                    self.refused = (" ".join(words[1:]) or "no reason given") if words[:1] == ["no"] else ""
                    break
        except (OSError, ValueError):
            pid = 0
        finally:
            os.close(write)
            if pid <= 0:
                os.close(read)
        return _Forked(pid, os.fdopen(read, "r"), self.sock) if pid > 0 else None

    def end(self) -> None:
        from lbsearch.orchestrator.processes import stop_group

        self.sock.close()
        stop_group(self.proc, grace=2.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)


class _Forked:
    """A forked trial as ``subprocess.Popen`` shows a started one: ``pid`` (its process group),
    ``stdout``, ``poll``, ``wait``, ``returncode`` (negative: the signal that ended it)."""

    def __init__(self, pid: int, stdout, sock: socket.socket) -> None:
        self.pid, self.stdout, self.sock = pid, stdout, sock
        self.returncode: int | None = None
        self.launcher_died = False
        """The standby process died while the trial ran (its death kills the trial): the trial's loss is
        its launcher's, as a dead worker's is, and it is re-run from its checkpoint."""

    def poll(self) -> int | None:
        return self._exit(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._exit(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"trial {self.pid}", timeout or 0.0)
        return code

    def _exit(self, timeout: float | None) -> int | None:
        if self.returncode is None and select.select([self.sock], [], [], timeout)[0]:
            try:
                word, pid, code = self.sock.recv(64).decode().split()
                self.returncode = int(code) if (word, int(pid)) == ("exit", self.pid) else -9
            except (OSError, ValueError):  # the standby process died, and with it the report of the trial's exit
                self.returncode, self.launcher_died = -9, True
        return self.returncode


