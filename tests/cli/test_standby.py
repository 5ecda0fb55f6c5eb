"""The standby process (``lbsearch.orchestrator.standby``): a study's trials are forked from one process that
did the imports once. A forked trial stops as a started one on SIGTERM, and nothing is left behind
after a stop or the standby's death. (That every trial of a study is forked from one standby process,
which ends with the study, that a forked trial trains bit for bit as a started one (``reproduce``),
and that a killed orchestrator leaves no process: ``tests/cli/test_study_run.py``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SPECS, journal_study, mlflow_client, run_cli, start_cli, wait_for, worker_pids
from optuna.trial import TrialState

from lbsearch.orchestrator import standby
from lbsearch.spec import INTERRUPTED, RETRY_OF_ATTR, SPEC_JSON, TRIALS, WORKER_DIED
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import START

STUDY = str(SPECS / "tiny_study.yaml")
SETS = ["--set=pruner.name=none"]  # every trial complete, so each can be reproduced


def _gone(under: Path, seconds: float = 30) -> bool:
    deadline = time.time() + seconds
    while worker_pids(under) and time.time() < deadline:
        time.sleep(0.2)
    return not worker_pids(under)


def test_sigterm_stops_a_forked_trial_as_a_started_one(tmp_path):
    proc = start_cli(tmp_path, "run", STUDY, *SETS, "--set=experiment.train.budget_samples=1920")
    wait_for(proc, "[trial 0] samples 320", timeout=300)  # trial 0 is forked
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, rest
    assert "on SIGTERM" in rest  # the forked trial wrote its checkpoint, as a started one does
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == INTERRUPTED
    run = mlflow_client(tmp_path / "mlruns").get_run(trials[0].user_attrs[RUN_ID])
    assert run.data.tags[START].startswith("forked") and run.info.status == "KILLED"
    assert _gone(tmp_path, 10)


def _standby_pid(under: Path) -> int:
    """The standby process of the study under ``under`` (the worker command with the standby flag)."""
    for pid in worker_pids(under):
        if b"--standby" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return pid
    raise AssertionError("no standby process")


def test_a_trial_lost_with_its_standby_process_is_re_run_from_its_checkpoint(tmp_path):
    """The out-of-memory killer picks the standby process: the trial forked from it dies too. It is
    failed as "worker died" (a launcher's death, retried), its checkpoint kept, and re-run from there."""
    proc = start_cli(tmp_path, "run", STUDY, *SETS, "--set=n_trials=2", "--set=experiment.train.budget_samples=1920",
                     "--set=experiment.train.checkpoint_every_samples=320")
    wait_for(proc, "[trial 1] checkpoint at step", timeout=300)  # trial 1 is forked and has a checkpoint
    pid = _standby_pid(tmp_path)
    # it asks NVML, not the CUDA driver, whether a GPU is there: a GPU trial forked from it may initialise CUDA
    assert b"PYTORCH_NVML_BASED_CUDA_CHECK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    os.kill(pid, signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], out
    assert trials[1].user_attrs["reason"] == WORKER_DIED
    assert trials[2].user_attrs[RETRY_OF_ATTR] == 1 and trials[2].user_attrs[RESUMED_FROM["step"]] > 0, out
    assert _gone(tmp_path, 10)


def test_a_trial_that_cannot_be_forked_starts_as_before(tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="True")
    spec = tmp_path / SPEC_JSON
    with standby.standby():
        proc = standby.start([sys.executable, "-c", "print('hello')"], env, spec, stdout=subprocess.PIPE, text=True)
        assert isinstance(proc, subprocess.Popen) and proc.communicate(timeout=60)[0] == "hello\n"
        assert standby._servers == {}  # not the worker: no standby process
    worker = [sys.executable, "-m", "lbsearch.trial.worker", str(spec)]
    assert standby._key(worker, env, spec) is not None
    assert standby._key(worker, env | {"ACCELERATE_USE_CPU": "False"}, spec) not in (None, standby._key(worker, env, spec))  # a GPU trial: its own
    assert standby._key([sys.executable, "-m", "accelerate.commands.launch", *worker[1:]], env, spec) is None


def test_no_standby_starts_every_trial_as_a_new_process(tmp_path):
    run_cli("run", STUDY, *SETS, "--set=n_trials=2", "--no-standby", cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    client = mlflow_client(root)
    runs = [client.get_run(t.user_attrs[RUN_ID]) for t in journal_study(root, "tiny-study").get_trials()]
    assert [r.data.tags[START] for r in runs] == ["launched", "launched"]


def test_trials_of_two_precisions_keep_a_standby_process_each(tmp_path):
    grid = ["--set=search_space={launcher.precision: {type: categorical, choices: ['no', 'bf16']}, "
            "optimizer.lr: {type: categorical, choices: [0.001, 0.002]}}",
            "--set=sampler={name: grid}", "--set=n_trials=4", "--set=experiment.train.budget_samples=320"]
    run_cli("run", STUDY, *SETS, *grid, cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    client = mlflow_client(root)
    trials = journal_study(root, "tiny-study").get_trials()
    starts: dict[str, list[str]] = {}
    for t in trials:
        starts.setdefault(t.params["launcher.precision"], []).append(client.get_run(t.user_attrs[RUN_ID]).data.tags[START])
    assert sorted(starts) == ["bf16", "no"] and all(len(s) == 2 for s in starts.values())  # the grid: each precision twice
    assert all(s[0].startswith("forked from standby process ") and s[1] == s[0] for s in starts.values())
    assert starts["bf16"][1] != starts["no"][1]  # one standby process per environment, both kept
    assert _gone(tmp_path, 5)


def test_a_standby_process_that_cannot_fork_says_why_once_and_its_trials_start_anew(tmp_path):
    site = tmp_path / "site"  # every process of this environment starts a thread of its own, the standby process too
    site.mkdir()
    (site / "sitecustomize.py").write_text("import threading, time\n"
                                           "threading.Thread(target=time.sleep, args=(600,), name='leftover-loader', daemon=True).start()\n")
    env = dict(os.environ, ACCELERATE_USE_CPU="True", PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    spec = tmp_path / TRIALS / "s" / "0000" / SPEC_JSON
    spec.parent.mkdir(parents=True)
    said: list[str] = []
    with standby.standby(said.append):
        for _ in range(2):
            proc = standby.start([sys.executable, "-m", "lbsearch.trial.worker", str(spec)], env, spec, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            assert isinstance(proc, subprocess.Popen)  # started anew, not forked
            proc.communicate(timeout=120)  # (no spec there: the worker fails; only how it started matters here)
    assert len(said) == 1, said  # said once, not per trial
    assert "cannot fork trials (a Python thread runs in it (leftover-loader)): this study's trials start as new processes" in said[0]
