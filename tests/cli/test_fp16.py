"""fp16 done right, on a CPU: a real GradScaler (``torch.amp.GradScaler("cpu")``) under CPU autocast
in float16. An overflow (an infinite gradient injected on one step) is a skipped step, counted in
``train/skipped_steps``, not divergence; more skipped steps in a row than ``train.max_skipped_steps``
stop the trial with reason ``overflow``."""

from __future__ import annotations

import os

from conftest import SPECS, mlflow_client, run_cli

from lbsearch.spec import TRAIN_GRAD_NORM, TRAIN_LR, TRAIN_SKIPPED_STEPS
from lbsearch.tracking import REASON, STATE

FP16 = ["--set", "launcher.precision=fp16"]


def _run(tmp_path, env_at: str, *sets: str):
    env = dict(os.environ, LBSEARCH_INJECT_OVERFLOW_AT=env_at)
    proc = run_cli("train", str(SPECS / "tiny.yaml"), *FP16, *sets, "--set", "train.budget_samples=160",
                   "--set", "train.eval_every_samples=160", cwd=tmp_path, env=env)
    client = mlflow_client(tmp_path / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("train-tiny").experiment_id])
    return proc, client, run


def test_an_overflow_is_a_skipped_step_not_divergence(tmp_path):
    proc, client, run = _run(tmp_path, "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run.data.tags[STATE] == "complete"
    assert run.data.params["plan.precision"] == "fp16"
    skipped = client.get_metric_history(run.info.run_id, TRAIN_SKIPPED_STEPS)
    assert max(m.value for m in skipped) == 1 and {m.step for m in skipped if m.value == 1} >= {3 * 32}  # at samples seen (B = 32)
    grad_norm = {m.step: m.value for m in client.get_metric_history(run.info.run_id, TRAIN_GRAD_NORM)}
    assert 3 * 32 not in grad_norm and 2 * 32 in grad_norm  # the infinite norm is not a metric value (MLflow takes finite ones)
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, TRAIN_LR)}
    assert lr[3 * 32] == lr[2 * 32]  # a skipped step leaves the schedule where it was
    assert "fp16 overflow: step skipped by the GradScaler (1 in a row, 1 in all)" in proc.stdout


def test_repeated_overflows_beyond_the_bound_stop_the_trial(tmp_path):
    proc, _, run = _run(tmp_path, "2,3,4", "--set", "train.max_skipped_steps=2")
    assert proc.returncode == 1
    assert run.data.tags[STATE] == "pruned" and run.data.tags[REASON] == "overflow"
    assert "the GradScaler skipped 3 steps in a row" in proc.stdout
