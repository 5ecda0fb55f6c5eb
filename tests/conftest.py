"""Shared helpers: real CLI runs on a tiny random-init BERT with the real tokenizer and reviews, and
read-back of what they leave (the Optuna journal, the MLflow store, trial processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

SPECS = Path(__file__).parent / "specs"
LBSEARCH = [sys.executable, "-m", "lbsearch.cli"]


def run_cli(*args: str, cwd: Path, timeout: float = 600, check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real ``lbsearch`` CLI in a subprocess; state goes under ``cwd/mlruns``."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*LBSEARCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"lbsearch {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _default_sigint() -> None:
    # A test run started in the background (`cmd &` in a script, nohup) hands its children SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: the CLI gets Ctrl-C as a terminal would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the CLI in the background, its output on a pipe (read it with ``wait_for``)."""
    return subprocess.Popen([*LBSEARCH, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"), preexec_fn=_default_sigint)


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """Read ``proc``'s output until a line contains ``text``; the lines read."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen:\n{''.join(seen)}")


def journal_study(root: Path, name: str) -> optuna.Study:
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def runs_of(root: Path, experiment: str, role: str | None = None) -> list:
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if role is None or r.data.tags.get("lbsearch.role") == role]


def worker_pids(under: Path, rank: int | None = None) -> list[int]:
    """Trial processes whose spec lies under ``under`` (so parallel test runs do not interfere)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lbsearch.trial.worker" in cmd and any(str(under).encode() in c for c in cmd) and (rank is None or f"RANK={rank}".encode() in env):
            pids.append(int(proc.name))
    return pids


def tree(root: Path) -> dict[str, int]:
    """Every file under root with its size: to check that nothing was written."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    """A private copy of the test specs (tests may edit them)."""
    dst = tmp_path / "specs"
    shutil.copytree(SPECS, dst)
    return dst
