"""``lbsearch join``: the other nodes' side of a trial that spans several machines.

Machine rank 0 runs ``lbsearch run`` (or ``train``) as always: it asks Optuna for a trial, writes the
trial's ``spec.json`` with its machine settings resolved (``launcher.num_machines``, node 0's address
and the trial's port; ``lbsearch.spec.accelerate_file``) and starts its own ranks. Every other node runs

    lbsearch join mlruns/trials --machine-rank N

which waits for trial specs that appear under that folder (on a filesystem shared with node 0, as the
tokenized-data cache must be too) and, for each trial of several machines, starts this node's ranks
with the same ``accelerate launch`` command as node 0 but its own machine rank. Rank 0 owns the Optuna
trial, the MLflow run and the result; the ranks started here only train with it. Torch-free.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lbsearch.spec import SPEC_JSON, SpecError

__all__ = ["join", "node_rank"]


def node_rank(given: int | None) -> int:
    """This node's machine rank: ``--machine-rank``, else ``SLURM_NODEID``, else ``NODE_RANK``."""
    if given is None:
        env = next((os.environ[k] for k in ("SLURM_NODEID", "NODE_RANK") if os.environ.get(k)), None)
        given = int(env) if env is not None else None
    if given is None or given < 1:
        raise SpecError(None, "--machine-rank", f"`lbsearch join` runs on machine ranks >= 1 (rank 0 runs `lbsearch run`), got {given}")
    return given


def _new_specs(folder: Path, since: float, seen: set[tuple[str, int]]) -> list[Path]:
    """Trial specs under ``folder`` written after ``since`` and not joined yet, oldest first."""
    found = []
    for path in folder.rglob(SPEC_JSON):
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            continue
        if mtime >= since * 1e9 and (str(path), mtime) not in seen:
            found.append((mtime, path))
    return [p for _, p in sorted(found)]


def join(folder: Path, machine_rank: int | None, trials: int | None = None, poll: float = 0.5,
         out: Callable[[str], None] = print) -> int:
    """Start this node's ranks of each multi-machine trial whose spec appears under ``folder``; stop
    after ``trials`` of them (default: run until interrupted). Returns 0, or the last failing exit code."""
    from lbsearch.spec import WorkerSpec

    rank, since, seen, joined, code = node_rank(machine_rank), time.time(), set(), 0, 0
    out(f"[join] machine rank {rank}: waiting for trials under {folder}")
    while trials is None or joined < trials:
        for path in _new_specs(folder, since, seen):
            try:
                spec = WorkerSpec.model_validate_json(path.read_text())
            except ValueError:
                continue  # still being written: read it again on the next poll
            seen.add((str(path), path.stat().st_mtime_ns))
            launcher = spec.experiment.get("launcher", {})
            if int(launcher.get("num_machines") or 1) <= 1 or spec.experiment.get("kind") == "script":
                continue
            joined += 1
            result = _run_rank(spec, rank, path, out)
            code = result or code
            if trials is not None and joined >= trials:
                break
        time.sleep(poll)
    return code


def _run_rank(spec, rank: int, path: Path, out: Callable[[str], None]) -> int:
    from lbsearch.orchestrator.launch import launch_command
    from lbsearch.orchestrator.processes import grace_of, stop_group
    from lbsearch.spec import read_config

    launcher = spec.experiment["launcher"]
    if launcher.get("accelerate_config") and "machine_rank" in read_config(launcher["accelerate_config"]):
        raise SpecError(launcher["accelerate_config"], "machine_rank", "a config file shared by the nodes must leave "
                        "`machine_rank` out: lbsearch sets it on each node")
    exp = spec.experiment | {"launcher": launcher | {"machine_rank": rank}}
    local = spec.model_copy(update={"experiment": exp, "result": None, "watch_pid": os.getpid()})
    with tempfile.TemporaryDirectory(prefix="lbsearch-join-") as tmp:
        spec_file = Path(tmp) / SPEC_JSON
        spec_file.write_text(local.model_dump_json(indent=1))
        out(f"[join] {path.parent.name}: machine rank {rank} of {launcher['num_machines']}, node 0 at "
            f"{launcher['main_process_ip']}:{launcher['main_process_port']}")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.Popen(launch_command(exp, spec_file), env=env, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:
            stop_group(proc, grace=grace_of(exp))  # as node 0's ranks get: time to write their checkpoint
            raise
    out(f"[join] {path.parent.name}: this node's ranks exited with code {code}")
    return code
