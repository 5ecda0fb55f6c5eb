"""Shared helpers: real CLI runs on a tiny random-init BERT with the real tokenizer and reviews, and
read-back of what they leave (the Optuna journal, the MLflow store, trial processes).

``run_cli`` and ``start_cli`` start the real CLI as a process (commands that train); ``cli`` calls its
``main`` in this process with captured output (read-only commands: status, best, report, predict).
Every CLI run's ``mlruns/cache`` starts with the tokenized data and CPU peak measurements that earlier
runs of this session prepared (``_seed``, ``_harvest``): the cache's own behaviour is tested in
``tests/data`` and ``tests/trial/test_flops.py``, not once more in each end-to-end test."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from itertools import chain
from pathlib import Path

import optuna
import pytest

from lbsearch.cli.main import main as lbsearch_main
from lbsearch.spec import data_cache_dir
from lbsearch.tracking import ROLE

SPECS = Path(__file__).parent / "specs"
LBSEARCH = [sys.executable, "-m", "lbsearch.cli"]

SETTLED = {"data": {"validation_fraction": 0.1, "test_fraction": 0.15, "split_seed": 0, "mlm_probability": 0.15},
           "model": {"freeze_embeddings": False, "gradient_checkpointing": False},
           "optimizer": {"name": "adamw", "lr_scaling": "none", "reference_batch_size": 32, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                         "fused": True},
           "train": {"clip_norm": 1.0, "divergence_factor": 4.0, "log_every_steps": 10, "noise_scale": True, "noise_scale_every": 4, "noise_scale_ema": 0.9,
                     "checkpoint_on_stop": True},
           "launcher": {"processes": 1, "pack": True}}
"""The settings a test experiment's numbers and messages depend on, named rather than left to the defaults (tests/specs/tiny.yaml
names them for its classifier; tests/shifted/shift.py shifts every default): ``settled`` fills them in where an experiment leaves them out."""


def settled(exp: dict) -> dict:
    """``exp`` (an experiment as a dict) with ``SETTLED`` under each section it sets itself."""
    return exp | {k: v | exp.get(k, {}) for k, v in SETTLED.items()}


_SHARED_CACHE: list[Path] = []  # this test session's folder of prepared cache entries (all xdist workers share it)
_SHARED_KINDS = ("data-*", "peak-*.json")  # never probe-*: whether a probe ran is what some tests check


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory, worker_id):
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if worker_id != "master" else base) / "shared-cache"
    folder.mkdir(exist_ok=True)
    _SHARED_CACHE[:] = [folder]


def _seed(root: Path) -> None:
    """Copy the session's prepared cache entries into ``root``'s cache folder (those not there yet)."""
    for src in chain(*(_SHARED_CACHE[0].glob(k) for k in _SHARED_KINDS)) if _SHARED_CACHE else ():
        dst = data_cache_dir(root) / src.name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)


def _harvest(root: Path) -> None:
    """Keep the cache entries a run prepared for the runs after it (each lands whole, by rename)."""
    for src in chain(*(data_cache_dir(root).glob(k) for k in _SHARED_KINDS)) if _SHARED_CACHE else ():
        dst = _SHARED_CACHE[0] / src.name
        if dst.exists() or ".tmp" in src.name:
            continue
        tmp = dst.with_name(f".{src.name}.{os.getpid()}")
        shutil.copytree(src, tmp) if src.is_dir() else shutil.copy2(src, tmp)
        try:
            os.rename(tmp, dst)
        except OSError:  # another worker's copy landed first
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def run_cli(*args: str, cwd: Path, timeout: float = 600, check: bool = False, env: dict[str, str] | None = None,
            seed: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``lbsearch`` CLI in a subprocess; state goes under ``cwd/mlruns``. ``seed=False``: no
    prepared cache entries first (a test that checks that nothing is written)."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    if seed:
        _seed(Path(cwd) / "mlruns")
    proc = subprocess.run([*LBSEARCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    _harvest(Path(cwd) / "mlruns")
    if check and proc.returncode != 0:
        raise AssertionError(f"lbsearch {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def cli(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    """Run a command through the CLI's ``main`` in this process, its output captured: what ``run_cli``
    gives, without a process start. For read-only commands (status, best, report, predict, a refused
    spec), and for ``train`` inside the ``standby_process`` fixture (each trial forked from it)."""
    out, err = io.StringIO(), io.StringIO()
    before, on_term = os.getcwd(), signal.getsignal(signal.SIGTERM)
    os.chdir(cwd)
    _seed(Path(cwd) / "mlruns")
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = lbsearch_main(list(args))
            except SystemExit as exit_:  # argparse's refusals
                code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    finally:
        _harvest(Path(cwd) / "mlruns")
        os.chdir(before)
        signal.signal(signal.SIGTERM, on_term)
    proc = subprocess.CompletedProcess(["lbsearch", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"lbsearch {' '.join(args)} exited {code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _default_sigint() -> None:
    # A test run started in the background (`cmd &` in a script, nohup) hands its children SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: the CLI gets Ctrl-C as a terminal would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(cwd: Path, *args: str, env: dict[str, str] | None = None, seed: bool = True) -> subprocess.Popen:
    """Start the CLI in the background, its output on a pipe (read it with ``wait_for``). ``seed=False``:
    no prepared cache entries first (workers that race to prepare the data)."""
    if seed:
        _seed(Path(cwd) / "mlruns")
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
    return [r for r in runs if role is None or r.data.tags.get(ROLE) == role]


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


@pytest.fixture(scope="module")
def standby_process():
    """Trials that ``cli`` starts in this module are forked from one standby process (the imports once)."""
    from lbsearch.orchestrator.standby import standby

    with standby():
        yield


def pytest_terminal_summary(terminalreporter) -> None:
    """Always say how many tests skipped, and why: on a machine like CI's (PostgreSQL, Chromium) none should."""
    skipped = terminalreporter.stats.get("skipped", [])
    terminalreporter.write_line(f"lbsearch tests: {len(skipped)} skipped")
    for report in skipped:
        terminalreporter.write_line(f"  skipped {report.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr}")


@pytest.fixture(autouse=True)
def fresh_accelerator():
    """Accelerate's process-wide state reset after every test that imported it in this process: a test that built an
    Accelerator (an in-process trial, a benchmark's replayed cell) leaves its precision there, and the next test's
    Accelerator with another precision would refuse to start on the same pytest worker."""
    yield
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
        state.GradientState._reset_state()


def prepare_once(tmp_path_factory, name: str, exp):
    """``exp``'s tokenized data, for a module's in-process trials (from the session's cache when another test prepared it)."""
    from lbsearch.data import prepare_data

    root = tmp_path_factory.mktemp(name) / "mlruns"
    _seed(root)
    data = prepare_data(exp, data_cache_dir(root))
    _harvest(root)
    return data


def worker_spec(prepared, exp, **fields):
    """The ``WorkerSpec`` the orchestrator would hand a trial of ``exp`` on ``prepared`` data (``fields``: the rest, e.g. ``checkpoint_dir``)."""
    from lbsearch.spec import WorkerSpec

    return WorkerSpec(experiment=exp.model_dump(mode="json"), data_path=str(prepared.path), num_labels=prepared.num_labels,
                      pad_id=prepared.pad_id, vocab_size=prepared.vocab_size, labels=prepared.labels, **fields)


def in_process_trial(prepared, exp, tracking: bool = True):
    """A ``Trial`` (the trial process's training state) built in this process on ``prepared`` data, quiet."""
    from lbsearch.trial.worker import Trial

    return Trial(worker_spec(prepared, exp, tracking=tracking), log=lambda *a: None)
