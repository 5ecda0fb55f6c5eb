"""No pruner stops a trial while its own lr is still warming up (``pruner.protect_warmup``): on real Optuna studies with
the pruners ``make_pruner`` builds, a trial in its warmup goes on where the same pruner unguarded stops it, and once its
warmup is over it is pruned as before; the trial process tells the pruner where its warmup ends (``Reporter.plan``)."""

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lbsearch.link import Reporter
from lbsearch.spec import PrunerConfig, TrainConfig, TrialPlan
from lbsearch.spec.plan import eval_points
from lbsearch.spec.protocol import OptunaRef, WorkerSpec
from lbsearch.spec.registry import PRUNERS
from lbsearch.study import note_warmup, open_storage, trial_id
from lbsearch.study.pruner import WARMUP_END, WarmupGuard, make_pruner

TRAIN = TrainConfig(batch_size=32, budget_samples=960, eval_every_samples=320)
CURVES = ({320: 0.60, 640: 0.70, 960: 0.75}, {320: 0.70, 640: 0.78, 960: 0.82}, {320: 0.80, 640: 0.85, 960: 0.88}, {320: 0.90, 640: 0.91, 960: 0.92})
BAD = {320: 0.10, 640: 0.09, 960: 0.08}  # below every finished curve at every point, never improving


def _plan(warmup_steps: int) -> TrialPlan:
    """B = 32, 30 steps, evaluations after steps 10, 20 and 30 (320, 640, 960 samples)."""
    return TrialPlan(batch_size=32, processes=1, max_micro_batch=32, micro_batch=32, accumulation=1, lr=1e-3, steps=30, warmup_steps=warmup_steps,
                     budget_samples=960, evals=tuple(eval_points(960, 320, 32)), precision="no")


def _verdicts(protect: bool, warmup_steps: int, **pruner) -> list[bool]:
    """Four finished curves, each run live through the pruner (so ASHA records their rungs); then a bad trial with this warmup."""
    settings = {"n_warmup_samples": 0, "reduction_factor": 3, "percentile": 75.0, "wraps": "median", "min_delta": 0.0}
    study = optuna.create_study(direction="maximize", pruner=make_pruner(PrunerConfig(**settings | pruner, protect_warmup=protect), TRAIN))
    for curve in CURVES:
        t = study.ask()
        for samples, value in curve.items():
            t.report(value, samples)
            t.should_prune()
        study.tell(t, curve[960])
    trial, out = study.ask(), []
    note_warmup(trial, _plan(warmup_steps))
    for samples, value in BAD.items():
        trial.report(value, samples)
        out.append(bool(trial.should_prune()))
    return out


def test_the_warmup_ends_at_the_first_evaluation_after_its_last_step():
    assert _plan(0).warmup_end_samples == 0
    assert _plan(10).warmup_end_samples == 320  # over at the first evaluation's step
    assert _plan(15).warmup_end_samples == 640  # still rising at 320 samples
    assert _plan(30).warmup_end_samples == 960


@pytest.mark.parametrize(("pruner", "warmup_steps"), [({"name": "median"}, 15), ({"name": "percentile"}, 15), ({"name": "asha"}, 15),
                                                      ({"name": "median", "group_by": "x"}, 15), ({"name": "patient", "patience": 0}, 25)])
def test_a_trial_in_its_warmup_is_not_pruned_where_it_would_be_and_is_once_its_warmup_is_over(pruner, warmup_steps):
    unguarded = _verdicts(False, warmup_steps, n_startup_trials=1, **pruner)
    guarded = _verdicts(True, warmup_steps, n_startup_trials=1, **pruner)
    over = [samples >= _plan(warmup_steps).warmup_end_samples for samples in BAD].index(True)  # the first evaluation past the warmup
    assert unguarded.index(True) < over  # the pruner stops it while its lr is still rising...
    assert not any(guarded[:over])  # ...the guard does not
    assert guarded[over:] == unguarded[over:] and any(guarded[over:])  # past its warmup the pruner's verdicts stand as before (ASHA: at its next rung)
    assert _verdicts(True, 0, n_startup_trials=1, **pruner) == unguarded  # a trial without warmup is not protected


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_name_is_guarded(name):
    assert isinstance(make_pruner(PrunerConfig(name=name, protect_warmup=True), TRAIN), WarmupGuard)
    assert not isinstance(make_pruner(PrunerConfig(name=name, protect_warmup=False), TRAIN), WarmupGuard)


def test_the_trial_process_tells_the_pruner_its_warmup_end_through_its_own_storage_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    for curve in CURVES:
        study.add_trial(create_trial(value=curve[960], intermediate_values=curve, state=TrialState.COMPLETE))
    ref = OptunaRef(storage=url, study_name="s", trial_id=trial_id(study.ask()),
                    pruner=PrunerConfig(name="median", n_startup_trials=1, protect_warmup=True).model_dump())
    rep = Reporter(WorkerSpec(experiment={"task": "single_label", "data": {"max_length": 48}, "train": TRAIN.model_dump()}, optuna=ref), is_main=True)
    rep.plan(_plan(15).to_dict())
    assert study.trials[-1].user_attrs[WARMUP_END] == 640
    assert [rep.should_prune(BAD[s], s) for s in (320, 640)] == [False, True]
