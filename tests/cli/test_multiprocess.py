"""Trials over 2 CPU processes (gloo): one effective batch, one MLflow run, stop together, fail fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import SPECS, journal_study, mlflow_client, run_cli, start_cli, wait_for, worker_pids
from optuna.trial import TrialState

from lbsearch.spec import EVAL, PID_ATTR, PREFIX, SPEC_JSON, TEST, TRAIN_GRAD_NORM, TRAIN_LOSS
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.session import Session
from lbsearch.study import RUN_ID
from lbsearch.study.storage import open_study
from lbsearch.tracking import REASON, ROLE, TRIAL

NO_DROPOUT = ["--set=model.config.hidden_dropout_prob=0.0", "--set=model.config.attention_probs_dropout_prob=0.0"]


def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    """Same B, seed and data order: 2 processes x accumulation 1 == 1 process x accumulation 2 (fp32).
    Dropout is off: its random masks cannot match across process layouts."""
    for procs in (2, 1):
        out = run_cli("train", str(SPECS / "tiny.yaml"), f"--set=launcher.processes={procs}", *NO_DROPOUT, cwd=tmp_path, check=True).stdout
        accum = 3 - procs
        assert f"effective batch 32 = micro-batch 16 x accumulation {accum} x processes {procs}" in out
    client = mlflow_client(tmp_path / "mlruns")
    exp = client.get_experiment_by_name("train-tiny")
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert [r.data.params["plan.processes"] for r in runs] == ["2", "1"]
    # every one of the 30 steps: the same samples' gradients summed in another order (gloo's all-reduce vs
    # accumulation) differ in float32 rounding only (losses <= 6e-8 apart, grad norms <= 3e-8, on the 2-core EPYC)
    for key in (TRAIN_LOSS, TRAIN_GRAD_NORM):
        a, b = ([(m.step, m.value) for m in sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)] for r in runs)
        assert len(a) == 30 and [s for s, _ in a] == [s for s, _ in b], key
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) <= 1e-6, key
    for key in (EVAL + "accuracy", TEST + "accuracy"):
        a, b = (client.get_metric_history(r.info.run_id, key) for r in runs)
        assert [m.value for m in a] == [m.value for m in b], key
    a, b = (client.get_metric_history(r.info.run_id, EVAL + "loss") for r in runs)
    assert max(abs(x.value - y.value) for x, y in zip(a, b)) <= 1e-5


def test_two_process_study_prunes_and_logs_one_run_per_trial(tmp_path):
    sets = ["experiment.metric.name=loss", "launcher.processes=2", "n_trials=2"]
    cfg, _ = load_study(SPECS / "tiny_study_loss.yaml", parse_set(sets))
    study = open_study(Session(root=tmp_path / "mlruns"), cfg)
    study.enqueue_trial({"optimizer.lr": 3e-3, "model.config.num_attention_heads": 2})
    study.enqueue_trial({"optimizer.lr": 1e-7, "model.config.num_attention_heads": 2})
    t0 = time.time()
    proc = run_cli("run", str(SPECS / "tiny_study_loss.yaml"), *[f"--set={s}" for s in sets], cwd=tmp_path, check=True)
    assert "x processes 2" in proc.stdout
    trials = journal_study(tmp_path / "mlruns", "tiny-loss").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].user_attrs["samples"] == 320  # every rank stopped at the pruning evaluation
    runs = mlflow_client(tmp_path / "mlruns").search_runs([mlflow_client(tmp_path / "mlruns").get_experiment_by_name("tiny-loss").experiment_id])
    assert sorted(r.data.tags.get(TRIAL) for r in runs if r.data.tags.get(ROLE) == "trial") == ["0", "1"]
    assert not worker_pids(tmp_path)  # no rank left behind
    assert time.time() - t0 < 300


def test_killing_one_rank_fails_the_trial_fast_and_the_study_goes_on(tmp_path, specs):
    spec = specs / "tiny_study.yaml"
    proc = start_cli(tmp_path, "run", str(spec), "--set=launcher.processes=2", "--set=n_trials=2", "--set=experiment.train.budget_samples=6400")
    wait_for(proc, "[trial 0] samples 320")
    victims = worker_pids(tmp_path, rank=1)
    assert victims
    os.kill(victims[0], signal.SIGKILL)
    t_kill = time.time()
    wait_for(proc, "[trial 0] failed", timeout=60)
    assert time.time() - t_kill <= 60
    rest = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, rest
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    reason = trials[0].user_attrs["reason"]
    # either rank 0 saw its peer vanish (gloo read error) or torchrun stopped it first
    assert trials[0].state == TrialState.FAIL and any(s in reason for s in ("exited with code", "Read error", "Connection")), reason
    assert trials[1].state in (TrialState.COMPLETE, TrialState.PRUNED)
    run = mlflow_client(tmp_path / "mlruns").get_run(trials[0].user_attrs[RUN_ID])
    assert run.info.status == "FAILED" and run.data.tags[REASON] == reason
    assert not worker_pids(tmp_path)


def test_two_workers_with_two_processes_each_share_a_study(tmp_path):
    sets = ["--set=launcher.processes=2", "--set=n_trials=4", "--set=experiment.train.budget_samples=320",
            "--set=experiment.train.eval_every_samples=160"]
    procs = [start_cli(tmp_path, "run", str(SPECS / "tiny_study.yaml"), *sets) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert "address already in use" not in "\n".join(outs).lower()
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs[PID_ATTR] for t in trials}) == 2  # both workers ran trials
    client = mlflow_client(tmp_path / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("tiny-study").experiment_id])
    assert sorted(int(r.data.tags[TRIAL]) for r in runs if r.data.tags.get(ROLE) == "trial") == [0, 1, 2, 3]


def test_trial_command_starts_one_process_as_accelerates_simple_launcher_would(tmp_path):
    """One process: the worker itself, with the environment `accelerate launch` would give it (run
    here as Accelerate's own launcher prints it); several processes: `accelerate launch` (torchrun)."""
    from lbsearch.orchestrator.launch import launch_command, trial_command

    spec = tmp_path / SPEC_JSON
    one = {"launcher": {"processes": 1, "precision": "no", "cpu": True}}
    cmd, env = trial_command(one, spec, dict(os.environ, KEEP="1"))
    assert cmd == [sys.executable, "-m", "lbsearch.trial.worker", str(spec)]
    probe = tmp_path / "env.py"
    probe.write_text("import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(('ACCELERATE_', 'OMP_'))}))\n")
    cli = launch_command(one, spec)[:-3] + [str(probe)]
    via_cli = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=True).stdout.strip().splitlines()[-1]
    assert {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "OMP_"))} == json.loads(via_cli)
    assert env["KEEP"] == "1" and env["ACCELERATE_MIXED_PRECISION"] == "no" and env["ACCELERATE_USE_CPU"] == "True"
    two = {"launcher": {"processes": 2, "precision": "no", "cpu": True}}
    cmd, _ = trial_command(two, spec, dict(os.environ))
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    broken = {"launcher": {"processes": 1, "precision": "no", "cpu": True, "accelerate_config": str(tmp_path / "missing.yaml")}}
    cmd, _ = trial_command(broken, spec, dict(os.environ))  # the trial, not the study, fails on it
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]


def test_a_checkpoint_one_rank_cannot_write_costs_only_itself_over_two_processes(tmp_path):
    """A full disk on rank 1 while it writes its state (step 10), then on the main rank while it
    publishes (step 20): both ranks leave each save together, the trial trains on and completes,
    and the checkpoint after them is written whole."""
    env = dict(os.environ, LBSEARCH_INJECT_CHECKPOINT_ERROR_AT="10@1,20")
    out = run_cli("run", str(SPECS / "tiny_study.yaml"), "--set=launcher.processes=2", "--set=n_trials=1", "--set=pruner.name=none",
                  "--set=search_space.train.batch_size.choices=[32]", "--set=experiment.train.checkpoint_every_samples=320",
                  "--set=experiment.train.budget_samples=1280", cwd=tmp_path, env=env, timeout=400).stdout
    assert "checkpoint at step 10 not written (OSError: [Errno 5] another rank could not write its part of the checkpoint)" in out, out[-3000:]
    assert "checkpoint at step 20 not written (OSError: [Errno 28] No space left on device (injected at step 20))" in out
    assert "checkpoint at step 30 (960 samples)" in out
    (trial,) = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["steps"] == 40
    assert not list((tmp_path / "mlruns").rglob(f".tmp-{PREFIX}*")) and not worker_pids(tmp_path)
