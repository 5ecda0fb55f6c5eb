"""Nothing lost: divergence, out-of-memory retries, concurrent workers on one study."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, runs_of, start_cli
from optuna.trial import TrialState

from lbsearch.spec import CONFIG_ATTR, DIVERGED_REASON, data_cache_dir
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.session import Session
from lbsearch.study import RUN_ID
from lbsearch.study.storage import open_study
from lbsearch.tracking import CONFIG_JSON, OOM_RETRIES, REASON, ROLE, STATE, TRIAL


def test_divergence_is_pruned_with_reason_and_never_best(tmp_path):
    sets = ["search_space.optimizer.lr.high=9", "n_trials=2"]
    cfg, _ = load_study(SPECS / "tiny_study.yaml", parse_set(sets))
    study = open_study(Session(root=tmp_path / "mlruns"), cfg)
    study.enqueue_trial({"optimizer.lr": 1e-3, "train.batch_size": 32})
    study.enqueue_trial({"optimizer.lr": 8.0, "train.batch_size": 32})
    proc = run_cli("run", str(SPECS / "tiny_study.yaml"), *[f"--set={s}" for s in sets],
                   "--set=experiment.train.clip_norm=null", cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs["reason"] == DIVERGED_REASON, proc.stdout
    assert trials[1].user_attrs["samples"] < 960  # stopped at once, not at the next evaluation
    assert "diverged at step" in proc.stdout
    status = cli("status", "tiny-study", cwd=tmp_path, check=True).stdout
    assert DIVERGED_REASON in status
    best = cli("best", "tiny-study", cwd=tmp_path, check=True).stdout
    assert "trial      0" in best
    run = mlflow_client(tmp_path / "mlruns").get_run(trials[1].user_attrs[RUN_ID])
    assert run.data.tags[REASON] == DIVERGED_REASON and run.info.status == "FINISHED"


def test_out_of_memory_halves_the_micro_batch_keeping_B(tmp_path):
    env = dict(os.environ, LBSEARCH_INJECT_OOM_ABOVE="4")  # micro-batches above 4 "run out of memory"
    proc = run_cli("run", str(SPECS / "tiny_study.yaml"), "--set=n_trials=1", "--set=search_space.train.batch_size.choices=[32]", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "out of memory at micro-batch 16: retrying with micro-batch 8 x accumulation 4 (B = 32 unchanged)" in proc.stdout
    assert "retrying with micro-batch 4 x accumulation 8" in proc.stdout
    assert "effective batch 32 = micro-batch 4 x accumulation 8 x processes 1" in proc.stdout
    trial = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()[0]
    assert trial.state == TrialState.COMPLETE
    assert json.loads(trial.user_attrs[CONFIG_ATTR])["launcher"]["max_micro_batch"] == 4  # reproduce runs what ran
    run = mlflow_client(tmp_path / "mlruns").get_run(trial.user_attrs[RUN_ID])
    # the MLflow run says what ran, not what was planned before the retries
    assert run.data.tags[OOM_RETRIES] == "2"
    assert (run.data.tags["plan.micro_batch"], run.data.tags["plan.accumulation"], run.data.tags["plan.max_micro_batch"]) == ("4", "8", "4")
    assert run.data.params["plan.batch_size"] == "32" and "probe" not in run.data.params.values()


def test_train_gets_the_out_of_memory_retry_too(tmp_path):
    """``lbsearch train`` (and ``reproduce``) run through the same tracked trial as the search."""
    env = dict(os.environ, LBSEARCH_INJECT_OOM_ABOVE="8")
    proc = run_cli("train", str(SPECS / "tiny.yaml"), "--set=train.budget_samples=320", "--set=train.eval_every_samples=320",
                   cwd=tmp_path, env=env, check=True)
    assert "[train] out of memory at micro-batch 16: retrying with micro-batch 8 x accumulation 4 (B = 32 unchanged)" in proc.stdout
    assert "effective batch 32 = micro-batch 8 x accumulation 4 x processes 1" in proc.stdout
    (run,) = runs_of(tmp_path / "mlruns", "train-tiny")
    assert run.info.status == "FINISHED" and run.data.tags[STATE] == "complete"
    assert (run.data.tags["plan.micro_batch"], run.data.tags["plan.accumulation"], run.data.tags[OOM_RETRIES]) == ("8", "4", "1")
    config = mlflow_client(tmp_path / "mlruns").download_artifacts(run.info.run_id, CONFIG_JSON, str(tmp_path))
    assert json.loads(Path(config).read_text())["launcher"]["max_micro_batch"] == 8  # `lbsearch train config.json` runs what ran


def test_four_concurrent_workers_share_one_study_and_never_repeat_the_start_up_draws(tmp_path):
    sets = ["--set=n_trials=8", "--set=sampler.n_startup_trials=8", "--set=experiment.train.budget_samples=320",
            "--set=experiment.train.eval_every_samples=160"]
    procs = [start_cli(tmp_path, "run", str(SPECS / "tiny_study.yaml"), *sets, seed=False) for _ in range(4)]  # all four prepare the data at once
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(outs)
    joined = "\n".join(outs)
    assert "Traceback" not in joined and "locked" not in joined
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.params["optimizer.lr"] for t in trials}) == 8  # workers started together draw apart
    assert sum("start" in line and "[trial" in line for line in joined.splitlines()) == 8  # each trial ran once
    client = mlflow_client(tmp_path / "mlruns")
    exp = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    assert sorted(int(r.data.tags[TRIAL]) for r in children) == list(range(8))
    assert len([r for r in runs if r.data.tags.get(ROLE) == "parent"]) == 1
    assert all(r.info.status != "RUNNING" for r in runs)


def test_micro_batch_limit_is_probed_once_and_cached(tmp_path):
    env = dict(os.environ, LBSEARCH_INJECT_OOM_ABOVE="8")  # the "device" holds 8 samples at full length
    proc = run_cli("run", str(SPECS / "tiny_study.yaml"), "--set=n_trials=2", "--set=search_space.train.batch_size.choices=[32]",
                   "--set=experiment.launcher.max_micro_batch=null", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[trial 0] micro-batch limit 8 (probed)" in proc.stdout
    assert "[trial 1] micro-batch limit 8 (cached in probe-" in proc.stdout
    assert proc.stdout.count("effective batch 32 = micro-batch 8 x accumulation 4 x processes 1") == 2
    assert len(list(data_cache_dir(tmp_path / "mlruns").glob("probe-*.json"))) == 1
    client = mlflow_client(tmp_path / "mlruns")
    for trial in journal_study(tmp_path / "mlruns", "tiny-study").get_trials():
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert json.loads(trial.user_attrs[CONFIG_ATTR])["launcher"]["max_micro_batch"] == 8  # reproduce runs what ran
        run = client.get_run(trial.user_attrs[RUN_ID])
        assert (run.data.tags["plan.micro_batch"], run.data.tags["plan.accumulation"]) == ("8", "4")
        assert "probe" not in run.data.params.values() and "plan.micro_batch" not in run.data.params
