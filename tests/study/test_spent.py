"""What a study's trials trained (``spent``), as its ``budget:`` counts it: each trial's own samples, tokens or
device-hours, a re-run resumed from a checkpoint counted once, on a real Optuna study with the user attributes the
loop sets (``_tell``, ``_resume``)."""

import datetime as dt
import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from lbsearch.spec import CONFIG_ATTR, INTERRUPTED, RESUMED_FROM, RETRY_OF_ATTR, SPEC_ATTR
from lbsearch.study.views import budget_line, budget_used, spent, summary

DIST = {"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)}
T0 = dt.datetime(2026, 1, 1)


def _config(task: str = "single_label", processes: int = 1) -> str:
    return json.dumps({"task": task, "data": {"max_length": 64}, "launcher": {"processes": processes}})


def _trial(state, seconds: float, **attrs):
    curve = attrs.pop("curve", {})
    return FrozenTrial(number=0, trial_id=0, state=state, value=0.8 if state == TrialState.COMPLETE else None, params={"optimizer.lr": 1e-3},
                       distributions=DIST, user_attrs=attrs, system_attrs={}, intermediate_values=curve, datetime_start=T0,
                       datetime_complete=T0 + dt.timedelta(seconds=seconds))


def _study(task: str = "single_label", budget: dict | None = None) -> optuna.Study:
    """Trial 0 complete (960 samples); trial 1 interrupted after its evaluation at 320 samples (told with 0, its
    checkpoint at 384); trial 2 its re-run, resumed from that checkpoint to 960; trial 3 a constraint skip."""
    unit = 64 if task == "causal_lm" else 1
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SPEC_ATTR, json.dumps({"study": {"name": "s", "budget": budget}}))
    study.add_trial(_trial(TrialState.COMPLETE, 40, samples=960, wall_s=36.0, **{CONFIG_ATTR: _config(task, processes=2)}))
    study.add_trial(_trial(TrialState.FAIL, 18, samples=0, reason=INTERRUPTED, curve={320 * unit: 0.6}, **{CONFIG_ATTR: _config(task)}))
    study.add_trial(_trial(TrialState.COMPLETE, 25, samples=960, wall_s=20.0, curve={320 * unit: 0.6, 640 * unit: 0.7, 960 * unit: 0.8},
                           **{RETRY_OF_ATTR: 1, RESUMED_FROM["trial"]: 1, RESUMED_FROM["samples"]: 384, CONFIG_ATTR: _config(task)}))
    study.add_trial(_trial(TrialState.PRUNED, 0, reason="constraint: optimizer.lr < 1e-2"))
    return study


def test_a_resumed_trial_counts_only_what_it_trained_after_its_checkpoint():
    # 960 + 384 (the interrupted trial, up to the checkpoint its re-run took over) + (960 - 384) (the re-run): not 960 + 384 + 960
    assert spent(_study(), "samples") == 1920


def test_a_trial_without_a_re_run_counts_its_last_report():
    study = _study()
    study.add_trial(_trial(TrialState.FAIL, 5, samples=0, reason=INTERRUPTED, config=_config(), curve={320: 0.5}))
    assert spent(study, "samples") == 1920 + 320


def test_tokens_and_device_hours():
    assert spent(_study("causal_lm"), "tokens") == 1920 * 64
    # own clocks (an interrupted trial without wall_s: Optuna's start to end) x processes: 36 x 2 + 18 + 20 (+ 0 for the skip)
    assert spent(_study(), "device_hours") == pytest.approx((36 * 2 + 18 + 20) / 3600)


def test_a_running_trial_is_not_counted_yet():
    study = _study()
    study.ask()
    assert spent(study, "samples") == 1920


def test_budget_used_reads_the_stored_spec_and_says_it_in_one_line():
    assert budget_used(_study()) is None
    used = budget_used(_study(budget={"samples": 20000, "tokens": None, "device_hours": None}))
    assert used == (1920, 20000.0, "samples")
    assert budget_line(*used) == "budget: 1,920 / 20,000 samples (10%)"
    assert budget_line(12480, 20000, "samples") == "budget: 12,480 / 20,000 samples (62%)"
    assert budget_line(0.5, 2, "device_hours") == "budget: 0.50 / 2.00 device-hours (25%)"
    study = _study(budget={"samples": None, "tokens": None, "device_hours": 1.0})
    assert summary(study, 10).endswith("· budget: 0.03 / 1.00 device-hours (3%)")
