"""``train.batch_schedule`` and the plan it gives (``lbsearch.spec.batch_schedule``, ``lbsearch.spec.plan``): where each
change takes effect, the lr of each phase, warmup and evaluation points in samples, tokens for a language model, and
the schedule as a searchable dimension of a study."""

from __future__ import annotations

import pytest
import yaml
from conftest import SPECS

from lbsearch.spec import ExperimentConfig, apply_params, load_study, make_plan
from lbsearch.spec.registry import LR_SCALING

RULE, FACTOR = "sqrt", 2
"""The lr rule and the stepwise factor each schedule here names: lr x (B / B0)^ALPHA at each change, B x FACTOR."""
ALPHA = LR_SCALING[RULE]


def _plan(schedule: dict | None, lm: bool = False, **train):
    raw = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    raw["train"] |= {"batch_schedule": schedule and {"lr_scaling": RULE, "factor": FACTOR} | schedule} | train
    if lm:
        raw |= {"task": "causal_lm", "metric": {"name": "loss"}}
        raw["data"] |= {"max_length": 64}
    return make_plan(ExperimentConfig.model_validate(raw))


def test_a_change_takes_effect_at_the_first_step_that_starts_at_or_after_its_point():
    """B 32 from 0; at 100 samples B 64: steps 1-4 at 32 (step 4 starts at 96 < 100), step 5 starts at 128. At 300: 128
    from the step starting at 320. The budget of 960 is then 128 + 3 x 64 + 5 x 128 = 960."""
    plan = _plan({"kind": "stepwise", "at_samples": [100, 300]})
    assert plan.phases == ((1, 32, 1e-3, 4), (5, 64, pytest.approx(1e-3 * 2**ALPHA), 3), (8, 128, pytest.approx(1e-3 * 4**ALPHA), 5))
    assert plan.steps == 12 and plan.samples_at(plan.steps) == 960
    assert [plan.samples_at(s) for s in (3, 4, 5, 7, 8)] == [96, 128, 192, 320, 448]
    assert [plan.phase_at(s)[0] for s in (1, 4, 5, 7, 8, 12)] == [32, 32, 64, 64, 128, 128]
    assert plan.evals == ((7, 320), (10, 640), (12, 960))  # 320 seen after step 7; 640 first passed by step 10 (704)
    assert plan.warmup_steps == 3  # 10 % of 960 samples: 96, reached after step 3


def test_explicit_sizes_and_lr_rules():
    plan = _plan({"kind": "stepwise", "at_samples": [320], "batch_sizes": [96], "lr_scaling": "linear"})
    assert [(f, B) for f, B, _, _ in plan.phases] == [(1, 32), (11, 96)] and plan.phases[1][2] == pytest.approx(3e-3)
    assert _plan({"kind": "stepwise", "at_samples": [320], "lr_scaling": "none"}).phases[1][2] == pytest.approx(1e-3)


def test_a_ramp_grows_b_in_equal_increments_spread_over_its_samples():
    """Megatron-LM's ramp: 32 -> 128 in increments of 32 over 480 samples: 64 from 160, 96 from 320, 128 from 480."""
    plan = _plan({"kind": "ramp", "final_batch_size": 128, "ramp_samples": 480}, budget_samples=1280)
    assert [(f, B) for f, B, _, _ in plan.phases] == [(1, 32), (6, 64), (9, 96), (11, 128)]
    assert [plan.samples_at(f - 1) for f, _, _, _ in plan.phases] == [0, 160, 352, 544]
    assert plan.samples_at(plan.steps) == 1184  # 544 + 5 x 128: the last whole step that fits in 1,280


def test_a_phase_no_step_starts_in_is_dropped():
    plan = _plan({"kind": "stepwise", "at_samples": [100, 110], "batch_sizes": [64, 128]})
    assert [B for _, B, _, _ in plan.phases] == [32, 128]


def test_a_language_model_places_changes_in_tokens():
    plan = _plan({"kind": "stepwise", "at_tokens": [6400]}, lm=True, budget_tokens=64 * 960, eval_every_tokens=64 * 320)
    assert plan.phases[1][:2] == (5, 64)  # 6,400 tokens = 100 sequences of 64
    assert plan.params()["plan.batch_schedule"] == f"32 from step 1 (lr 0.001), 64 from step 5 (lr {1e-3 * 2**ALPHA:.3g})"


def test_without_a_change_the_plan_is_the_constant_one():
    assert _plan({"kind": "constant"}) == _plan(None)
    assert _plan(None).phases == () and _plan(None).samples_at(7) == 224


def test_the_kind_is_a_searchable_dimension(tmp_path):
    """A study searches ``train.batch_schedule.kind`` with the settings of both kinds in the experiment: each trial's
    experiment validates, and only the kind in force shapes its plan."""
    (tmp_path / "tiny.yaml").write_text((SPECS / "tiny.yaml").read_text().replace(
        "clip_norm: 1.0}", f"clip_norm: 1.0, batch_schedule: {{at_samples: [320], factor: {FACTOR}, final_batch_size: 96, ramp_samples: 320}}}}"))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "schedules", "experiment": "tiny.yaml", "n_trials": 3, "sampler": {"name": "grid"},
        "search_space": {"train.batch_schedule.kind": {"type": "categorical", "choices": ["constant", "stepwise", "ramp"]}}}))
    study, raw = load_study(tmp_path / "study.yaml")
    sizes = {kind: [B for _, B, _, _ in make_plan(ExperimentConfig.model_validate(apply_params(raw, {"train.batch_schedule.kind": kind}))).phases]
             for kind in ("constant", "stepwise", "ramp")}
    assert sizes == {"constant": [], "stepwise": [32, 64], "ramp": [32, 64, 96]}
