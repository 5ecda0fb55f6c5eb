"""The trial plan: the batch split, lr scaling, steps, warmup and evaluation points, derived once."""

import json

import pytest

from lbsearch.spec.config import ExperimentConfig, OptimizerConfig
from lbsearch.spec.plan import TrialPlan, eval_points, lr_for_batch, make_plan, plan_batch


@pytest.mark.parametrize(
    "B, procs, limit, micro, accum",
    [(32, 1, 64, 32, 1), (256, 1, 64, 64, 4), (96, 1, 64, 48, 2), (64, 2, 16, 16, 2), (48, 1, 20, 16, 3), (7, 1, 4, 1, 7)],
)
def test_plan_batch_keeps_B(B, procs, limit, micro, accum):
    plan = plan_batch(B, procs, limit)
    assert (plan.micro_batch, plan.accumulation) == (micro, accum)
    assert plan.micro_batch * plan.accumulation * plan.processes == B
    assert plan.micro_batch <= limit


def test_plan_batch_rejects_uneven_split():
    with pytest.raises(ValueError, match="cannot be split"):
        plan_batch(30, 4, 64)


def test_eval_points_line_up_in_samples():
    assert eval_points(1000, 300, 100) == [(3, 300), (6, 600), (9, 900), (10, 1000)]
    # B=64: the first step past 300 samples is step 5 (320 seen), reported at nominal 300
    assert eval_points(1000, 300, 64)[0] == (5, 300)
    assert eval_points(1000, 300, 64)[-1] == (15, 1000)
    # a budget that B does not divide: the last evaluation is at the budget, after the last full step
    assert eval_points(100, 1000, 64) == [(1, 100)]


def test_lr_scaling_rule():
    opt = OptimizerConfig(lr=1e-3, reference_batch_size=32, lr_scaling="sqrt")
    assert lr_for_batch(opt, 128) == pytest.approx(2e-3)
    assert lr_for_batch(OptimizerConfig(lr=1e-3, reference_batch_size=32, lr_scaling="linear"), 128) == pytest.approx(4e-3)
    assert lr_for_batch(OptimizerConfig(lr=1e-3, reference_batch_size=32, lr_scaling="none"), 128) == pytest.approx(1e-3)


def _exp(**sections) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"name": "x", **sections})


def test_plan_of_an_experiment():
    exp = _exp(train={"batch_size": 128, "budget_samples": 1000, "eval_every_samples": 300},
               optimizer={"lr": 1e-3, "lr_scaling": "linear", "reference_batch_size": 32},
               schedule={"warmup_fraction": 0.25}, launcher={"processes": 2, "max_micro_batch": 16, "precision": "bf16"})
    plan = make_plan(exp)
    assert (plan.batch_size, plan.processes, plan.micro_batch, plan.accumulation) == (128, 2, 16, 4)
    assert plan.lr == pytest.approx(4e-3) and plan.steps == 7 and plan.precision == "bf16"
    assert plan.warmup_steps == 2  # 25% of 7 x 128 samples = 224 samples = 1.75 steps
    assert plan.evals == ((3, 300), (5, 600), (7, 1000))  # the last step (896 seen) reports at the budget
    assert str(plan).startswith("effective batch 128 = micro-batch 16 x accumulation 4 x processes 2; lr 0.004; 7 steps, warmup 2")


def test_warmup_in_samples_and_process_count_override():
    exp = _exp(train={"batch_size": 64, "budget_samples": 6400}, schedule={"warmup_fraction": None, "warmup_samples": 640})
    assert make_plan(exp).warmup_steps == 10
    assert make_plan(exp, processes=4).micro_batch == 16


def test_probed_plan_has_no_split_until_the_limit_is_known():
    plan = make_plan(_exp(launcher={"max_micro_batch": None}))
    assert plan.micro_batch is None and plan.accumulation is None
    assert "probe" not in json.dumps(plan.params()) and "to be probed" in str(plan)
    with pytest.raises(ValueError, match="not known yet"):
        plan.batch
    ran = plan.with_limit(8)
    assert (ran.micro_batch, ran.accumulation, ran.max_micro_batch) == (8, 4, 8)
    assert ran.split() == {"plan.micro_batch": 8, "plan.accumulation": 4, "plan.max_micro_batch": 8}
    assert ran.params() == plan.params()  # what holds whatever the device does not change


def test_plan_round_trips_through_json():
    plan = make_plan(_exp())
    assert TrialPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
