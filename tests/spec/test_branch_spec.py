"""The experiment's ``branching`` section: branch points to steps, where a branch reads the sample stream, the
branch experiment's changes (and only those), and the section's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from lbsearch.spec import ExperimentConfig, branch_experiment, keep_steps, make_plan, stream_start
from lbsearch.spec.branch import Branching
from lbsearch.trial.batching import sample_stream


def test_points_as_fractions_or_tokens_become_steps_before_the_last():
    b = Branching(keep_at=[0.25, 0.5, 2048, 1.0])
    assert keep_steps(b, budget_samples=128, batch_size=8, unit=32) == {4, 8}  # 2048 tokens = 64 samples = step 8; the end: none
    assert keep_steps(Branching(keep_at=[100]), 128, 8, 1) == {13}  # samples: the first step that reaches 100
    assert keep_steps(None, 128, 8, 32) == set()
    with pytest.raises(ValueError, match="keep_at"):
        Branching(keep_at=[0])


def test_a_branch_reads_the_same_stream_on_from_its_point_at_any_batch():
    ref = sample_stream(50, 8, 20, seed=3).ravel()
    assert np.array_equal(sample_stream(50, 16, 5, seed=3, start=32).ravel(), ref[32:112])  # k = 2: the same samples, 16 a step
    assert np.array_equal(sample_stream(50, 8, 20, seed=3, start=0), sample_stream(50, 8, 20, seed=3))


def test_branch_experiment_changes_only_lr_schedule_budget_and_source():
    ref = ExperimentConfig.model_validate({"name": "r", "train": {"batch_size": 16, "budget_samples": 640}, "optimizer": {"lr": 1e-3},
                                           "branching": {"keep_at": [0.5]}}).model_dump(mode="json")
    src = {"checkpoints": "/x", "at_samples": 320, "fingerprint": "f", "reference": "r#0", "reference_seed": 0, "reference_batch_size": 16}
    raw = branch_experiment(ref, 1e-3, 128, "sqrt", src)
    raw["train"]["batch_size"] = 64  # k = 4, as the branch study's grid sets it
    exp = ExperimentConfig.model_validate(raw)
    plan = make_plan(exp)
    assert plan.lr == pytest.approx(2e-3) and plan.steps == 2 and plan.warmup_steps == 0 and exp.schedule.name == "constant"
    assert stream_start(exp.branching) == 320
    changed = {(s, k) for s in ref if isinstance(ref[s], dict) for k in ref[s] if raw[s].get(k) != ref[s][k]}
    assert changed <= {("optimizer", "lr_scaling"), ("optimizer", "reference_batch_size"), ("optimizer", "lr"), ("schedule", "name"),
                       ("schedule", "warmup_fraction"), ("train", "batch_size"), ("train", "budget_samples"), ("train", "eval_every_samples"),
                       ("branching", "keep_at"), ("branching", "source")}
