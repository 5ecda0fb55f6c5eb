"""Checkpoints and resume through the real CLI and worker: a trial killed (SIGKILL, after its second
checkpoint) or stopped (SIGTERM, a checkpoint written on the signal) is re-run from its checkpoint,
and the re-run's per-step loss after the resume point, its final validation and test metrics and its
intermediate values equal those of an uninterrupted run of the same params, bit for bit (CPU)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import SPECS, journal_study, mlflow_client, run_cli, start_cli, wait_for, worker_pids
from optuna.trial import TrialState

from lbsearch.spec import EVAL, FOLDER, INTERRUPTED, PREFIX, TEST, TRAIN_LOSS, TRIALS, VAL, WORKER_DIED, checkpoint_name
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import RESUMED_FROM_RUN, RESUMED_FROM_STEP, RESUMED_FROM_TRIAL, RETRY_OF

# B = 32 fixed, 60 steps, an evaluation every 10 steps; the lr is TPE's first draw (seeded), the same in every folder
SETS = ["--set=n_trials=1", "--set=search_space.train.batch_size.choices=[32]", "--set=experiment.train.budget_samples=1920",
        "--set=experiment.train.eval_every_samples=320"]
EVERY_320 = "--set=experiment.train.checkpoint_every_samples=320"


def _trial(root: Path, number: int):
    """(Optuna trial, its MLflow run, {metric key: [(step, value)]}) of trial ``number``."""
    trial = journal_study(root, "tiny-study").get_trials()[number]
    client = mlflow_client(root)
    run = client.get_run(trial.user_attrs[RUN_ID])
    history = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
               for k in run.data.metrics if k.startswith((TRAIN_LOSS, EVAL, VAL, TEST))}
    return trial, run, history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same study, never interrupted (checkpoints every 320 samples: writing them changes nothing)."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    run_cli("run", str(SPECS / "tiny_study.yaml"), *SETS, EVERY_320, cwd=cwd, check=True)
    return _trial(cwd / "mlruns", 0)


def _assert_resumed_exactly(root: Path, uninterrupted, out: str, at_least: int) -> int:
    base_trial, base_run, base = uninterrupted
    trials = journal_study(root, "tiny-study").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], out
    retry, run, hist = _trial(root, 1)
    assert retry.params == trials[0].params == base_trial.params
    step = retry.user_attrs[RESUMED_FROM["step"]]
    assert at_least <= step < 60 and retry.user_attrs[RESUMED_FROM["trial"]] == 0
    assert f"[trial 1] resumes trial 0 from its checkpoint at step {step} ({step * 32} samples)" in out
    assert f"resumed from checkpoint at step {step}" in out
    tags = run.data.tags
    assert (tags[RESUMED_FROM_STEP], tags[RESUMED_FROM_TRIAL], tags[RETRY_OF]) == (str(step), "0", "0")
    assert tags[RESUMED_FROM_RUN] == trials[0].user_attrs[RUN_ID]
    # bit for bit: the per-step loss after the resume point, every evaluation, the final validation and test metrics
    after = [(s, v) for s, v in hist[TRAIN_LOSS] if s > step * 32]  # metrics are at samples seen
    assert len(after) == 60 - step and after == [(s, v) for s, v in base[TRAIN_LOSS] if s > step * 32]
    assert set(hist) == set(base) and all(hist[k] == base[k] for k in hist if not k.startswith("train/"))
    assert [p for p in hist[TRAIN_LOSS] if p[0] <= step * 32] == [p for p in base[TRAIN_LOSS] if p[0] <= step * 32]  # carried over from trial 0
    assert retry.value == base_trial.value and retry.user_attrs["test_accuracy"] == base_trial.user_attrs["test_accuracy"]
    assert retry.intermediate_values == base_trial.intermediate_values  # the pruner sees one curve
    assert not list(root.glob(f"{TRIALS}/*/*/{FOLDER}"))  # a finished trial leaves no checkpoint
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("tiny-study")
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp.experiment_id]))
    return step


def test_sigkilled_trial_resumes_from_its_second_checkpoint_exactly(tmp_path, specs, uninterrupted):
    spec = str(specs / "tiny_study.yaml")
    proc = start_cli(tmp_path, "run", spec, *SETS, EVERY_320)
    wait_for(proc, "[trial 0] checkpoint at step 20 (640 samples)", timeout=300)
    proc.kill()  # the machine dies: the orchestrator and the trial process at once, no handler runs
    for pid in worker_pids(tmp_path):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    root = tmp_path / "mlruns"
    assert journal_study(root, "tiny-study").get_trials()[0].state == TrialState.RUNNING
    assert list(root.glob(f"{TRIALS}/tiny-study/0000-*/{FOLDER}/{PREFIX}*"))
    again = run_cli("run", spec, *SETS, EVERY_320, cwd=tmp_path, check=True)
    trials = journal_study(root, "tiny-study").get_trials()
    assert trials[0].user_attrs["reason"] == WORKER_DIED
    _assert_resumed_exactly(root, uninterrupted, again.stdout, at_least=20)


def test_a_trial_process_killed_under_a_living_study_is_re_run_there_from_its_checkpoint(tmp_path, specs, uninterrupted):
    """The out-of-memory killer (or a kill -9) takes the trial process alone: the same `lbsearch run`
    fails it as `worker died` and re-runs it from its checkpoint, exactly; before, it failed for good
    (`worker exited with code -9 without a result`) and its checkpoint was deleted."""
    proc = start_cli(tmp_path, "run", str(specs / "tiny_study.yaml"), *SETS, EVERY_320)
    seen = wait_for(proc, "[trial 0] checkpoint at step 20 (640 samples)", timeout=300)
    (pid,) = worker_pids(tmp_path)
    os.kill(pid, signal.SIGKILL)
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, rest
    assert f"[trial 0] failed ({WORKER_DIED})" in rest
    assert journal_study(tmp_path / "mlruns", "tiny-study").get_trials()[0].user_attrs["reason"] == WORKER_DIED
    _assert_resumed_exactly(tmp_path / "mlruns", uninterrupted, "".join(seen) + rest, at_least=20)


def test_sigterm_writes_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, specs, uninterrupted):
    spec = str(specs / "tiny_study.yaml")
    proc = start_cli(tmp_path, "run", spec, *SETS)  # no periodic checkpoints: the trial is short
    seen = wait_for(proc, "[trial 0] samples 640", timeout=300)
    assert not any("checkpoint at step" in line for line in seen)  # none in a short trial (train.checkpoint_every_minutes, named in tiny.yaml)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)  # a scheduler's pre-emption
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and time.time() - t0 < 15, rest
    assert "on SIGTERM" in rest and "interrupted; run the same command again to resume" in rest
    root = tmp_path / "mlruns"
    trials = journal_study(root, "tiny-study").get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == INTERRUPTED
    (ckpt,) = root.glob(f"{TRIALS}/tiny-study/0000-*/{FOLDER}/{PREFIX}*")
    again = run_cli("run", spec, *SETS, cwd=tmp_path, check=True)
    step = _assert_resumed_exactly(root, uninterrupted, again.stdout, at_least=20)
    assert ckpt.name == checkpoint_name(step)


def test_time_based_checkpoints_and_a_train_run_leaves_none(tmp_path):
    proc = run_cli("train", str(SPECS / "tiny.yaml"), "--set=train.checkpoint_every_minutes=0.0002", "--set=train.budget_samples=320",
                   "--set=train.eval_every_samples=320", cwd=tmp_path, check=True)
    assert "[train] checkpoint at step" in proc.stdout  # every 12 ms of training: after most steps
    assert not list((tmp_path / "mlruns").glob(f"{TRIALS}/**/{FOLDER}"))


def test_a_checkpoint_that_cannot_be_written_costs_only_itself(tmp_path, uninterrupted):
    """A full disk while writing one checkpoint (injected at step 20): the trial says so and trains on
    to the same result as a trial never troubled; before, the trial failed for good and lost the rest."""
    env = dict(os.environ, LBSEARCH_INJECT_CHECKPOINT_ERROR_AT="20")
    out = run_cli("run", str(SPECS / "tiny_study.yaml"), *SETS, EVERY_320, cwd=tmp_path, env=env, check=True).stdout
    assert "checkpoint at step 20 not written (OSError: [Errno 28] No space left on device (injected at step 20))" in out
    assert "checkpoint at step 30 (960 samples)" in out  # the next one is written
    trial, _, hist = _trial(tmp_path / "mlruns", 0)
    base_trial, _, base = uninterrupted
    assert trial.state == TrialState.COMPLETE and trial.value == base_trial.value
    assert hist[TRAIN_LOSS] == base[TRAIN_LOSS]
    assert not list((tmp_path / "mlruns").rglob(f".tmp-{PREFIX}*"))
