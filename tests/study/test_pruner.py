"""The pruners that protect slow starters (large-B trials): patient, percentile, and a warm-up in samples for every
pruner, on real Optuna studies, through ``make_pruner`` as the orchestrator and the trial process build them."""

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lbsearch.spec import PrunerConfig, TrainConfig
from lbsearch.spec.registry import PRUNERS
from lbsearch.study.pruner import make_pruner

TRAIN = TrainConfig(batch_size=32, budget_samples=960, eval_every_samples=320)
CURVES = ({320: 0.60, 640: 0.70, 960: 0.75}, {320: 0.70, 640: 0.78, 960: 0.82}, {320: 0.80, 640: 0.85, 960: 0.88}, {320: 0.90, 640: 0.91, 960: 0.92})


SETTINGS = {"n_warmup_samples": 0, "protect_warmup": False, "wraps": "median", "min_delta": 0.0}
"""What the verdicts below depend on beyond each test's own settings: no warm-up of any kind, patient wrapping median."""


def _study(**pruner) -> optuna.Study:
    """A maximising study with four finished learning curves (validation accuracy at samples seen)."""
    study = optuna.create_study(direction="maximize", pruner=make_pruner(PrunerConfig(**SETTINGS | pruner), TRAIN))
    for curve in CURVES:
        study.add_trial(create_trial(value=curve[960], intermediate_values=curve, state=TrialState.COMPLETE))
    return study


def _verdicts(study: optuna.Study, curve: dict[int, float]) -> list[bool]:
    """Report a new trial's curve the way ``Reporter.should_prune`` does; each report's verdict."""
    trial, out = study.ask(), []
    for samples, value in curve.items():
        trial.report(value, samples)
        out.append(bool(trial.should_prune()))
    return out


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_each_name_builds_with_its_defaults_and_a_warm_up(name):
    assert isinstance(make_pruner(PrunerConfig(name=name, n_warmup_samples=640), TRAIN), optuna.pruners.BasePruner)


def test_patient_does_not_prune_at_the_first_bad_report_where_median_would():
    slow = {320: 0.50, 640: 0.49, 960: 0.48}  # a bad start that never recovers
    assert _verdicts(_study(name="median", n_startup_trials=1), slow)[0] is True
    assert _verdicts(_study(name="patient", patience=1, n_startup_trials=1), slow) == [False, False, True]  # once its patience ran out


def test_patient_never_stops_a_trial_that_keeps_improving():
    climbing = {320: 0.50, 640: 0.60, 960: 0.70}  # below the median at every point, but rising
    assert _verdicts(_study(name="median", n_startup_trials=1), climbing) == [True, True, True]
    assert _verdicts(_study(name="patient", patience=1, n_startup_trials=1), climbing) == [False, False, False]


def test_percentile_keeps_the_best_share_of_trials():
    """75 (the default): a trial goes on while it is above the bottom quarter (0.675 at 320 samples); the median
    (50) stops one below 0.75 there."""
    assert _verdicts(_study(name="percentile", percentile=75.0, n_startup_trials=1), {320: 0.68})[0] is False
    assert _verdicts(_study(name="percentile", percentile=75.0, n_startup_trials=1), {320: 0.65})[0] is True
    assert _verdicts(_study(name="percentile", percentile=50.0, n_startup_trials=1), {320: 0.68})[0] is True


@pytest.mark.parametrize("name", ["median", "percentile", "patient"])
def test_no_pruning_before_the_warm_up_in_samples(name):
    bad = {320: 0.10, 640: 0.09, 960: 0.08}
    verdicts = _verdicts(_study(name=name, n_startup_trials=1, n_warmup_samples=640, patience=1), bad)
    assert verdicts[0] is False and verdicts[-1] is True


def test_asha_warm_up_moves_its_first_rung_and_patient_asha_records_each_rung_at_its_own_samples():
    """ASHA with ``n_warmup_samples: 640`` makes its first comparison at 640 samples; wrapped by patient, it still
    records each rung's value at that rung's samples seen (Optuna's own PatientPruner would ask it only once the
    trial stalls, and ASHA would then file a later value under an earlier rung)."""
    for name in ("asha", "patient"):
        study = _study(name=name, wraps="asha", n_warmup_samples=640)
        trial = study.ask()
        trial.report(0.95, 320)
        trial.should_prune()
        assert "completed_rung_0" not in study.trials[-1].system_attrs
        trial.report(0.96, 640)
        trial.should_prune()
        assert study.trials[-1].system_attrs["completed_rung_0"] == 0.96
