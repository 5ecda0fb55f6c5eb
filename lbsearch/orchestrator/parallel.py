"""``lbsearch run --parallel N``: up to N trials of one study at once on this host, each on its own devices.

The run places N workers of the study, each an ``lbsearch run`` of the same spec: the path that several
workers on one host already take (asking for a trial and counting it toward ``n_trials`` happen under
the study lock, and the sampler sees the trials that are running: TPE's constant liar, so concurrent
asks differ). What this adds is the placement: each worker gets its own devices, and its trials inherit
them.

- On a GPU host, ``launcher.processes`` GPUs per worker (``CUDA_VISIBLE_DEVICES``, from the visible ones).
- On a CPU, a disjoint set of cores per worker (its CPU affinity, which its trial processes inherit) and
  as many threads per trial process as the set has cores per process (``OMP_NUM_THREADS``, which the
  trial's launch reads, ``lbsearch.orchestrator.launch``).

Trials never share a device: a host with fewer than N x ``launcher.processes`` devices is refused before
anything starts (exit 2). Each worker runs in its own process group; Ctrl-C (or SIGTERM) reaches this
process, which passes it to every worker once: each stops its trial with a checkpoint, and the same
command resumes them. Should this process die without a word (SIGKILL), each worker gets SIGTERM from
the kernel (``PR_SET_PDEATHSIG``) and stops the same way. A worker's lines are shown prefixed with ``[worker i]``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

from lbsearch.spec import SpecError

__all__ = ["placements", "run_parallel", "without_option"]


def _visible_gpus(cpu: bool) -> list[str]:
    """The GPUs trials may use: ``CUDA_VISIBLE_DEVICES`` where set, else every one ``nvidia-smi -L`` lists (the
    orchestrator imports no torch and never touches CUDA); none with ``launcher.cpu`` or without the driver."""
    if cpu:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def placements(n: int, processes: int, gpus: list[str], cores: list[int], where: str) -> list[dict[str, Any]]:
    """Each worker's devices: ``{"env": ..., "cores": [...], "what": ...}``. ``where``: the spec file, named by the error."""
    if gpus:
        if n * processes > len(gpus):
            raise SpecError(where, "--parallel", f"{n} trials at once of {processes} GPU(s) each need {n * processes} GPUs; "
                            f"{len(gpus)} visible ({','.join(gpus)})")
        return [{"env": {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * processes:(i + 1) * processes])}, "cores": None,
                 "what": f"GPU {','.join(gpus[i * processes:(i + 1) * processes])}"} for i in range(n)]
    if n * processes > len(cores):
        raise SpecError(where, "--parallel", f"{n} trials at once of {processes} process(es) each need {n * processes} CPU cores; "
                        f"this host lets this process use {len(cores)}")
    share = len(cores) // n
    out = []
    for i in range(n):
        mine = cores[i * share:(i + 1) * share]
        threads = max(1, share // processes)
        out.append({"env": {"OMP_NUM_THREADS": str(threads)}, "cores": mine,
                    "what": f"CPU cores {','.join(map(str, mine))}, {threads} thread(s) per process"})
    return out


def _worker_setup(cores: list[int] | None) -> None:
    """In the worker, before it runs: its cores, and SIGTERM when this process dies (Linux's ``PR_SET_PDEATHSIG``)."""
    if cores:
        os.sched_setaffinity(0, cores)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _relay(proc: subprocess.Popen, prefix: str, say: Callable[[str], None]) -> None:
    for line in proc.stdout:
        say(f"{prefix} {line.rstrip()}")


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without the option ``name`` and its value (``--name V`` or ``--name=V``): the command each worker runs."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith(f"{name}="):
            skip = False
            continue
        skip = a == name
        if not skip:
            out.append(a)
    return out


def run_parallel(argv: list[str], n: int, launcher: dict[str, Any], where: str, say: Callable[[str], None] = print, local: bool = True) -> int:
    """Run ``lbsearch ARGV`` (a ``run`` without ``--parallel``) as ``n`` placed workers; 130 when interrupted,
    else the largest exit code of the workers. ``local=False``: the workers' trials are placed by Ray
    (``lbsearch.orchestrator.ray_executor``), not on this host's devices."""
    processes = int(launcher["processes"])  # a whole launcher section (model_dump): its defaults are the model's
    plan = placements(n, processes, _visible_gpus(bool(launcher.get("cpu"))), sorted(os.sched_getaffinity(0)), where) if local else \
        [{"env": {}, "cores": None, "what": "its trials placed by Ray"}] * n
    workers, relays = [], []
    for i, place in enumerate(plan):
        say(f"[worker {i}] {place['what']}")
        cores = place["cores"]
        proc = subprocess.Popen([sys.executable, "-m", "lbsearch.cli", *argv], env=os.environ | place["env"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=lambda c=cores: _worker_setup(c))
        workers.append(proc)
        relays.append(threading.Thread(target=_relay, args=(proc, f"[worker {i}]", say), daemon=True))
        relays[-1].start()
    interrupted = False
    try:
        for proc in workers:
            proc.wait()
    except KeyboardInterrupt:  # Ctrl-C here, or SIGTERM (the CLI turns it into this): every worker once, then wait
        interrupted = True
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in workers:
            proc.wait()
    for relay in relays:
        relay.join(timeout=10)
    codes = [proc.returncode for proc in workers]
    return 130 if interrupted or 130 in codes else max(codes)
