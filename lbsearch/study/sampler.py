"""Optuna pieces built from a StudyConfig: the sampler (one per name in ``spec.registry``), the search space and the objective values."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lbsearch.spec import DIVERGED_REASON, RESUME_OF_ATTR, CategoricalParam, FloatParam, IntParam, SamplerConfig
from lbsearch.study.access import SamplerView, constraint_attr, set_trial_system_attrs, trial_id

__all__ = ["trial_seed", "make_sampler", "suggest", "objective_values", "informed", "OFF", "DIVERGED"]

OFF = "off"
"""Value of the ``<key>:on`` switch that turns an ``optional: true`` float parameter into ``null``."""


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: a function of the study seed and the trial number only, so
    a study repeats from its seed while N workers and a resumed study never draw the same points."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def make_sampler(cfg: SamplerConfig, space: dict[str, Any], *, number: int | None = None, constraints: list[str] = ()) -> optuna.samplers.BaseSampler:
    """The sampler that draws trial ``number`` (None: seeded by the study seed alone). A Sobol
    sequence and a grid keep the study seed: their points are indexed by the trial, not drawn. A grid
    holds only the points that satisfy ``constraints`` (e.g. a second seed at some batch sizes only)."""
    seed = cfg.seed if number is None or cfg.name in ("qmc", "grid") else trial_seed(cfg.seed, number)
    return BUILDERS[cfg.name](cfg, seed, space, constraints)


BUILDERS: dict[str, Any] = {  # one per name in spec.registry.SAMPLERS (tests/study/test_sampler.py)
    "random": lambda cfg, seed, space, constraints: optuna.samplers.RandomSampler(seed=seed),
    "qmc": lambda cfg, seed, space, constraints: optuna.samplers.QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False),
    "grid": lambda cfg, seed, space, constraints: _GridSampler({k: list(p.choices) for k, p in space.items()}, seed=seed, constraints=constraints),
    "gp": lambda cfg, seed, space, constraints: _GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials, warn_independent_sampling=False),
    "gp_ordinal": lambda cfg, seed, space, constraints: _OrdinalGPSampler(cfg.seed, seed=seed, n_startup_trials=cfg.n_startup_trials, warn_independent_sampling=False),
    "nsga2": lambda cfg, seed, space, constraints: optuna.samplers.NSGAIISampler(seed=seed),
    # Optuna 5 changed TPE's defaults: state the ones lbsearch relies on.
    "tpe": lambda cfg, seed, space, constraints: _TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, multivariate=True, constant_liar=True),
}
"""The sampler of each name: ``(cfg, seed, space, constraints) -> sampler``."""


DIVERGED = "lbsearch.diverged"
"""The constraint the model-based samplers see: 1 for a diverged trial (violated), 0 for every other finished trial."""


def informed(trials: list[FrozenTrial], directions: list[StudyDirection], states: Any = None) -> list[FrozenTrial]:
    """The trials as GP and TPE see them: a diverged trial (stored as pruned, reason ``diverged``) appears complete, at
    the worst value of the complete trials, and violating the constraint ``DIVERGED``, which every other finished trial
    satisfies. GP, which models complete trials only, then learns where lr is too high (its constrained acquisition) and
    TPE counts it as infeasible (never among its good trials); for GP's ``n_startup_trials`` it counts as complete. A paused
    trial that was promoted (``asha_promote``) is left out: the trial that goes on with it holds its curve. Only
    the samplers see this: the stored trial stays pruned and is never the best. Before any trial is complete, nothing changes."""
    promoted = {t.user_attrs[RESUME_OF_ATTR] for t in trials if RESUME_OF_ATTR in t.user_attrs}  # asha_promote: its continuation stands for it
    trials = [t for t in trials if t.number not in promoted]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    worst = [(max if d == StudyDirection.MINIMIZE else min)(t.values[i] for t in complete) for i, d in enumerate(directions)] if complete else None
    seen = []
    for t in trials:
        diverged = t.state == TrialState.PRUNED and str(t.user_attrs.get("reason", "")).startswith(DIVERGED_REASON)
        if t.state == TrialState.COMPLETE or diverged and worst:
            t = FrozenTrial(number=t.number, trial_id=trial_id(t), state=TrialState.COMPLETE if diverged else t.state, value=None,
                            values=worst if diverged else t.values, datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
                            params=t.params, distributions=t.distributions, user_attrs=t.user_attrs, intermediate_values=t.intermediate_values,
                            system_attrs=t.system_attrs | {constraint_attr(DIVERGED): float(diverged)})
        if states is None or t.state in states:
            seen.append(t)
    return seen


def _informed_view(study: optuna.Study) -> SamplerView:
    """The study as GP and TPE see it: its trials ``informed``."""
    return SamplerView(study, informed)


class _GPSampler(optuna.samplers.GPSampler):
    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return super().sample_relative(_informed_view(study), trial, search_space)


class _TPESampler(optuna.samplers.TPESampler):
    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return super().sample_relative(_informed_view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return super().sample_independent(_informed_view(study), trial, param_name, param_distribution)


def _numeric(d: Any) -> bool:
    """A categorical of three or more numbers (e.g. B in [16, 32, 64, 128]): ordered, so a model can share strength between its values."""
    return isinstance(d, CategoricalDistribution) and len(d.choices) > 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices)


def _scale(d: CategoricalDistribution) -> tuple[Any, Any]:
    """Log where every choice is > 0 (batch sizes double), else linear: (to the scale, back)."""
    return (np.log, np.exp) if min(d.choices) > 0 else (float, float)


def _as_range(d: CategoricalDistribution) -> FloatDistribution:
    """Numeric choices as one range in which each owns the cell of the values nearest it (on its scale): the outer cells reach
    half a gap beyond the outer choices, as the inner ones reach half a gap to each side."""
    to, back = _scale(d)
    v = sorted(to(c) for c in d.choices)
    return FloatDistribution(float(back(v[0] - (v[1] - v[0]) / 2)), float(back(v[-1] + (v[-1] - v[-2]) / 2)), log=min(d.choices) > 0)


def _nearest(d: CategoricalDistribution, x: float) -> Any:
    to, _ = _scale(d)
    return min(d.choices, key=lambda c: abs(to(c) - to(x)))


DRAWN = "lbsearch.drawn:"
"""Trial system attr (+ the param name): where in its choice's cell ``gp_ordinal`` drew the value (what its model sees)."""


class _OrdinalGPSampler(_GPSampler):
    """GP for (B, lr, warmup) spaces: numeric choices (B) are one log-scale dimension of the model, not unordered categories,
    so what a trial says about the lr at one B informs the neighbouring Bs (the best lr moves smoothly with B): each choice owns a
    cell of the range, a draw runs at the choice whose cell it falls in, and the model sees the drawn value, as it sees an lr drawn
    from a range. The ``n_startup_trials`` before the model are scrambled Sobol points (one sequence per study seed: spread
    evenly over the space, not clumped as random draws are). Diverged trials are informative as with ``gp``. In a space of
    choices only (a table), each model draw is the untried configuration its acquisition function ranks first: no trial repeats one."""

    def __init__(self, study_seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sobol = optuna.samplers.QMCSampler(scramble=True, seed=study_seed, warn_independent_sampling=False)

    _pool: list[dict[str, Any]] | None = None
    """While a model draw is made in a table: the configurations not yet tried, among which it is made."""

    def _optimize_acqf(self, acqf, best_params):  # type: ignore[no-untyped-def]
        """In a table, the untried configuration the acquisition function ranks first (a repeat would measure nothing new);
        elsewhere, Optuna's optimisation over the whole space."""
        if not self._pool:
            return super()._optimize_acqf(acqf, best_params)
        x = acqf.search_space.get_normalized_params(self._pool, trial_params=self._pool)
        return x[int(np.argmax(acqf.eval_acqf_no_grad(x)))]

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        ranges = {k: _as_range(d) for k, d in search_space.items() if _numeric(d)}
        view = SamplerView(study, lambda trials, directions, states: [_ranged(t, ranges) for t in informed(trials, directions, states)])
        if not search_space or len(view.get_trials(states=(TrialState.COMPLETE,))) < self._n_startup_trials:
            drawn = self._sobol.sample_relative(study, trial, search_space | ranges)
        else:
            self._pool = _untried(study, trial, search_space)
            try:
                drawn = optuna.samplers.GPSampler.sample_relative(self, view, trial, search_space | ranges)
            finally:
                self._pool = None
        set_trial_system_attrs(study, trial, {DRAWN + k: v for k, v in drawn.items() if k in ranges})
        return {k: _nearest(search_space[k], v) if k in ranges else v for k, v in drawn.items()}


TABLE_LIMIT = 100_000
"""``gp_ordinal`` draws among the untried configurations of spaces of choices up to this many configurations."""


def _untried(study: optuna.Study, trial: FrozenTrial, space: dict[str, Any]) -> list[dict[str, Any]] | None:
    """In a space of choices only (a table, up to ``TABLE_LIMIT`` configurations), the configurations no other trial has tried
    (finished, running or paused: on the CPU a repeat would only measure the same numbers again), as param dicts. None: not a
    table, or every configuration has been tried (the model then draws as in any space)."""
    if not space or not all(isinstance(d, CategoricalDistribution) for d in space.values()) or np.prod([len(d.choices) for d in space.values()]) > TABLE_LIMIT:
        return None
    keys = list(space)
    tried = {tuple(t.params[k] for k in keys) for t in study.get_trials(deepcopy=False) if t.number != trial.number and set(keys) <= t.params.keys()}
    return [dict(zip(keys, c)) for c in itertools.product(*(space[k].choices for k in keys)) if c not in tried] or None


def _ranged(t: FrozenTrial, ranges: dict[str, FloatDistribution]) -> FrozenTrial:
    """The trial with its numeric choices as the values drawn in their ranges (the choice itself where it was not drawn: enqueued)."""
    if not ranges.keys() & t.params.keys():
        return t
    params = {k: float(t.system_attrs.get(DRAWN + k, v)) if k in ranges else v for k, v in t.params.items()}
    return FrozenTrial(number=t.number, trial_id=trial_id(t), state=t.state, value=None, values=t.values, datetime_start=t.datetime_start,
                       datetime_complete=t.datetime_complete, params=params, distributions=t.distributions | {k: r for k, r in ranges.items() if k in params},
                       user_attrs=t.user_attrs, intermediate_values=t.intermediate_values, system_attrs=t.system_attrs)


GRID_POINT = "lbsearch_grid_point"
"""Trial system attr: the grid point's values in the order of the sorted param names."""


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls ``study.stop()`` once the grid is used up, which only works inside
    ``Study.optimize``; lbsearch drives trials with ask/tell and counts ``n_trials`` itself. Points that
    violate a constraint are left out of the grid, so they are never suggested."""

    def __init__(self, search_space: dict[str, list], seed: int | None = None, constraints: list[str] = ()) -> None:
        super().__init__(search_space, seed=seed)
        if constraints:
            from lbsearch.spec import parse

            keep = parse(list(constraints), set(search_space))
            # Optuna keeps the grid as a list of value tuples in the order of sorted param names
            self._all_grids = [g for g in self._all_grids if all(c(dict(zip(self._param_names, g))) for c in keep)]
            self._n_min_trials = len(self._all_grids)

    def before_trial(self, study, trial) -> None:
        """The first grid point that no finished or running trial holds. Points are matched by their
        values, not by Optuna's grid index, so a study whose constraints change (e.g. a second seed added
        at more batch sizes) runs exactly the new points when it is run again, and none twice."""
        from lbsearch.study.access import set_trial_system_attrs, stored_trials

        if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return
        taken = set()
        for t in stored_trials(study):
            if t.number != trial.number and (t.state.is_finished() or t.state == optuna.trial.TrialState.RUNNING):
                point = t.system_attrs.get(GRID_POINT) or [t.params.get(n) for n in self._param_names]
                taken.add(tuple(point))
        free = [i for i, g in enumerate(self._all_grids) if tuple(g) not in taken]
        grid_id = free[0] if free else int(self._rng.rng.choice(len(self._all_grids)))  # used up: one again, as Optuna does
        set_trial_system_attrs(study, trial, {"search_space": self._search_space, "grid_id": grid_id, GRID_POINT: list(self._all_grids[grid_id])})

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        point = trial.system_attrs.get(GRID_POINT)
        if point is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        return point[self._param_names.index(param_name)]

    def after_trial(self, study, trial, state, values) -> None:
        pass


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Dotted experiment keys -> values for this trial. ``optional: true`` floats may come back None."""
    params: dict[str, Any] = {}
    for key, p in space.items():
        if isinstance(p, CategoricalParam):
            params[key] = trial.suggest_categorical(key, p.choices)
        elif isinstance(p, IntParam):
            params[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatParam):
            if p.optional and trial.suggest_categorical(f"{key}:on", ["on", OFF]) == OFF:
                params[key] = None
            else:
                params[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
    return params


def objective_values(objectives: list, result: Any, budget_samples: int, steps: int) -> list[float]:
    """The values a complete trial tells Optuna, in the order of the study's objectives. A target never
    reached counts as twice the budget (in samples or steps): behind every trial that reached it."""
    values = []
    for o in objectives:
        if o.name == "metric":
            values.append(float(result.value))
        elif o.name == "samples_to_target":
            values.append(float(result.samples_to_target if result.samples_to_target is not None else 2 * budget_samples))
        elif o.name == "steps_to_target":
            values.append(float(result.steps_to_target if result.steps_to_target is not None else 2 * steps))
        elif o.name == "wall_time":
            values.append(float(result.wall_s))
        else:
            values.append(float(result.samples))
    return values
