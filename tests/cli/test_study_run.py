"""End to end through the CLI: a study with complete, pruned and failed trials; the MLflow run tree;
reproduce (the best trial, exactly; a re-run that differs: exit 1); resume after Ctrl-C; recovery after
the orchestrator is SIGKILLed, no process left behind."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, start_cli, wait_for, worker_pids
from optuna.trial import TrialState

from lbsearch.orchestrator import CONFIG_JSON, REPRODUCE_SH, TRIAL_LOG, VERSIONS_JSON
from lbsearch.spec import (
    CONFIG_ATTR,
    EVAL,
    INTERRUPTED,
    PROGRESS_STEP,
    RETRY_OF_ATTR,
    TEST,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
    TRAIN_MFU,
    TRAIN_SAMPLES_PER_S,
    TRAIN_TOKENS_PER_S,
    TRIALS,
    VAL,
    WORKER_DIED,
)
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.session import Session
from lbsearch.study import RUN_ID
from lbsearch.study.storage import open_study
from lbsearch.tracking import BEST_TRIAL_TAG, REASON, REPRODUCED, REPRODUCES, ROLE, START, STATE, TOLERANCE, TRIAL, TRIALS_CSV

LOSS = ["--set", "experiment.metric.name=loss"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """tiny-loss, 4 trials: enqueued (good lr) -> complete, (lr 1e-7) -> pruned, (3 heads) -> failed, then TPE
    (-> pruned: see test_failing_trial_does_not_stop_the_study)."""
    cwd = tmp_path_factory.mktemp("study")
    root = cwd / "mlruns"
    cfg, _ = load_study(SPECS / "tiny_study_loss.yaml", parse_set(["experiment.metric.name=loss"]))
    study = open_study(Session(root=root), cfg)
    study.enqueue_trial({"optimizer.lr": 3e-3, "model.config.num_attention_heads": 2})
    study.enqueue_trial({"optimizer.lr": 1e-7, "model.config.num_attention_heads": 2})
    study.enqueue_trial({"optimizer.lr": 1e-3, "model.config.num_attention_heads": 3})
    proc = run_cli("run", str(SPECS / "tiny_study_loss.yaml"), *LOSS, cwd=cwd, check=True)
    return cwd, root, proc


def test_failing_trial_does_not_stop_the_study(finished):
    cwd, root, proc = finished
    trials = journal_study(root, "tiny-loss").get_trials()
    assert len(trials) == 4
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert "num_attention_heads" in trials[2].user_attrs["reason"] or "heads" in trials[2].user_attrs["reason"]
    assert trials[1].user_attrs["reason"] == "pruned"
    # trial 3 is TPE's (seed 0): 2 heads and an lr below trial 0's 3e-3, the top of the range. The median
    # pruner (1 startup trial) compares it at 320 samples with trial 0 alone, whose larger lr has lowered
    # the loss more in the same 10 steps: pruned there
    assert trials[3].params["model.config.num_attention_heads"] == 2 and trials[3].params["optimizer.lr"] < 3e-3, trials[3].params
    assert trials[3].state == TrialState.PRUNED and trials[3].user_attrs["reason"] == "pruned"
    assert list(trials[3].intermediate_values) == [320] and trials[3].intermediate_values[320] > trials[0].intermediate_values[320]
    # pruning compares at equal samples seen: the pruned trial stopped at the first evaluation
    assert trials[1].user_attrs["samples"] == 320
    assert list(trials[1].intermediate_values) == [320]
    assert list(trials[0].intermediate_values) == [320, 640, 960]
    assert "[trial 2] failed" in proc.stdout
    assert "[study tiny-loss] done" in proc.stdout


def test_mlflow_run_tree(finished):
    cwd, root, _ = finished
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("tiny-loss")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE) == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags[TRIAL]) for r in children) == [0, 1, 2, 3]
    assert all(r.info.status != "RUNNING" for r in runs)
    by_trial = {int(r.data.tags[TRIAL]): r for r in children}
    states = {t.number: t.state.name.lower() for t in journal_study(root, "tiny-loss").get_trials()}
    for n, run in by_trial.items():
        assert run.data.tags[STATE] == {"fail": "failed"}.get(states[n], states[n])
    good = by_trial[0]
    assert good.info.status == "FINISHED"
    assert by_trial[2].info.status == "FAILED" and REASON in by_trial[2].data.tags
    assert by_trial[1].data.tags[REASON] == "pruned"
    # params: every hyperparameter of the resolved config and the derived batch split
    p, tags = good.data.params, good.data.tags
    assert p["plan.batch_size"] == "32" and p["plan.processes"] == "1" and p["plan.steps"] == "30" and p["plan.warmup_steps"] == "3"
    assert p["plan.precision"] == "no" and p["plan.lr"] == "0.003" and p["plan.evals"] == "[320, 640, 960]"
    assert tags["plan.micro_batch"] == "16" and tags["plan.accumulation"] == "2" and tags["plan.max_micro_batch"] == "16"
    assert p["optimizer.lr"] == "0.003" and p["train.batch_size"] == "32"
    # per-evaluation histories at samples seen (MLflow's step), the optimizer step as a metric of its own
    hist = client.get_metric_history(good.info.run_id, EVAL + "loss")
    assert [m.step for m in hist] == [320, 640, 960]
    assert len(client.get_metric_history(good.info.run_id, TRAIN_LOSS)) == 30
    steps = {m.step: m.value for m in client.get_metric_history(good.info.run_id, PROGRESS_STEP)}
    assert steps[320] == 10 and steps[960] == 30
    for key in (TRAIN_LR, TRAIN_GRAD_NORM, TRAIN_SAMPLES_PER_S, VAL + "loss", TEST + "loss", TEST + "accuracy"):
        assert client.get_metric_history(good.info.run_id, key), key
    assert len(client.get_metric_history(by_trial[1].info.run_id, EVAL + "loss")) == 1
    # speed against the hardware: tokens/s of real tokens and model FLOPs utilisation at each evaluation
    mfu = [m.value for m in client.get_metric_history(good.info.run_id, TRAIN_MFU)]
    sps = {m.step: m.value for m in client.get_metric_history(good.info.run_id, TRAIN_SAMPLES_PER_S)}
    tps = {m.step: m.value for m in client.get_metric_history(good.info.run_id, TRAIN_TOKENS_PER_S)}
    assert len(mfu) == 3 and all(0 < v < 1 for v in mfu)
    assert sps.keys() == tps.keys() and all(3 < tps[s] / sps[s] <= 48 for s in sps)  # reviews: a few to 48 tokens each
    # artifacts: resolved config, reproduce command, versions, the trial's output
    arts = {a.path for a in client.list_artifacts(good.info.run_id)}
    assert {CONFIG_JSON, REPRODUCE_SH, VERSIONS_JSON, TRIAL_LOG} <= arts
    local = client.download_artifacts(good.info.run_id, CONFIG_JSON, str(cwd))
    assert json.loads(Path(local).read_text())["optimizer"]["lr"] == 3e-3
    assert "data.digest" in good.data.tags and "git.commit" in good.data.tags
    # parent: best params and metric, trials table
    assert parent.data.tags[BEST_TRIAL_TAG] == "0"  # the one complete trial
    assert "best.optimizer.lr" in parent.data.tags
    table = Path(client.download_artifacts(parent.info.run_id, TRIALS_CSV, str(cwd))).read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("trial,state")


def test_status_and_best(finished):
    cwd, _, _ = finished
    status = cli("status", "tiny-loss", cwd=cwd, check=True).stdout
    assert "complete" in status and "pruned" in status and "fail" in status
    header = next(line for line in status.splitlines() if line.lstrip().startswith("trial"))
    assert "mfu" in header.split() and re.search(r"\d+\.\d%", status)  # MFU of the finished trials, in percent
    best = cli("best", "tiny-loss", cwd=cwd, check=True).stdout
    assert "reproduce  lbsearch reproduce tiny-loss --trial" in best
    unknown = cli("status", "nope", cwd=cwd)
    assert unknown.returncode == 2 and "unknown study 'nope'" in unknown.stderr


def test_status_and_best_do_not_import_torch(finished):
    """A table of trials costs no torch import (nor MLflow's)."""
    cwd, _, _ = finished
    code = ("import sys; from lbsearch.cli.main import main; "
            "assert main(['status', 'tiny-loss']) == 0 and main(['best', 'tiny-loss']) == 0 and main(['status', 'tiny-loss', '--json']) == 0; "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reproduce  lbsearch reproduce tiny-loss" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_reproduce_is_exact_on_cpu(finished):
    """No ``--trial``: the best trial (trial 0, the one complete) is re-run."""
    cwd, root, _ = finished
    proc = run_cli("reproduce", "tiny-loss", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[reproduce 0] re-running trial 0 of tiny-loss from its saved config" in proc.stdout
    assert "[reproduce 0] reproduced: metrics identical" in proc.stdout
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("tiny-loss")
    rep = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(ROLE) == "reproduce"]
    assert rep and rep[-1].data.tags[REPRODUCED] == "yes" and float(rep[-1].data.tags[TOLERANCE]) == 0  # the CPU: bit for bit
    orig = journal_study(root, "tiny-loss").trials[0]
    assert rep[-1].data.tags[REPRODUCES] == orig.user_attrs[RUN_ID]
    assert client.get_metric_history(rep[-1].info.run_id, VAL + "loss")[0].value == orig.user_attrs["validation_loss"]
    # the original was forked from the standby process, the reproduction a started process: step for step the same
    assert rep[-1].data.tags[START] == "launched"
    for key in (TRAIN_LOSS, TRAIN_GRAD_NORM, EVAL + "loss", EVAL + "accuracy"):
        hist = [sorted((m.step, m.value) for m in client.get_metric_history(r, key)) for r in (rep[-1].info.run_id, orig.user_attrs[RUN_ID])]
        assert hist[0] == hist[1] and hist[0], key


def test_reproduce_of_a_rerun_that_differs_says_mismatch_and_exits_1(finished, tmp_path):
    """In a copy of the study, trial 0's stored config is given another seed (as if edited after the run):
    its re-run starts from another initialisation and data order, and its metrics differ."""
    cwd, _, _ = finished
    root = tmp_path / "mlruns"
    shutil.copytree(cwd / "mlruns", root, ignore=shutil.ignore_patterns(TRIALS))
    journal = root / "optuna.journal"
    ops = [json.loads(line) for line in journal.read_text().splitlines()]
    edited = [op for op in ops if op.get("trial_id") == 0 and CONFIG_ATTR in op.get("user_attr", {})]
    assert len(edited) == 1
    config = json.loads(edited[0]["user_attr"][CONFIG_ATTR])
    assert config["seed"] == 0
    edited[0]["user_attr"][CONFIG_ATTR] = json.dumps(config | {"seed": 1})
    journal.write_text("".join(json.dumps(op) + "\n" for op in ops))
    proc = cli("reproduce", "tiny-loss", "--trial", "0", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    compared = re.findall(r"^\[reproduce 0\] (\w+) loss: original (\S+) reproduced (\S+)$", proc.stdout, re.MULTILINE)
    assert [split for split, *_ in compared] == ["validation", "test", "validation"], proc.stdout
    assert all(float(old) != float(new) for _, old, new in compared), compared
    verdict = re.search(r"^\[reproduce 0\] MISMATCH \(MLflow run (\w+)\)$", proc.stdout, re.MULTILINE)
    assert verdict, proc.stdout
    rep = mlflow_client(root).get_run(verdict.group(1))
    assert rep.data.tags[ROLE] == "reproduce" and rep.data.tags[REPRODUCED] == "no" and rep.info.status == "FINISHED"
    assert rep.data.tags[REPRODUCES] == journal_study(root, "tiny-loss").trials[0].user_attrs[RUN_ID]


def test_every_trial_is_forked_from_one_standby_process_that_ends_with_the_study(finished):
    cwd, root, _ = finished
    client = mlflow_client(root)
    ran = [t for t in journal_study(root, "tiny-loss").get_trials() if t.state != TrialState.FAIL]
    starts = {client.get_run(t.user_attrs[RUN_ID]).data.tags[START] for t in ran}
    assert len(ran) >= 2 and len(starts) == 1 and starts.pop().startswith("forked from standby process "), starts
    assert not worker_pids(cwd)


def test_ctrl_c_then_resume(tmp_path, specs):
    """(SIGTERM: tests/cli/test_resume.py for a started trial, tests/cli/test_standby.py for a forked one.)"""
    spec = specs / "tiny_study.yaml"
    proc = start_cli(tmp_path, "run", str(spec))
    wait_for(proc, "[trial 1] samples 320")
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, rest
    assert "interrupted; run the same command again to resume" in rest
    root = tmp_path / "mlruns"
    trials = journal_study(root, "tiny-study").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["reason"] == INTERRUPTED
    client = mlflow_client(root)
    run = client.get_run(trials[1].user_attrs[RUN_ID])
    assert run.info.status == "KILLED"
    assert not any(p.poll() is None for p in [proc])
    # the same command resumes: the interrupted params run again, and the study ends at n_trials
    again = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(root, "tiny-study").get_trials()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 3, again.stdout
    retry = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == 1]
    assert len(retry) == 1 and retry[0].params == trials[1].params
    assert f"[trial {retry[0].number}] resumes trial 1 from its checkpoint at step" in again.stdout  # written on the way out
    exp = client.get_experiment_by_name("tiny-study")
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp.experiment_id]))


def test_killed_orchestrator_leaves_no_process_and_its_trial_is_failed_and_retried(tmp_path, specs):
    spec = specs / "tiny_study.yaml"
    proc = start_cli(tmp_path, "run", str(spec), "--set", "n_trials=2")
    wait_for(proc, "[trial 0] samples 320")
    assert len(worker_pids(tmp_path)) == 2  # the standby process and the trial forked from it
    proc.kill()  # SIGKILL: no handler runs; the standby process sees its socket close, the trial its orchestrator die
    proc.wait(timeout=10)
    deadline = time.time() + 30
    while worker_pids(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    assert not worker_pids(tmp_path)
    root = tmp_path / "mlruns"
    assert journal_study(root, "tiny-study").get_trials()[0].state == TrialState.RUNNING
    run_cli("run", str(spec), "--set", "n_trials=2", cwd=tmp_path, check=True)
    trials = journal_study(root, "tiny-study").get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == WORKER_DIED
    assert trials[1].user_attrs.get(RETRY_OF_ATTR) == 0 and trials[1].params == trials[0].params
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    client = mlflow_client(root)
    assert client.get_run(trials[0].user_attrs[RUN_ID]).info.status == "KILLED"
    exp = client.get_experiment_by_name("tiny-study")
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp.experiment_id]))
