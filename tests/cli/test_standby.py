"""The standby process (``lbsearch.orchestrator.standby``): a study's later trials are forked from one process that
did the imports once. A forked trial trains bit for bit as a started one, stops as one on SIGTERM, and
nothing is left behind: after the study, after a stop, and after the orchestrator is killed."""

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

STUDY = str(SPECS / "tiny_study.yaml")
SETS = ["--set=pruner.name=none"]  # every trial complete, so each can be reproduced


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _gone(under: Path, seconds: float = 30) -> bool:
    deadline = time.time() + seconds
    while worker_pids(under) and time.time() < deadline:
        time.sleep(0.2)
    return not worker_pids(under)


def test_later_trials_are_forked_from_one_standby_process_and_train_as_started_ones(tmp_path):
    run_cli("run", STUDY, *SETS, cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    client = mlflow_client(root)
    trials = journal_study(root, "tiny-study").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials]
    starts = [r.data.tags["lbsearch.start"] for r in runs]
    assert starts[0].startswith("forked from standby process ") and starts[2] == starts[1] == starts[0]  # one standby process, all trials
    assert _gone(tmp_path, 5)  # the standby process ended with the study

    again = run_cli("reproduce", "tiny-study", "--trial", "1", cwd=tmp_path, check=True).stdout
    assert "reproduced: metrics identical" in again  # a started process, against the forked one
    (rerun,) = [r for r in client.search_runs([runs[1].info.experiment_id]) if r.data.tags.get("lbsearch.role") == "reproduce"]
    assert rerun.data.tags["lbsearch.start"] == "launched"
    for key in ("train/loss", "train/grad_norm", "eval/loss", "eval/accuracy"):
        assert _history(client, rerun.info.run_id, key) == _history(client, runs[1].info.run_id, key), key


def test_sigterm_stops_a_forked_trial_as_a_started_one(tmp_path):
    proc = start_cli(tmp_path, "run", STUDY, *SETS, "--set=experiment.train.budget_samples=1920")
    wait_for(proc, "[trial 1] samples 320", timeout=300)  # trial 1 is forked
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and time.time() - t0 < 15, rest
    assert "on SIGTERM" in rest  # the forked trial wrote its checkpoint, as a started one does
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["reason"] == "interrupted"
    run = mlflow_client(tmp_path / "mlruns").get_run(trials[1].user_attrs["mlflow_run_id"])
    assert run.data.tags["lbsearch.start"].startswith("forked") and run.info.status == "KILLED"
    assert _gone(tmp_path, 10)


def test_a_killed_orchestrator_leaves_no_standby_process_nor_forked_trial(tmp_path):
    proc = start_cli(tmp_path, "run", STUDY, *SETS, "--set=experiment.train.budget_samples=9600")
    wait_for(proc, "[trial 1] samples 320", timeout=300)  # a forked trial is training
    assert len(worker_pids(tmp_path)) == 2  # the standby process and the trial forked from it
    proc.kill()  # the orchestrator dies; no handler runs
    proc.wait(timeout=10)
    assert _gone(tmp_path, 30)  # the standby process sees its socket close, the trial its orchestrator die


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
    os.kill(_standby_pid(tmp_path), signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], out
    assert trials[1].user_attrs["reason"] == "worker died"
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].user_attrs["resumed_from_step"] > 0, out
    assert _gone(tmp_path, 10)


def test_a_trial_that_cannot_be_forked_starts_as_before(tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="True")
    spec = tmp_path / "spec.json"
    with standby.standby():
        proc = standby.start([sys.executable, "-c", "print('hello')"], env, spec, stdout=subprocess.PIPE, text=True)
        assert isinstance(proc, subprocess.Popen) and proc.communicate(timeout=60)[0] == "hello\n"
        assert standby._servers == {}  # not the worker: no standby process
    worker = [sys.executable, "-m", "lbsearch.trial.worker", str(spec)]
    assert standby._key(worker, env, spec) is not None
    assert standby._key(worker, env | {"ACCELERATE_USE_CPU": "False"}, spec) is None  # a GPU trial never forks
    assert standby._key([sys.executable, "-m", "accelerate.commands.launch", *worker[1:]], env, spec) is None


def test_no_standby_starts_every_trial_as_a_new_process(tmp_path):
    run_cli("run", STUDY, *SETS, "--set=n_trials=2", "--no-standby", cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    client = mlflow_client(root)
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in journal_study(root, "tiny-study").get_trials()]
    assert [r.data.tags["lbsearch.start"] for r in runs] == ["launched", "launched"]


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
        starts.setdefault(t.params["launcher.precision"], []).append(client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["lbsearch.start"])
    assert sorted(starts) == ["bf16", "no"] and all(len(s) == 2 for s in starts.values())  # the grid: each precision twice
    assert all(s[0].startswith("forked from standby process ") and s[1] == s[0] for s in starts.values())
    assert starts["bf16"][1] != starts["no"][1]  # one standby process per environment, both kept
    assert _gone(tmp_path, 5)
