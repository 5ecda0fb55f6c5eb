"""``gp_ordinal``: a Sobol start spread over the batch sizes, then a GP that sees B as one log-scale dimension (the value it
drew in the B's cell) and proposes only the declared choices."""

import math
import warnings

import optuna

from lbsearch.spec.config import CategoricalParam, FloatParam, SamplerConfig
from lbsearch.study.sampler import DRAWN, make_sampler, suggest

B, LR = "train.batch_size", "optimizer.lr"
SPACE = {B: CategoricalParam(type="categorical", choices=[16, 32, 64, 128]), LR: FloatParam(type="float", low=1e-4, high=1e-2, log=True),
         "schedule.warmup_fraction": FloatParam(type="float", low=0.0, high=0.3)}


def _value(b: int, lr: float) -> float:
    """Best at B = 16 and an lr that grows as sqrt(B)."""
    return -math.log(lr / (1e-3 * math.sqrt(b / 16))) ** 2 - 0.1 * math.log2(b / 16)


def _run(seed: int, n: int, space: dict = SPACE, warmup_cost: float = 0.0) -> optuna.Study:
    """``n`` trials of ``gp_ordinal`` on ``_value`` (less ``warmup_cost`` x the warmup fraction)."""
    study = optuna.create_study(direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number in range(n):
            study.sampler = make_sampler(SamplerConfig(name="gp_ordinal", seed=seed, n_startup_trials=5), space, number=number)
            trial = study.ask()
            p = suggest(trial, space)
            study.tell(trial, _value(p[B], p[LR]) - warmup_cost * p["schedule.warmup_fraction"])
    return study


def test_start_covers_every_batch_size_then_the_model_proposes_choices_from_the_cells_it_drew():
    for seed in range(3):
        study = _run(seed, 9)
        assert {t.params[B] for t in study.trials[1:5]} == {16, 32, 64, 128}, seed  # 4 Sobol points: one per B
        for t in study.trials[1:]:
            drawn = t.system_attrs[DRAWN + B]
            assert t.params[B] in (16, 32, 64, 128) and abs(math.log(drawn / t.params[B])) <= math.log(2) / 2 + 1e-9
            assert isinstance(t.distributions[B], optuna.distributions.CategoricalDistribution)  # stored as declared


def test_same_seed_same_draws():
    assert [t.params for t in _run(1, 7).trials] == [t.params for t in _run(1, 7).trials]


TABLE = {B: CategoricalParam(type="categorical", choices=[16, 32, 64, 128]), LR: CategoricalParam(type="categorical", choices=[1e-4, 1e-3, 1e-2]),
         "schedule.warmup_fraction": CategoricalParam(type="categorical", choices=[0.0, 0.3])}


def _table_run(seed: int, n: int) -> optuna.Study:
    """A space of choices only (24 configurations) whose best the model keeps wanting: it would draw it again and again."""
    return _run(seed, n, TABLE, warmup_cost=1.0)


def _config(t: optuna.trial.FrozenTrial) -> tuple:
    return tuple(t.params[k] for k in sorted(TABLE))


def test_in_a_table_the_model_never_draws_a_configuration_already_tried():
    for seed in range(3):
        trials = _table_run(seed, 24).trials
        model = trials[5:]  # from the first model draw on (the Sobol start draws the categorical warmup independently)
        for i, t in enumerate(model, start=5):
            assert _config(t) not in {_config(u) for u in trials[:i]}, (seed, i)
            drawn = t.system_attrs[DRAWN + B]
            assert abs(math.log(drawn / t.params[B])) <= math.log(2) / 2 + 1e-9  # the model sees a value in the B actually run
        assert len({_config(t) for t in trials}) >= 24 - 5, seed  # the table is all but used up in as many trials


def test_in_a_table_the_untried_configuration_is_the_one_the_model_ranks_first():
    """Not an arbitrary untried one: the best of the 24 (B 16, lr 1e-3, no warmup) comes within 9 trials in every seed, where
    the model's first draws and then a random untried configuration would take 12 on average."""
    for seed in range(3):
        trials = _table_run(seed, 9).trials
        assert (16, 1e-3, 0.0) in {(t.params[B], t.params[LR], t.params["schedule.warmup_fraction"]) for t in trials}, seed


def test_a_used_up_table_is_drawn_again_and_a_space_with_a_range_is_left_to_the_model():
    study = _table_run(0, 27)
    assert len({_config(t) for t in study.trials}) == 24 and len(study.trials) == 27  # no error once every configuration was tried
    ranged = _run(0, 12)  # lr a range: nothing to enumerate, the draws are the model's
    assert len(ranged.trials) == 12
