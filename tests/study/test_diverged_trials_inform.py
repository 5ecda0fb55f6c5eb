"""A diverged trial (stored as pruned, reason ``diverged``) informs GP and TPE (``lbsearch.study.sampler.informed``): GP's
next proposals leave the lr that diverged at their batch size, where Optuna's own GP keeps proposing it; TPE never ranks a
diverged trial among its good ones. The stored trials are unchanged, so a diverged trial is never the best."""

import math
import warnings

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from lbsearch.spec import DIVERGED_REASON, SamplerConfig
from lbsearch.study import best_trial
from lbsearch.study.sampler import DIVERGED, informed, make_sampler, trial_seed

B, LR = "train.batch_size", "optimizer.lr"
DIST = {B: CategoricalDistribution([32, 256]), LR: FloatDistribution(1e-5, 1e-1, log=True)}


def _best_lr(b: int) -> float:
    return 1e-3 * math.sqrt(b / 32)


def _value(b: int, lr: float) -> float:
    """Validation accuracy, best at ``_best_lr(B)``; None: the trial diverged (lr over 3x the best at its B)."""
    return None if lr > 3 * _best_lr(b) else 0.9 - 0.05 * math.log10(lr / _best_lr(b)) ** 2


def _tell(study: optuna.Study, b: int, lr: float) -> None:
    value = _value(b, lr)
    if value is None:  # as lbsearch tells it: pruned, reason diverged, its evaluations before it diverged kept
        study.add_trial(create_trial(state=TrialState.PRUNED, params={B: b, LR: lr}, distributions=DIST, user_attrs={"reason": DIVERGED_REASON},
                                     intermediate_values={1000: 0.85}))
    else:
        study.add_trial(create_trial(value=value, params={B: b, LR: lr}, distributions=DIST))


def _history() -> optuna.Study:
    """Nine trials: six complete, and three whose high lr diverged (one at B = 32, two at B = 256)."""
    study = optuna.create_study(direction="maximize")
    for b, lr in ((32, 1e-4), (32, 1e-3), (32, 3e-2), (256, 3e-4), (256, 2e-3), (256, 2e-2), (256, 6e-2), (32, 1e-5), (256, 1e-2)):
        _tell(study, b, lr)
    return study


def _optuna_own(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler lbsearch builds, as Optuna ships it: a diverged trial is just a pruned one."""
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True, constant_liar=True)


def _share_diverged(name: str, ours: bool, n: int = 10) -> float:
    """The share of the next ``n`` trials (each told as it ends, as the study loop does) whose lr diverges at their B."""
    study, cfg, diverged = _history(), SamplerConfig(name=name, seed=7, n_startup_trials=5), 0
    for _ in range(n):
        number = len(study.trials)
        study.sampler = make_sampler(cfg, {}, number=number) if ours else _optuna_own(name, trial_seed(cfg.seed, number))
        trial = study.ask(DIST)
        b, lr = trial.params[B], trial.params[LR]
        diverged += _value(b, lr) is None
        study.tell(trial, state=TrialState.FAIL)
        _tell(study, b, lr)
    return diverged / n


def test_gp_stops_proposing_the_lr_that_diverged():
    """Optuna's GP models complete trials only: blind to the divergences, it keeps proposing lr there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = _share_diverged("gp", False), _share_diverged("gp", True)
    assert before >= 0.5 and after <= before / 3, (before, after)


def test_tpe_avoids_the_lr_that_diverged_as_before():
    """TPE already counts a pruned trial among its bad ones; seeing a diverged one as infeasible keeps that."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = _share_diverged("tpe", False, 20), _share_diverged("tpe", True, 20)
    assert after <= before and after <= 0.25, (before, after)


def test_tpe_never_ranks_a_diverged_trial_among_its_good_ones():
    """Where few trials are complete (ASHA stops most), TPE fills its good group with the pruned trials that got furthest:
    a high lr that trained fast, then diverged, is one of them unless it is seen as infeasible."""
    from optuna.samplers._tpe.sampler import _split_trials

    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.9, params={B: 32, LR: 1e-3}, distributions=DIST))
    for lr in (1e-4, 3e-4, 1e-3):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={B: 32, LR: lr}, distributions=DIST, intermediate_values={1000: 0.7}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={B: 256, LR: 5e-2}, distributions=DIST, user_attrs={"reason": DIVERGED_REASON},
                                 intermediate_values={1000: 0.88, 2000: 0.9}))
    good, _ = _split_trials(study, study.get_trials(), 2)
    assert 4 in [t.number for t in good]
    good, _ = _split_trials(study, informed(study.get_trials(), study.directions), 2)
    assert [t.number for t in good] == [0, 1]


def test_the_samplers_view_leaves_the_stored_trials_and_the_best_alone():
    study = _history()
    seen = {t.number: t for t in informed(study.get_trials(), study.directions)}
    stored = study.get_trials()
    diverged = [t for t in stored if t.user_attrs.get("reason") == DIVERGED_REASON]
    worst = min(t.value for t in stored if t.state == TrialState.COMPLETE)
    for t in diverged:  # complete at the worst value, violating the constraint, in the samplers' view only
        assert seen[t.number].state == TrialState.COMPLETE and seen[t.number].values == [worst]
        assert seen[t.number].constraints == {DIVERGED: 1.0} and t.state == TrialState.PRUNED and t.constraints == {}
    assert all(seen[t.number].constraints == {DIVERGED: 0.0} for t in stored if t.state == TrialState.COMPLETE)
    assert best_trial(study).number == study.best_trial.number == 1  # (32, 1e-3): the diverged trials stay out
    study.sampler = make_sampler(SamplerConfig(name="gp", n_startup_trials=2), {}, number=len(stored))
    study.tell(study.ask(DIST), state=TrialState.FAIL)
    assert [t.state for t in study.get_trials()][: len(stored)] == [t.state for t in stored]
    assert informed([], study.directions) == [] and informed(diverged, study.directions)[0].state == TrialState.PRUNED  # no complete trial: left as is
