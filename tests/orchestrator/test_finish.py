"""The end of a study: the Pareto front's plot."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from lbsearch.orchestrator.finish import front_plot
from lbsearch.spec import OBJECTIVES_ATTR

DIST = {"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)}


def _two_objective_study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["metric", "samples_to_target"])
    for lr, acc, samples in ((1e-4, 0.80, 3000), (1e-3, 0.78, 1000), (1e-2, 0.70, 2000)):
        study.add_trial(create_trial(params={"optimizer.lr": lr}, distributions=DIST, values=[acc, samples]))
    return study


def test_thefront_plot_is_drawn_from_two_front_trials(tmp_path):
    study = _two_objective_study()
    assert front_plot(study, tmp_path / "front.png")
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    single = optuna.create_study(directions=["maximize", "minimize"])
    single.add_trial(create_trial(params={"optimizer.lr": 1e-3}, distributions=DIST, values=[0.8, 100]))
    assert not front_plot(single, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
