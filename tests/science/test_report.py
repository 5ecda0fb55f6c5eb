"""The batch-scaling report's table and fits, from trial points with known answers."""

import json

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from lbsearch.science.report import TrialPoint, collect, summarize
from lbsearch.spec import CONFIG_ATTR


def _points() -> list[TrialPoint]:
    """Per B: a good and a bad lr; steps to target S = 100 (1 + 64 / B); best lr ∝ B^0.5."""
    pts, n = [], 0
    for b in (16, 32, 64, 128, 256):
        best_lr = 1e-3 * (b / 16) ** 0.5
        for lr, value in ((best_lr, 0.8), (best_lr * 10, 0.6)):
            pts.append(TrialPoint(n, "complete", b, lr, value, round(100 * (1 + 64 / b)) if value > 0.7 else None, 50.0 + b))
            n += 1
    return pts


def test_summary_picks_the_best_lr_per_batch_size_and_fits_both_laws():
    s = summarize(_points(), maximize=True)
    rows = s["per_batch_size"]
    assert [r["batch_size"] for r in rows] == [16, 32, 64, 128, 256]
    assert all(r["best_value"] == 0.8 and r["complete"] == 2 for r in rows)
    assert abs(s["lr_fit"]["alpha"] - 0.5) < 1e-6
    assert abs(s["steps_fit"]["b_crit"] - 64) / 64 < 0.05 and abs(s["steps_fit"]["s_min"] - 100) / 100 < 0.05
    assert s["b_simple_range"] == [66.0, 306.0]


def test_too_few_batch_sizes_give_reasons_not_fits():
    s = summarize([p for p in _points() if p.batch_size in (16, 32)], maximize=True)
    assert "error" in s["steps_fit"] and "error" in s["lr_fit"]


def test_collect_reads_batch_size_and_scaled_lr_from_the_config_that_ran():
    study = optuna.create_study(direction="maximize")
    cfg = {"name": "x", "train": {"batch_size": 128}, "optimizer": {"lr": 1e-3, "lr_scaling": "sqrt", "reference_batch_size": 32}}
    study.add_trial(create_trial(params={"train.batch_size": 128}, distributions={"train.batch_size": CategoricalDistribution([32, 128])},
                                 value=0.7, user_attrs={CONFIG_ATTR: json.dumps(cfg), "steps_to_target": 5}))
    (p,) = collect(study)
    assert (p.batch_size, p.value, p.steps_to_target) == (128, 0.7, 5)
    assert abs(p.lr - 2e-3) < 1e-12  # the plan's lr: base lr scaled by sqrt(128 / 32)
