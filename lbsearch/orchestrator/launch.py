"""Start one trial as ``accelerate launch ... -m lbsearch.trial.worker spec.json`` and collect its result.

A one-process trial goes through Accelerate's simple launcher prepared here, in the orchestrator:
the same arguments, config-file resolution and environment that ``accelerate launch`` would give,
then the worker is started directly. That saves the launcher's own interpreter and torch import,
~1.4 s per trial (``benchmarks/overhead.py``). Several processes go through ``accelerate launch``
(torchrun).

The trial runs in its own session (process group), so Ctrl-C or SIGTERM to the orchestrator stops
every rank of it at once, and a crash of the trial never takes the orchestrator with it.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import lbsearch.orchestrator.standby as standby
from lbsearch.orchestrator.processes import grace_of, stop_group
from lbsearch.spec import RESULT_JSON, SPEC_JSON, WORKER_DIED, TrialResult, machines, read_config, read_result

if TYPE_CHECKING:
    from lbsearch.spec import WorkerSpec

__all__ = ["TRIAL_LOG", "free_port", "launch_command", "trial_command", "with_machines", "run_trial_process", "failure_reason"]

TRIAL_LOG = "stdout.log"
"""A trial's output (every rank's stdout and stderr) in its working folder, attached to its MLflow run."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(exp: dict[str, Any], spec_file: Path, program: list[str] | None = None) -> list[str]:
    """The ``accelerate launch`` command line of a trial (``program``: what each rank runs, by default
    ``-m lbsearch.trial.worker spec.json``)."""
    return [sys.executable, "-m", "accelerate.commands.launch", *_launch_args(exp, spec_file, program)]


def trial_command(exp: dict[str, Any], spec_file: Path, env: dict[str, str], program: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment that start a trial: for one process, what Accelerate's simple
    launcher would run (prepared in this process); otherwise ``accelerate launch`` itself."""
    if int(exp["launcher"]["processes"]) == 1:
        try:
            prepared = _simple_launch(_launch_args(exp, spec_file, program))
        except (Exception, SystemExit):  # noqa: BLE001 - a bad config file, moved private helpers, an argparse exit:
            prepared = None  # `accelerate launch` itself then fails the trial, with its error in the trial's log
        if prepared is not None:
            cmd, launch_env = prepared
            return cmd, env | {k: v for k, v in launch_env.items() if os.environ.get(k) != v}
    return launch_command(exp, spec_file, program), env


def _simple_launch(args: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """``accelerate launch ARGS``'s command and environment when it would pick the simple launcher
    (the branch order of ``accelerate.commands.launch.launch_command``), else None."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import ComputeEnvironment
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    parsed, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(args))
    special = ("use_deepspeed", "use_fsdp", "use_megatron_lm", "multi_gpu", "tpu")
    if (not parsed.cpu and any(getattr(parsed, k, False) for k in special)) or (
        defaults is not None and defaults.compute_environment == ComputeEnvironment.AMAZON_SAGEMAKER
    ):
        return None
    return prepare_simple_launcher_cmd_env(parsed)


def _launch_args(exp: dict[str, Any], spec_file: Path, program: list[str] | None = None) -> list[str]:
    """``accelerate launch``'s arguments: the config file, then a flag for each setting the file leaves unset."""

    launcher = exp["launcher"]
    path = launcher.get("accelerate_config")
    file = _file(path)
    procs = int(launcher["processes"])
    where = machines(launcher, file, free_port=free_port)
    wanted = {"num_processes": procs, **where, "mixed_precision": launcher["precision"], "dynamo_backend": "no"}
    cmd = ["--config_file", path] if path else []
    for key, value in wanted.items():
        if key not in file and not (key == "dynamo_backend" and "dynamo_config" in file):
            cmd += [f"--{key}", str(value)]
    on_cpu = bool(launcher.get("cpu")) or not _has_gpu()
    if "distributed_type" not in file:
        if procs > 1:
            # torchrun via Accelerate's multi-process launcher; without CUDA the ranks use gloo.
            # (`--cpu` would select the single-process launcher.)
            cmd += ["--multi_gpu"]
        elif on_cpu:
            cmd += ["--cpu"]
    if on_cpu:  # the cores shared among the machine's processes, or what OMP_NUM_THREADS says (as torch itself reads it)
        per_node = max(1, procs // int(where["num_machines"] or 1))
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        cmd += ["--num_cpu_threads_per_process", threads if threads.isdigit() and int(threads) > 0 else str(max(1, (os.cpu_count() or 1) // per_node))]
    return cmd + (program or ["-m", "lbsearch.trial.worker", str(spec_file)])


def with_machines(exp: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """``exp`` with its machine settings resolved (``lbsearch.spec.accelerate_file``): written into the trial's
    spec.json, so that the other nodes (``lbsearch join``) start the same rendezvous."""

    launcher = exp["launcher"]
    return exp | {"launcher": launcher | machines(launcher, _file(launcher.get("accelerate_config")), env, free_port=free_port)}


def _file(path: str | None) -> dict[str, Any]:
    """What the accelerate config sets; {} when there is none, or when it cannot be read (``accelerate
    launch`` then fails the trial with the file's own error, in the trial's log)."""

    try:
        return read_config(path) if path else {}
    except ValueError:
        return {}


def resolve_precision(precision: str, cpu: bool, accelerate_config: str | None = None) -> str:
    """The precision a trial will run with; ``auto``: the accelerate config's ``mixed_precision`` where it
    sets one, else the fastest that the device supports."""
    if precision != "auto":
        return precision
    if accelerate_config:
        mp = _file(accelerate_config).get("mixed_precision")
        if mp in ("no", "bf16", "fp16"):
            return mp
    import torch

    if torch.cuda.is_available() and not cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # Without AVX512-BF16 / AMX, bf16 matmuls on CPU fall back to a path ~100x slower than fp32.
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


@functools.lru_cache(maxsize=1)
def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def run_trial_process(
    spec: "WorkerSpec",
    workdir: Path,
    *,
    on_line: Callable[[str], None] = lambda line: None,
    on_start: Callable[[int], None] = lambda pid: None,
    program: Callable[[Path], tuple[list[str], dict[str, str]]] | None = None,
    no_result: Callable[[int], "TrialResult | None"] = lambda code: None,
) -> "TrialResult":
    """Run the trial; return the worker's result (``state`` complete / pruned / failed).

    A worker that dies without a result gives ``failed`` (``_outcome``), unless ``no_result(exit code)`` gives a result.
    ``program(spec_file)``: what each rank runs and its extra environment (a script trial: the user's
    command, started in ``workdir``); default lbsearch's worker. KeyboardInterrupt (SIGINT, and SIGTERM which the
    CLI turns into it) stops the trial's process group within seconds and is re-raised.
    """

    workdir.mkdir(parents=True, exist_ok=True)
    result_file = workdir / RESULT_JSON
    exp = with_machines(spec.experiment)
    if int(exp["launcher"]["processes"]) % int(exp["launcher"]["num_machines"]):
        return TrialResult(state="failed", reason=f"`launcher.processes` ({exp['launcher']['processes']}, on all machines) must be "
                           f"divisible by the number of machines ({exp['launcher']['num_machines']}, from the environment)")
    if exp["launcher"]["machine_rank"] != 0:
        return TrialResult(state="failed", reason=f"this node is machine rank {exp['launcher']['machine_rank']}: a trial is "
                           "orchestrated from machine rank 0; run `lbsearch join` on the other nodes (docs/scale_out.md)")
    spec = spec.model_copy(update={"result": str(result_file), "watch_pid": os.getpid(), "experiment": exp})
    spec_file = workdir / SPEC_JSON
    spec_file.write_text(spec.model_dump_json(indent=1))
    result_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "0"))
    argv, extra = program(spec_file) if program else (None, {})
    cmd, env = trial_command(spec.experiment, spec_file, env | extra, argv)
    tail: deque[str] = deque(maxlen=100)  # two ranks' tracebacks and torchrun's summary
    with open(workdir / TRIAL_LOG, "w") as log:
        proc = standby.start(cmd, env, spec_file, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             cwd=workdir if program else None)  # inside standby.standby(): maybe forked from the standby process
        on_start(proc.pid)
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                tail.append(line)
                on_line(line)
            proc.wait()
        except BaseException:
            stop_group(proc, grace=grace_of(spec.experiment))  # time to write a checkpoint
            _drain(proc, log, on_line)  # what it said while stopping (its checkpoint, the metric rows up to it)
            raise
    return _outcome(proc, result_file, tail, no_result)


def _outcome(proc, result_file: Path, tail: "Iterable[str]", no_result: Callable[[int], "TrialResult | None"]) -> "TrialResult":
    """The result the worker wrote; else ``worker died`` (retried) where the standby process it was
    forked from died and took it along; else ``no_result``'s; else ``worker died`` where a signal killed
    it (the out-of-memory killer, a kill -9: re-run from its checkpoint, up to ``max_retries``); else a
    failure with its output's reason."""
    if result_file.is_file():
        return read_result(result_file)
    if getattr(proc, "launcher_died", False):
        return TrialResult(state="failed", reason=WORKER_DIED)
    fallback = no_result(proc.returncode)
    if fallback is not None:
        return fallback
    if proc.returncode is not None and proc.returncode < 0:  # killed by a signal (the out-of-memory killer, a kill -9): not its own error
        return TrialResult(state="failed", reason=WORKER_DIED)
    return TrialResult(state="failed", reason=f"worker exited with code {proc.returncode} without a result: {failure_reason(tail)[:400]}")


_EXCEPTION = re.compile(r"(?:^|\s)((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)\b: .+)")


def failure_reason(lines: "Iterable[str]") -> str:
    """The reason a worker died, from the end of its output: the last ``SomeError: message`` line of a
    traceback (any rank's, its ``[rankN]:`` prefix dropped), else the last line that mentions an error,
    else the last line. torchrun's own closing lines ("To enable traceback see: .../errors.html") mention
    errors but say nothing about this one, so they never win; nor does the interruption of the other
    ranks (``KeyboardInterrupt: SIGTERM``, which torchrun sends them once one has failed) where a rank
    printed an error of its own."""
    lines = [l.strip() for l in lines if l.strip() and "elastic/errors.html" not in l]
    found = [m.group(1) for line in lines if (m := _EXCEPTION.search(line))]
    errors = [f for f in found if not f.startswith("KeyboardInterrupt")]
    if found:
        return (errors or found)[-1]
    return next((l for l in reversed(lines) if "error" in l.lower()), lines[-1] if lines else "")


def _drain(proc: subprocess.Popen, log, on_line: Callable[[str], None], seconds: float = 2.0) -> None:
    """The output a stopped trial left in its pipe; a failure here never hides the interruption."""
    import select

    deadline = time.time() + seconds
    try:
        while time.time() < deadline and select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))[0]:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                return
            log.write(line)
            on_line(line.rstrip("\n"))
    except Exception:  # noqa: BLE001
        pass


