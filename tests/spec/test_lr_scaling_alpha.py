"""A study may search the exponent of lr = base_lr x (B / reference_batch_size)^alpha: ``optimizer.lr_scaling_alpha``
beside ``optimizer.lr`` (base_lr at the reference batch size), through the same path the study loop takes
(``suggest`` -> ``apply_params`` -> ``validate_experiment`` -> ``make_plan``)."""

from pathlib import Path

import optuna
import pytest
from pydantic import ValidationError

from lbsearch.spec.config import OptimizerConfig, SpecError
from lbsearch.spec.load import apply_params, load_study, validate_experiment
from lbsearch.spec.plan import lr_for_batch, make_plan
from lbsearch.study import make_sampler, suggest

TINY = Path(__file__).parent.parent / "specs" / "tiny.yaml"


def _study(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "alpha.yaml"
    path.write_text(f"name: alpha\nexperiment: {TINY}\nn_trials: 4\n{extra}"
                    "search_space:\n  train.batch_size: {type: categorical, choices: [16, 64, 256]}\n"
                    "  optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "  optimizer.lr_scaling_alpha: {type: float, low: 0, high: 1}\n"
                    "sampler: {name: tpe, seed: 0, n_startup_trials: 2}\n")
    return path


def test_two_batch_sizes_at_one_base_lr_and_alpha_get_lr_in_the_ratio_of_b_to_the_alpha(tmp_path):
    cfg, exp_raw = load_study(_study(tmp_path, "experiment_overrides: {optimizer.reference_batch_size: 16, train.budget_samples: 512}\n"))
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg.sampler, cfg.space))
    plans = []
    for b in (256, 16, 64):
        study.enqueue_trial({"train.batch_size": b, "optimizer.lr": 2e-3, "optimizer.lr_scaling_alpha": 0.37})
        params = suggest(study.ask(), cfg.space)
        plans.append(make_plan(validate_experiment(apply_params(exp_raw, params), None)))
    big, ref, mid = plans
    assert ref.lr == pytest.approx(2e-3)  # base_lr is the lr at reference_batch_size
    assert big.lr / mid.lr == pytest.approx((256 / 64) ** 0.37) and big.lr / ref.lr == pytest.approx(16 ** 0.37)


def test_a_named_rule_is_alpha_by_name():
    for name, alpha in (("sqrt", 0.5), ("linear", 1.0)):
        named = lr_for_batch(OptimizerConfig(lr=1e-3, reference_batch_size=32, lr_scaling=name), 200)
        assert named == pytest.approx(lr_for_batch(OptimizerConfig(lr=1e-3, reference_batch_size=32, lr_scaling_alpha=alpha), 200))


def test_alpha_and_a_named_rule_are_not_both_set(tmp_path):
    with pytest.raises(ValidationError, match="only one of `lr_scaling` and `lr_scaling_alpha`"):
        OptimizerConfig(lr_scaling="sqrt", lr_scaling_alpha=0.5)
    with pytest.raises(ValidationError, match="less than or equal to 2"):
        OptimizerConfig(lr_scaling_alpha=3)
    with pytest.raises(SpecError) as err:  # searched over an experiment that names a rule: the study's one-line error
        load_study(_study(tmp_path, "experiment_overrides: {optimizer.lr_scaling: sqrt}\n"))
    assert "search_space.optimizer.lr_scaling_alpha" in str(err.value) and "only one of" in str(err.value) and "\n" not in str(err.value)
