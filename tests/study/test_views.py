"""Views of a study: rows, the best trial, the Pareto front and picking from it, what counts."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from lbsearch.spec import METRIC_ATTR, OBJECTIVES_ATTR
from lbsearch.study import RUN_ID
from lbsearch.study.views import best_trial, counted, pareto, pick, reason, trial_rows

DIST = {"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)}


def _two_objective_study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["metric", "samples_to_target"])
    study.set_user_attr(METRIC_ATTR, "accuracy")
    for lr, acc, samples in ((1e-4, 0.80, 3000), (1e-3, 0.78, 1000), (1e-2, 0.70, 2000), (3e-4, 0.80, 3000)):
        study.add_trial(create_trial(params={"optimizer.lr": lr}, distributions=DIST, values=[acc, samples],
                                     user_attrs={"validation_accuracy": acc, "test_accuracy": acc - 0.01}))
    study.add_trial(create_trial(params={"optimizer.lr": 1e-5}, distributions=DIST, state=TrialState.PRUNED,
                                 user_attrs={"reason": "constraint: optimizer.lr > 1e-5"}))
    return study


def test_front_and_picks():
    study = _two_objective_study()
    assert [t.number for t in pareto(study)] == [0, 1, 3]  # trial 2 is beaten by trial 1 on both
    assert pick(study).number == 0  # best accuracy on the front; the tie with trial 3 goes to the earlier
    assert pick(study, "samples_to_target").number == 1
    assert best_trial(study).number == 0


def test_rows_name_each_objective():
    rows = trial_rows(_two_objective_study())
    assert rows[1]["metric"] == 0.78 and rows[1]["samples_to_target"] == 1000 and "value" not in rows[1]
    assert rows[4]["state"] == "pruned" and rows[4]["metric"] is None


def test_constraint_skips_do_not_count_toward_n_trials():
    t = _two_objective_study().trials[4]
    assert reason(t).startswith("constraint") and not counted(t, max_retries=1)


def test_single_objective_best_is_by_value():
    study = optuna.create_study(direction="minimize")
    for v in (0.5, 0.3, 0.3):
        study.add_trial(create_trial(params={"optimizer.lr": 1e-3}, distributions=DIST, value=v))
    assert best_trial(study).number == 1 and trial_rows(study)[0]["value"] == 0.5


@pytest.mark.parametrize("objectives", [["metric"], ["metric", "samples_to_target"]])
def test_status_shows_every_key_of_a_row_once(objectives):
    """One definition of the status columns: a key added to the rows and not to the columns fails here."""
    from lbsearch.study import status_columns, trial_rows

    study = optuna.create_study(directions=["maximize"] * len(objectives))
    study.set_user_attr(OBJECTIVES_ATTR, objectives)
    study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 1e-3}, distributions={"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
                                              values=[0.5] * len(objectives), user_attrs={"samples": 10}))
    cols = status_columns(study)
    assert len(cols) == len(set(cols))
    assert set(cols) == set(trial_rows(study)[0]) - {RUN_ID}
