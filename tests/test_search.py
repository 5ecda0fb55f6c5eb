"""Optuna pieces: the pruner (grouped by batch size, at samples seen), the sampler, the search space."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from lbsearch.config import FloatParam, PrunerConfig, SamplerConfig, TrainConfig
from lbsearch.search import GroupedPruner, make_pruner, make_sampler, suggest


def test_grouped_pruner_compares_only_trials_with_the_same_batch_size():
    """Median pruning within a batch size: a B=512 trial is judged against B=512 trials only."""
    study = optuna.create_study(direction="maximize", pruner=GroupedPruner(optuna.pruners.MedianPruner(n_startup_trials=1), "train.batch_size"))
    dist = {"train.batch_size": CategoricalDistribution([16, 512])}
    study.add_trial(create_trial(params={"train.batch_size": 16}, distributions=dist, value=0.8, intermediate_values={800: 0.75}))
    study.add_trial(create_trial(params={"train.batch_size": 512}, distributions=dist, value=0.7, intermediate_values={800: 0.55}))

    def judged(batch_size: int, value: float) -> bool:
        study.enqueue_trial({"train.batch_size": batch_size})
        trial = study.ask()
        assert trial.suggest_categorical("train.batch_size", [16, 512]) == batch_size
        trial.report(value, 800)
        verdict = trial.should_prune()
        study.tell(trial, state=TrialState.PRUNED)
        return verdict

    assert not judged(512, 0.60)  # better than the B=512 median (0.55), though far below B=16's
    assert judged(512, 0.50)
    assert judged(16, 0.70)    # worse than the B=16 median (0.75)


def test_pruners_are_built_in_samples_seen():
    train = TrainConfig(batch_size=32, budget_samples=6400, eval_every_samples=800)
    hb = make_pruner(PrunerConfig(name="hyperband"), train)
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource) == (800, 6400)
    grouped = make_pruner(PrunerConfig(group_by="train.batch_size", n_warmup_samples=1600), train)
    assert isinstance(grouped, GroupedPruner) and grouped.inner._n_warmup_steps == 1600
    assert isinstance(make_pruner(PrunerConfig(name="none"), train), optuna.pruners.NopPruner)


def test_seeded_tpe_repeats_its_draws_and_optional_floats_can_be_off():
    space = {"train.clip_norm": FloatParam(type="float", low=0.1, high=10.0, log=True, optional=True)}

    def draws(seed: int) -> list:
        study = optuna.create_study(sampler=make_sampler(SamplerConfig(seed=seed, n_startup_trials=10), space))
        out = []
        for _ in range(10):
            trial = study.ask()
            out.append(suggest(trial, space)["train.clip_norm"])
            study.tell(trial, 0.0)
        return out

    a = draws(0)
    assert a == draws(0) and a != draws(1)
    assert None in a and any(v is not None and 0.1 <= v <= 10 for v in a)  # "off" is a choice of its own beside the range
