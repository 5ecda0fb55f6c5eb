"""Trials on a Ray cluster (``executor: {kind: ray}``, or ``lbsearch run --ray ADDRESS``): Ray places each trial by the
resources it asks for; Optuna's storage and MLflow stay as they are, and this process (the driver) asks, tracks
and tells as with trials on this host. Ray only schedules.

A trial asks for one bundle per machine (``lbsearch.spec.bundles``: GPUs and CPUs per process x its processes
there) in a placement group, ``STRICT_SPREAD`` where it spans several machines. Each bundle holds one actor
(``_Machine``) that starts that machine's ranks with the same ``accelerate launch`` command as on one host, with
the trial's machine rank and machine 0's address and port; Ray's GPU ids become the ranks'
``CUDA_VISIBLE_DEVICES``. Rank 0's lines come back to this process (metric rows to MLflow, pruning through
Optuna as always). A node that dies takes its actor along: its trial fails as ``worker died`` and is re-run
(``max_retries``) from its last checkpoint, which every node must reach (on one host it lies under
``--mlruns``; on a cluster give ``--mlruns`` a shared folder, as for ``lbsearch join``). The ranks watch their
actor: they exit when it is gone, and get SIGTERM (a checkpoint) when it dies first.

Ray is an optional extra (``pip install lbsearch[ray]``); it is imported here only, inside functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from lbsearch.orchestrator.launch import TRIAL_LOG, failure_reason, free_port, trial_command
from lbsearch.orchestrator.processes import grace_of, stop_group
from lbsearch.spec import RESULT_JSON, SPEC_JSON, WORKER_DIED, ExecutorConfig, SpecError, TrialResult, WorkerSpec, bundles, message
from lbsearch.tracking import RAY_GPUS, RAY_NODES

__all__ = ["RAY_INSTALL", "connect", "require_ray", "run_on_ray", "placement_tags"]

RAY_INSTALL = "Ray is not installed here: pip install lbsearch[ray]"
"""The one-line error of `run --ray` (or `executor: {kind: ray}`) where Ray is not installed."""
PASSED = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "LBSEARCH_TRACKING_OUTAGE_S")
"""The driver's environment that a trial's ranks get on every node (the rest is the node's own)."""


def require_ray(where: str | Path | None) -> None:
    """A one-line spec error (exit 2) where Ray is not installed; imports nothing."""
    if importlib.util.find_spec("ray") is None:
        raise SpecError(where, "executor", RAY_INSTALL)


def connect(executor: ExecutorConfig, say: Callable[[str], None]) -> Callable[..., TrialResult]:
    """Join the Ray cluster at ``executor.address``; the function that runs a trial there (``run_trial_process``'s signature)."""
    require_ray(None)
    import ray

    address = executor.address or "auto"
    if not ray.is_initialized():
        _reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SpecError(None, "executor.address", f"no Ray cluster at {address}: {str(err).splitlines()[0][:200]}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    say(f"[ray] {address}: {len(nodes)} node(s), {total.get('GPU', 0):g} GPU(s), {total.get('CPU', 0):g} CPU(s); each trial is placed there")
    return functools.partial(run_on_ray, executor)


def _reachable(address: str, timeout: float = 10.0) -> None:
    """A spec error at once where ``HOST:PORT`` (or ``ray://HOST:PORT``) does not answer: Ray itself would retry forever."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto`, or a form Ray reads itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise SpecError(None, "executor.address", f"no Ray cluster answers at {address}: {err.strerror or type(err).__name__}") from None


class _Machine:
    """One machine's ranks of a trial, in a Ray actor on the node that holds the machine's bundle."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.code: int | None = None

    def where(self) -> dict[str, Any]:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "port": free_port()}

    def start(self, spec_json: str, spec_file: str, env: dict[str, str], threads: int, argv: list[str] | None, cwd: str | None) -> None:
        path = Path(spec_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec_json)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # what the launch reads for a CPU's threads per process
        exp = WorkerSpec.model_validate_json(spec_json).experiment
        cmd, env = trial_command(exp, path, dict(os.environ) | env, argv)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     cwd=cwd, preexec_fn=_die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))
        self.code = self.proc.wait()  # type: ignore[union-attr]

    def poll(self, since: int) -> tuple[list[str], int | None]:
        code = self.code  # read first: a code seen means every line is in
        return self.lines[since:], code

    def stop(self, grace: float) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=grace)

    def result(self, path: str) -> str | None:
        return Path(path).read_text() if Path(path).is_file() else None


def placement_tags(where: list[dict[str, Any]]) -> dict[str, str]:
    """Where Ray placed a trial, as MLflow tags: each machine's node id and GPU ids (machine 0 first; GPU lists
    separated by ``;``), beside the ``lbsearch.cpus`` / ``lbsearch.threads`` that rank 0 logs itself."""
    return {RAY_NODES: ",".join(w["node"] for w in where), RAY_GPUS: ";".join(",".join(w["gpus"]) for w in where)}


def _die_with_parent() -> None:
    """In a rank's launcher: SIGTERM when its actor dies (Linux's ``PR_SET_PDEATHSIG``), so it stops with a checkpoint."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _unplaceable(nodes: list[dict[str, Any]], wanted: list[dict[str, float]]) -> str | None:
    """Why no placement can ever hold ``wanted`` on these nodes (one node per bundle), or None."""
    fits = [n for n in nodes if n.get("Alive") and all(n["Resources"].get(k, 0) >= v for k, v in wanted[0].items())]
    if len(fits) >= len(wanted):
        return None
    need = ", ".join(f"{v:g} {k}" for k, v in wanted[0].items())
    return f"the Ray cluster cannot hold this trial: it needs {len(wanted)} node(s) with {need} each, {len(fits)} node(s) have that"


def run_on_ray(executor: ExecutorConfig, spec: WorkerSpec, workdir: Path, *, on_line: Callable[[str], None] = lambda line: None,
               on_start: Callable[[int], None] = lambda pid: None, program: Callable[[Path], tuple[list[str], dict[str, str]]] | None = None,
               no_result: Callable[[int], TrialResult | None] = lambda code: None) -> TrialResult:
    """``lbsearch.orchestrator.launch.run_trial_process`` on the Ray cluster: place the trial's bundles, start each
    machine's ranks in its bundle's actor, follow them. KeyboardInterrupt stops every rank (with its checkpoint) and is re-raised."""
    import ray
    from ray.exceptions import RayActorError, RayError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    workdir.mkdir(parents=True, exist_ok=True)
    try:
        wanted = bundles(spec.experiment["launcher"], executor)
    except ValueError as err:
        return TrialResult(state="failed", reason=str(err))
    if why := _unplaceable(ray.nodes(), wanted):
        return TrialResult(state="failed", reason=why)
    group = placement_group(wanted, strategy="STRICT_SPREAD" if len(wanted) > 1 else "PACK")
    machines: list[Any] = []
    try:
        _wait_ready(group, on_line)
        actor = ray.remote(_Machine)
        machines = [actor.options(num_cpus=b["CPU"], num_gpus=b.get("GPU", 0), max_restarts=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=i)).remote() for i, b in enumerate(wanted)]
        where = ray.get([m.where.remote() for m in machines])
        on_line(message("tags", placement_tags(where)))
        for i, w in enumerate(where):
            on_line(f"on Ray: machine {i} of {len(where)} on node {w['node']} ({w['ip']}), GPUs {','.join(w['gpus']) or 'none'}")
        _start(machines, where, spec, workdir, program, max(1, int(executor.cpus_per_process)))
        return _follow(machines, workdir, on_line, no_result, grace_of(spec.experiment))
    except RayActorError as err:  # a node lost before its ranks started: as a worker that died (re-run); never the study's end
        on_line(f"a machine of this trial was lost while it started: {type(err).__name__}")
        return TrialResult(state="failed", reason=WORKER_DIED)
    except RayError as err:
        return TrialResult(state="failed", reason=f"Ray: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
    finally:  # the actors' ends stop any rank still running (its watchdog, PR_SET_PDEATHSIG); the bundles are freed
        with contextlib.suppress(RayError):  # a cluster gone meanwhile has nothing left to free; the trial's own error goes up
            for m in machines:
                ray.kill(m)
            remove_placement_group(group)


def _wait_ready(group, on_line: Callable[[str], None]) -> None:
    """Until Ray has reserved the trial's bundles (other trials may hold the resources it needs)."""
    import ray

    said = False
    while True:
        ready, _ = ray.wait([group.ready()], timeout=10)
        if ready:
            return
        if not said:
            on_line(f"waiting for the Ray cluster to free {group.bundle_specs}")
            said = True


def _start(machines: list[Any], where: list[dict[str, Any]], spec: WorkerSpec, workdir: Path,
           program: Callable[[Path], tuple[list[str], dict[str, str]]] | None, threads: int) -> None:
    """Each machine's spec (its machine rank, machine 0's address and port) and its ranks started."""
    import ray

    launcher = spec.experiment["launcher"]
    # set, not left to the nodes' environment (a SLURM allocation's MASTER_ADDR, MASTER_PORT, SLURM_NNODES)
    main = {"main_process_ip": where[0]["ip"] if len(where) > 1 else "127.0.0.1", "main_process_port": where[0]["port"]}
    env = {k: os.environ[k] for k in PASSED if k in os.environ} | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = []
    (workdir / RESULT_JSON).unlink(missing_ok=True)
    for i, (m, w) in enumerate(zip(machines, where)):
        exp = spec.experiment | {"launcher": launcher | {"num_machines": len(where), "machine_rank": i} | main}
        spec_file = workdir / (SPEC_JSON if i == 0 else f"machine-{i}/{SPEC_JSON}")
        local = spec.model_copy(update={"experiment": exp, "watch_pid": w["pid"],
                                        "result": str(workdir / RESULT_JSON) if i == 0 else None})
        argv, extra = program(spec_file) if program else (None, {})
        started.append(m.start.remote(local.model_dump_json(indent=1), str(spec_file), env | extra, threads, argv,
                                      str(workdir) if program else None))
    ray.get(started)


def _follow(machines: list[Any], workdir: Path, on_line: Callable[[str], None], no_result: Callable[[int], TrialResult | None],
            grace: float) -> TrialResult:
    """Relay rank 0's lines until every machine's ranks exit; a machine lost (its node died) fails the trial retryably."""
    import ray
    from ray.exceptions import RayActorError

    seen, codes, lost = [0] * len(machines), [None] * len(machines), None
    tail: deque[str] = deque(maxlen=100)
    ended = None
    with open(workdir / TRIAL_LOG, "w") as log:
        try:
            while lost is None and any(c is None for c in codes):
                for i, m in enumerate(machines):
                    if codes[i] is not None:
                        continue
                    try:
                        lines, codes[i] = ray.get(m.poll.remote(seen[i]), timeout=120)
                    except (RayActorError, ray.exceptions.GetTimeoutError) as err:
                        lost = f"machine {i}: {type(err).__name__}"
                        break
                    seen[i] += len(lines)
                    for line in lines:
                        log.write(f"{line}\n" if i == 0 else f"[machine {i}] {line}\n")
                        tail.append(line)
                        if i == 0:
                            on_line(line)
                    log.flush()
                ended = ended or (time.time() if codes[0] is not None else None)
                if ended and time.time() - ended > grace:  # machine 0 is done: the others' ranks have nothing left to wait for
                    break
                time.sleep(0.2)
        except BaseException:
            _stop(machines, grace)
            raise
        _stop([m for m, c in zip(machines, codes) if c is None], grace)
        if lost is not None:
            log.write(f"lost {lost}\n")
    return _outcome(machines[0], workdir, codes[0], lost, tail, no_result)


def _stop(machines: list[Any], grace: float) -> None:
    """SIGTERM to each machine's ranks, SIGKILL after ``grace``; a machine already gone is skipped."""
    import ray
    from ray.exceptions import RayActorError

    for ref in [m.stop.remote(grace) for m in machines]:
        try:
            ray.get(ref, timeout=grace + 30)
        except (RayActorError, ray.exceptions.GetTimeoutError):
            pass


def _outcome(first, workdir: Path, code: int | None, lost: str | None, tail, no_result: Callable[[int], TrialResult | None]) -> TrialResult:
    """As on one host (``launch._outcome``): a lost machine is a worker that died (re-run from its checkpoint)."""
    import ray
    from ray.exceptions import RayActorError

    if lost is not None:
        return TrialResult(state="failed", reason=WORKER_DIED)
    try:
        text = ray.get(first.result.remote(str(workdir / RESULT_JSON)), timeout=60)
    except (RayActorError, ray.exceptions.GetTimeoutError):
        return TrialResult(state="failed", reason=WORKER_DIED)
    if text is not None:
        return TrialResult.model_validate_json(text)
    fallback = no_result(code) if code is not None else None
    if fallback is not None:
        return fallback
    if code is None or code < 0:
        return TrialResult(state="failed", reason=WORKER_DIED)
    return TrialResult(state="failed", reason=f"worker exited with code {code} without a result: {failure_reason(tail)[:400]}")
