"""Successive halving with promotion, the study's side (``lbsearch.study.rungs``), on a real in-memory Optuna study whose
trials are asked, reported and told as the orchestrator does: the rungs, which paused trial is promoted (top 1/eta at
its rung, the highest rung first), the last resort that gives a study its complete trial, what ``n_trials`` counts, which
rung a trial runs to, what status shows and what the samplers see."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from lbsearch.spec import PAUSED, PAUSED_STATE, PROMOTED_STATE, RESUME_OF_ATTR, RETRY_OF_ATTR, RUNG_ATTR, PrunerConfig, TrainConfig
from lbsearch.study import configurations, last_resort, promotable, rung_to_run, rungs, trial_rows
from lbsearch.study.sampler import informed

RUNGS = [100, 300, 900]  # eval every 100, reduction factor 3, budget 1000


def _paused(study: optuna.Study, curve: dict[int, float], rung: int) -> int:
    """A new configuration that reported ``curve`` and was paused at ``rung`` (as the loop tells it); its number."""
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})
    trial.set_user_attr(RUNG_ATTR, rung)
    for step, value in curve.items():
        trial.report(value, step)
    trial.set_user_attr("reason", PAUSED)
    trial.set_user_attr("samples", max(curve))
    study.tell(trial, state=TrialState.PRUNED)
    return trial.number


def _study(direction: str = "maximize") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))


def test_rungs_are_the_first_evaluation_times_the_reduction_factor_below_the_budget():
    train = TrainConfig(batch_size=10, budget_samples=1000, eval_every_samples=100)
    assert rungs(PrunerConfig(name="asha_promote", reduction_factor=3, n_warmup_samples=0), train) == RUNGS
    assert rungs(PrunerConfig(name="asha_promote", reduction_factor=2, n_warmup_samples=250), train) == [250, 500]
    assert rungs(PrunerConfig(name="asha_promote"), TrainConfig(batch_size=10, budget_samples=100, eval_every_samples=100)) == []


def test_a_paused_trial_in_the_top_third_of_its_rung_is_promoted_and_only_once():
    study = _study()
    values = [0.5, 0.9, 0.7, 0.6, 0.8, 0.4]
    numbers = [_paused(study, {100: v}, 0) for v in values]
    found = promotable(study, RUNGS, 3)
    assert found is not None and found[0].number == numbers[1]  # the best of 6; the top 2 go on
    assert "#1 of 6 at rung 0 (100 samples), in the top 2" == found[1]
    study.enqueue_trial(found[0].params, user_attrs={RESUME_OF_ATTR: found[0].number})
    assert promotable(study, RUNGS, 3)[0].number == numbers[4]  # the second best; the first is taken
    study.enqueue_trial(study.trials[numbers[4]].params, user_attrs={RESUME_OF_ATTR: numbers[4]})
    assert promotable(study, RUNGS, 3) is None  # the third best is outside the top 2: a new configuration starts


def test_the_highest_rung_goes_first_and_a_minimised_metric_ranks_low_values_first():
    study = _study("minimize")
    for v in (3.0, 1.0, 2.0):
        _paused(study, {100: v}, 0)
    assert promotable(study, RUNGS, 3)[0].number == 1
    # a configuration paused at rung 1, reached through a promotion: its continuation carries the curve
    low = _paused(study, {100: 0.5}, 0)
    study.enqueue_trial(study.trials[low].params, user_attrs={RESUME_OF_ATTR: low})
    cont = study.ask()
    cont.set_user_attr(RESUME_OF_ATTR, low)
    cont.set_user_attr(RUNG_ATTR, 1)
    for step, value in {100: 0.5, 300: 0.2}.items():
        cont.report(value, step)
    cont.set_user_attr("reason", PAUSED)
    study.tell(cont, state=TrialState.PRUNED)
    for v in (0.3, 0.4):  # two more reach rung 1 (3 in all: the top 1 goes on)
        _paused(study, {100: 0.6, 300: v}, 1)
    found = promotable(study, RUNGS, 3)
    assert found[0].number == cont.number and "rung 1" in found[1]  # before trial 1, #2 of 6 at rung 0 (top 2)


def test_configurations_count_each_lineage_once_and_rung_to_run_follows_it():
    study = _study()
    first = _paused(study, {100: 0.5}, 0)
    study.enqueue_trial(study.trials[first].params, user_attrs={RESUME_OF_ATTR: first})
    cont = study.ask()
    assert rung_to_run(study.trials, cont) == 1
    cont.set_user_attr(RUNG_ATTR, 1)
    study.tell(cont, state=TrialState.FAIL)  # interrupted: its re-run goes on to the same rung
    study.enqueue_trial(cont.params, user_attrs={RETRY_OF_ATTR: cont.number, RESUME_OF_ATTR: first})
    retry = study.ask()
    assert rung_to_run(study.trials, retry) == 1
    study.tell(retry, 0.7)
    assert rung_to_run(study.trials, study.ask()) == 0  # a new configuration
    assert configurations(study.get_trials(), max_retries=1) == 1  # the paused one; its continuations are not new ones


def test_the_last_resort_promotes_the_best_of_the_highest_rung_until_a_trial_is_complete():
    study = _study()
    for v in (0.5, 0.6):  # two configurations: top 2 // 3 = 0, nothing is promotable
        _paused(study, {100: v}, 0)
    assert promotable(study, RUNGS, 3) is None
    found = last_resort(study, RUNGS)
    assert found[0].number == 1 and "highest rung 0" in found[1]
    study.enqueue_trial(found[0].params, user_attrs={RESUME_OF_ATTR: 1})
    assert last_resort(study, RUNGS) is None  # one waits
    study.tell(study.ask(), 0.9)
    assert last_resort(study, RUNGS) is None  # a trial is complete: the study may end


def test_status_shows_paused_and_promoted_trials_and_samplers_leave_promoted_ones_out():
    study = _study()
    first = _paused(study, {100: 0.5}, 0)
    second = _paused(study, {100: 0.4}, 0)
    study.enqueue_trial(study.trials[first].params, user_attrs={RESUME_OF_ATTR: first})
    cont = study.ask()
    cont.report(0.5, 100)
    study.tell(cont, 0.8)
    rows = {r["trial"]: r for r in trial_rows(study)}
    assert (rows[first]["state"], rows[first]["reason"]) == (PROMOTED_STATE, f"paused at rung 0 (100 samples); goes on as trial {cont.number}")
    assert (rows[second]["state"], rows[second]["reason"]) == (PAUSED_STATE, "paused at rung 0 (100 samples)")
    seen = [t.number for t in informed(study.get_trials(), study.directions)]
    assert seen == [second, cont.number]  # the promoted paused trial is its continuation now
