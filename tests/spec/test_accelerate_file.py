"""An Accelerate config file is the user's: the launch command adds only what it leaves unset, and
the machine settings follow file > spec > scheduler environment > default. Commands are checked
as Accelerate's own `accelerate launch` parser reads them."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import SPECS

from lbsearch.orchestrator.launch import launch_command, with_machines
from lbsearch.spec import SPEC_JSON, LauncherConfig
from lbsearch.spec.accelerate_file import file_conflict, machines, read_config

FSDP = SPECS / "accelerate_fsdp.yaml"
SCHEDULER_VARS = ("SLURM_NNODES", "SLURM_NODEID", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch):
    for name in (*SCHEDULER_VARS, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


def _threads(per_node: int) -> str:
    return str(max(1, (os.cpu_count() or 1) // per_node))


def _parsed(cmd: list[str]):
    """What `accelerate launch` makes of the command (its own parser and config-file merge)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    return _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))[0]


def test_fsdp_file_is_not_overridden(tmp_path):
    spec = tmp_path / SPEC_JSON
    exp = {"launcher": {"processes": 2, "precision": "no", "cpu": True, "accelerate_config": str(FSDP), "main_process_port": 29555}}
    cmd = launch_command(exp, spec)
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP), "--num_machines", "1",
                   "--machine_rank", "0", "--main_process_ip", "127.0.0.1", "--main_process_port", "29555", "--dynamo_backend", "no",
                   "--num_cpu_threads_per_process", _threads(2), "-m", "lbsearch.trial.worker", str(spec)]
    for key in read_config(FSDP):  # nothing the file sets is passed as a flag
        assert f"--{key}" not in cmd
    args = _parsed(cmd)
    assert args.use_fsdp and not args.multi_gpu and str(args.fsdp_version) == "2" and args.num_processes == 2


@pytest.mark.parametrize(("omp", "threads"), [("3", "3"), ("", None), ("0", None), ("many", None)])
def test_omp_num_threads_where_set_is_each_processs_thread_count(tmp_path, monkeypatch, omp, threads):
    """Tests in parallel or two studies on one machine set it; unset (or not a count), the cores are shared among the processes."""
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    exp = {"launcher": {"processes": 2, "precision": "no", "cpu": True, "main_process_port": 29555}}
    cmd = launch_command(exp, tmp_path / SPEC_JSON)
    assert cmd[cmd.index("--num_cpu_threads_per_process") + 1] == (threads or _threads(2))
    assert _parsed(cmd).num_cpu_threads_per_process == int(threads or _threads(2))


def test_a_file_that_sets_everything_gets_no_flags(tmp_path):
    full = tmp_path / "full.yaml"
    full.write_text(FSDP.read_text() + "num_machines: 1\nmachine_rank: 0\nmain_process_ip: 127.0.0.2\nmain_process_port: 29001\n"
                    "dynamo_config: {dynamo_backend: EAGER}\n")
    exp = {"launcher": {"processes": 2, "precision": "no", "cpu": True, "accelerate_config": str(full)}}
    cmd = launch_command(exp, tmp_path / SPEC_JSON)
    assert cmd[3:] == ["--config_file", str(full), "--num_cpu_threads_per_process", _threads(2), "-m", "lbsearch.trial.worker",
                       str(tmp_path / SPEC_JSON)]
    args = _parsed(cmd)
    assert (args.main_process_ip, args.main_process_port, args.dynamo_backend) == ("127.0.0.2", 29001, "EAGER")


def test_multi_node_spec(tmp_path):
    spec = tmp_path / SPEC_JSON
    exp = {"launcher": {"processes": 4, "precision": "bf16", "cpu": True, "num_machines": 2, "machine_rank": 1,
                        "main_process_ip": "10.0.0.7", "main_process_port": 29555}}
    cmd = launch_command(exp, spec)
    assert cmd[3:] == ["--num_processes", "4", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.7",
                       "--main_process_port", "29555", "--mixed_precision", "bf16", "--dynamo_backend", "no", "--multi_gpu",
                       "--num_cpu_threads_per_process", _threads(2), "-m", "lbsearch.trial.worker", str(spec)]
    args = _parsed(cmd)
    assert (args.num_machines, args.machine_rank, args.main_process_ip, args.main_process_port) == (2, 1, "10.0.0.7", 29555)


def test_machines_precedence_file_spec_environment_default():
    slurm = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "NNODES": "9", "NODE_RANK": "9", "MASTER_ADDR": "n0", "MASTER_PORT": "29400"}
    assert machines({}, {}, {}, lambda: 1234) == {"num_machines": 1, "machine_rank": 0, "main_process_ip": "127.0.0.1", "main_process_port": 1234}
    assert machines({}, {}, slurm) == {"num_machines": 4, "machine_rank": 2, "main_process_ip": "n0", "main_process_port": 29400}
    torchrun = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29401"}
    assert machines({}, {}, torchrun) == {"num_machines": 2, "machine_rank": 1, "main_process_ip": "n1", "main_process_port": 29401}
    spec = {"num_machines": 2, "main_process_port": 29500}
    assert machines(spec, {}, slurm) == {"num_machines": 2, "machine_rank": 2, "main_process_ip": "n0", "main_process_port": 29500}
    assert machines(spec, {"main_process_port": 29600, "machine_rank": 1}, slurm)["main_process_port"] == 29600
    # one machine: a node rank in the environment (a worker per node of an allocation) is not this trial's
    assert machines({"num_machines": 1}, {}, slurm)["machine_rank"] == 0


def test_spec_json_carries_the_resolved_machines(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.9")
    exp = with_machines({"launcher": {"processes": 2, "num_machines": 2}})
    assert exp["launcher"]["main_process_ip"] == "10.0.0.9" and exp["launcher"]["machine_rank"] == 0
    assert isinstance(exp["launcher"]["main_process_port"], int)


def test_conflicts_between_spec_and_file(tmp_path):
    fsdp = read_config(FSDP)
    def launcher(**fields):  # a whole launcher section, as the spec's check passes it
        return LauncherConfig(**fields).model_dump()

    assert file_conflict(launcher(processes=2, precision="auto"), fsdp) is None
    assert file_conflict(launcher(processes=2, precision="bf16"), fsdp)[0] == "precision"
    assert file_conflict(launcher(processes=4), fsdp)[0] == "processes"
    assert file_conflict(launcher(processes=2, num_machines=2), {"num_machines": 1})[0] == "num_machines"
    assert file_conflict(launcher(processes=2), {"distributed_type": "NO"})[0] == "processes"
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        read_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text(FSDP.read_text() + "num_proceses: 2\n")
    with pytest.raises(ValueError, match=r"unknown keys \(\['num_proceses'\]\)"):
        read_config(tmp_path / "typo.yaml")


def test_auto_precision_is_the_files():
    from lbsearch.orchestrator.launch import resolve_precision

    bf16 = SPECS / "accelerate_fsdp.yaml"
    assert resolve_precision("auto", True, str(bf16)) == "no"  # the file's mixed_precision
    assert resolve_precision("fp16", True, str(bf16)) == "fp16"


def test_a_dead_workers_reason_is_its_exception_not_torchruns_epilogue():
    """The tail of a 2-rank trial that raised in both ranks: torchrun's ChildFailedError summary comes last
    and says "error" too, but the reason is the ranks' own exception."""
    from lbsearch.orchestrator.launch import failure_reason

    tail = ["[rank1]: Traceback (most recent call last):",
            '[rank1]:   File "/x/lbsearch/trial/distributed.py", line 40, in make_accelerator',
            "[rank1]: RuntimeError: FSDP version 1 cannot run on CPU: Accelerate refuses it",
            "E1127 04:12:01.123000 123 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1) local_rank: 0",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
            "============================================================",
            "lbsearch.trial.worker FAILED",
            "Failures:",
            "  time      : 2026-11-27_04:12:01",
            "  exitcode  : 1 (pid: 123)",
            "  error_file: <N/A>",
            "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
            "============================================================"]
    assert failure_reason(tail) == "RuntimeError: FSDP version 1 cannot run on CPU: Accelerate refuses it"
    # the other rank, stopped by torchrun, may print its interruption last: the failing rank's error still wins
    stopped = ["[rank0]: Traceback (most recent call last):", "[rank0]: KeyboardInterrupt: SIGTERM"]
    assert failure_reason(tail[:3] + stopped + tail[3:]) == "RuntimeError: FSDP version 1 cannot run on CPU: Accelerate refuses it"
    assert failure_reason(["step 3", *stopped]) == "KeyboardInterrupt: SIGTERM"  # interrupted alone: that is the reason
    assert failure_reason(["loading", "Killed"]) == "Killed"
    assert failure_reason(["step 3", "CUDA error: out of memory"]) == "CUDA error: out of memory"
    assert failure_reason([]) == ""
