"""Optuna pieces: the pruner (grouped by batch size, at samples seen), the sampler, the search space."""

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from lbsearch.spec.config import CategoricalParam, FloatParam, PrunerConfig, SamplerConfig, TrainConfig
from lbsearch.study.pruner import GroupedPruner, make_pruner
from lbsearch.study.sampler import make_sampler, suggest


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
    hb = make_pruner(PrunerConfig(name="hyperband", n_warmup_samples=0, protect_warmup=False), train)
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource) == (800, 6400)
    grouped = make_pruner(PrunerConfig(name="median", group_by="train.batch_size", n_warmup_samples=1600, protect_warmup=False), train)
    assert isinstance(grouped, GroupedPruner) and grouped.inner._n_warmup_steps == 1600
    assert isinstance(make_pruner(PrunerConfig(name="none", protect_warmup=False), train), optuna.pruners.NopPruner)


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


def test_each_trial_number_gets_its_own_seed():
    from lbsearch.study.sampler import trial_seed

    seeds = {trial_seed(0, n) for n in range(1000)}
    assert len(seeds) == 1000 and trial_seed(0, 7) == trial_seed(0, 7) != trial_seed(1, 7)


def test_gp_and_nsga2_samplers_run_multi_objective():
    space = {"optimizer.lr": FloatParam(type="float", low=1e-4, high=1e-2, log=True)}
    for name in ("gp", "gp_ordinal", "nsga2", "tpe"):
        study = optuna.create_study(directions=["maximize", "minimize"])
        for n in range(6):
            study.sampler = make_sampler(SamplerConfig(name=name, seed=0, n_startup_trials=3), space, number=n)
            trial = study.ask()
            lr = suggest(trial, space)["optimizer.lr"]
            study.tell(trial, [lr, lr * lr])
        assert len(study.best_trials) >= 1, name


def test_objective_values_follow_the_study_and_penalise_a_missed_target():
    from lbsearch.spec.config import ObjectiveConfig
    from lbsearch.spec.protocol import TrialResult
    from lbsearch.study.sampler import objective_values

    objs = [ObjectiveConfig(name=n) for n in ("metric", "samples_to_target", "steps_to_target", "wall_time", "samples")]
    hit = TrialResult(state="complete", value=0.8, samples_to_target=640, steps_to_target=20, wall_s=12.5, samples=960, steps=30)
    assert objective_values(objs, hit, 960, 30) == [0.8, 640.0, 20.0, 12.5, 960.0]
    missed = hit.model_copy(update={"samples_to_target": None, "steps_to_target": None})
    assert objective_values(objs[1:3], missed, 960, 30) == [1920.0, 60.0]


def test_asha_prunes_in_samples_within_its_group():
    train = TrainConfig(batch_size=32, budget_samples=960, eval_every_samples=320)
    study = optuna.create_study(direction="minimize", pruner=make_pruner(PrunerConfig(name="asha", group_by="train.batch_size"), train))
    def run(batch_size: int, loss: float) -> bool:
        study.enqueue_trial({"train.batch_size": batch_size})
        trial = study.ask()
        trial.suggest_categorical("train.batch_size", [16, 32])
        trial.report(loss, 320)
        pruned = trial.should_prune()
        study.tell(trial, state=TrialState.PRUNED) if pruned else study.tell(trial, loss)
        return pruned

    assert not run(32, 0.5)
    assert run(32, 0.9)        # worse than the B=32 trial at the first rung (320 samples)
    assert not run(16, 0.9)    # alone in the B=16 group: promoted


def test_grid_with_constraints_holds_only_the_allowed_points():
    """A second seed at some batch sizes only: 3 B x 2 lr x seed 0, plus B = 16 x 2 lr x seed 1."""
    space = {"train.batch_size": CategoricalParam(type="categorical", choices=[8, 16, 32]),
             "optimizer.lr": CategoricalParam(type="categorical", choices=[1e-3, 2e-3]), "seed": CategoricalParam(type="categorical", choices=[0, 1])}
    study = optuna.create_study()
    seen = []
    for n in range(8):
        study.sampler = make_sampler(SamplerConfig(name="grid", seed=0), space, number=n, constraints=["seed == 0 or train.batch_size == 16"])
        trial = study.ask()
        seen.append(tuple(suggest(trial, space).values()))
        study.tell(trial, 0.0)
    assert len(set(seen)) == 8 and all(s == 0 or b == 16 for b, _, s in seen)


def test_grid_study_run_again_with_more_points_runs_only_the_new_ones():
    """Relaxing a grid study's constraints and running it again adds exactly the new points (matched by
    value, not by Optuna's grid index, which shifts when the filtered grid changes); a fresh study still
    takes the points in the grid's seeded order, trial k the k-th."""
    space = {"train.batch_size": CategoricalParam(type="categorical", choices=[8, 16, 32]),
             "optimizer.lr": CategoricalParam(type="categorical", choices=[1e-3, 2e-3]), "seed": CategoricalParam(type="categorical", choices=[0, 1])}
    study = optuna.create_study()

    def run(constraints: list[str], n: int) -> list[tuple]:
        out = []
        for _ in range(n):
            study.sampler = make_sampler(SamplerConfig(name="grid", seed=0), space, number=len(study.trials), constraints=constraints)
            trial = study.ask()
            out.append(tuple(suggest(trial, space).values()))
            study.tell(trial, 0.0)
        return out

    narrow = ["seed == 0 or train.batch_size == 16"]
    first = run(narrow, 8)
    order = make_sampler(SamplerConfig(name="grid", seed=0), space, constraints=narrow)._all_grids  # sorted names: lr, seed, batch
    assert first == [(b, lr, s) for lr, s, b in order]
    more = run(["seed == 0 or train.batch_size in [8, 16]"], 2)
    assert sorted(more) == [(8, 1e-3, 1), (8, 2e-3, 1)]
    assert len(set(first + more)) == 10


def test_shipped_lm_batch_scaling_grid_is_its_n_trials():
    from pathlib import Path

    from lbsearch.spec.load import load_study

    cfg, _ = load_study(Path(__file__).parent.parent.parent / "studies" / "lm_batch_scaling.yaml")
    grid = make_sampler(cfg.sampler, cfg.space, constraints=cfg.constraints)
    assert grid._n_min_trials == cfg.n_trials == 44  # 6 B x 5 lr, 2.5e-4 at B = 4, 8, a second seed at B = 4..32 with the three middle lr
