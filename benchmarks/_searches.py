"""The searches ``benchmarks/search_efficiency.py`` replays over a table, each a sampler, a pruner and the space it
searches: lbsearch's (built by its own ``make_sampler`` / ``make_pruner``, each trial's sampler seeded by (seed, trial
number) as a study seeds it, a diverged trial told as the worker tells it) and Optuna's as they come (one sampler seeded
by the seed for the whole run, Optuna's default arguments, steps = samples seen)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna

from lbsearch.spec.config import ExperimentConfig, FloatParam, PrunerConfig, SamplerConfig
from lbsearch.spec.plan import lr_for_batch
from lbsearch.study.pruner import make_pruner
from lbsearch.study.sampler import make_sampler

ALPHA = "optimizer.lr_scaling_alpha"
LR, BATCH = "optimizer.lr", "train.batch_size"


@dataclass(frozen=True)
class Search:
    """``sampler`` / ``pruner``: lbsearch configs, or Optuna builders ``seed -> sampler`` / ``() -> pruner``.
    ``alpha``: lr searched as base lr x (B / reference_batch_size)^alpha, alpha in [0, 1] (``optimizer.lr_scaling_alpha``)."""

    sampler: SamplerConfig | Callable[[int], optuna.samplers.BaseSampler]
    pruner: PrunerConfig | Callable[[], optuna.pruners.BasePruner]
    alpha: bool = False
    note: str = ""


def searches(default: tuple[SamplerConfig, PrunerConfig]) -> dict[str, Search]:
    """Every search, by name; ``default``: lbsearch's default sampler and pruner (a study that names neither)."""
    tpe, pruner = default
    gp = SamplerConfig(name="gp", n_startup_trials=tpe.n_startup_trials)
    return {
        "default": Search(tpe, pruner, note=f"lbsearch's default: {tpe.name} + {pruner.name} pruning at equal samples seen"),
        "tpe_asha": Search(tpe, PrunerConfig(name="asha"), note="lbsearch TPE + ASHA"),
        "tpe_hyperband": Search(tpe, PrunerConfig(name="hyperband"), note="lbsearch TPE + Hyperband"),
        "tpe_percentile": Search(tpe, PrunerConfig(name="percentile"), note="lbsearch TPE + percentile pruner (75 %)"),
        "tpe_patient": Search(tpe, PrunerConfig(name="patient"), note="lbsearch TPE + patient median pruner (patience 2)"),
        "tpe_alpha": Search(tpe, pruner, alpha=True, note="lbsearch TPE + the default pruner over (B, base lr, alpha, warmup)"),
        "tpe_nopruning": Search(tpe, PrunerConfig(name="none"), note="lbsearch TPE, no pruning"),
        "gp": Search(gp, PrunerConfig(name="none"), note="lbsearch GP (diverged trials informative), no pruning"),
        "gp_alpha": Search(gp, PrunerConfig(name="none"), alpha=True, note="lbsearch GP over (B, base lr, alpha, warmup), no pruning"),
        "random": Search(SamplerConfig(name="random"), PrunerConfig(name="none"), note="random search, no pruning"),
        "grid": Search(SamplerConfig(name="grid"), PrunerConfig(name="none"), note="the grid in its order, no pruning"),
        "optuna_tpe_median": Search(lambda s: optuna.samplers.TPESampler(seed=s), optuna.pruners.MedianPruner, note="Optuna as it comes: TPESampler + MedianPruner"),
        "optuna_tpe_asha": Search(lambda s: optuna.samplers.TPESampler(seed=s), optuna.pruners.SuccessiveHalvingPruner,
                                  note="Optuna as it comes: TPESampler + SuccessiveHalvingPruner"),
        "optuna_tpe_hyperband": Search(lambda s: optuna.samplers.TPESampler(seed=s), optuna.pruners.HyperbandPruner,
                                       note="Optuna as it comes: TPESampler + HyperbandPruner"),
        "optuna_gp": Search(lambda s: optuna.samplers.GPSampler(seed=s), optuna.pruners.NopPruner, note="Optuna as it comes: GPSampler, no pruning"),
        "optuna_random": Search(lambda s: optuna.samplers.RandomSampler(seed=s), optuna.pruners.NopPruner, note="Optuna as it comes: RandomSampler"),
    }


def pruner_of(search: Search, base: ExperimentConfig) -> optuna.pruners.BasePruner:
    return make_pruner(search.pruner, base.train) if isinstance(search.pruner, PrunerConfig) else search.pruner()


def sampler_of(search: Search, seed: int, number: int, searched: dict[str, Any], shared: list) -> optuna.samplers.BaseSampler:
    """lbsearch's: a sampler per trial seeded by (seed, number); Optuna's: one for the run (kept in ``shared``)."""
    if isinstance(search.sampler, SamplerConfig):
        return make_sampler(search.sampler.model_copy(update={"seed": seed}), searched, number=number)
    if not shared:
        shared.append(search.sampler(seed))
    return shared[0]


def alpha_space(searched: dict[str, Any]) -> dict[str, Any]:
    """The searched space with alpha in [0, 1] after the (base) lr range."""
    out: dict[str, Any] = {}
    for k, p in searched.items():
        out[k] = p
        if k == LR:
            out[ALPHA] = FloatParam(type="float", low=0.0, high=1.0)
    return out


def to_lr(params: dict[str, Any], base: ExperimentConfig) -> dict[str, Any]:
    """Drawn (B, base lr, alpha, ...) -> (B, lr, ...) by ``lr_for_batch``, the one place lbsearch applies alpha."""
    opt = base.optimizer.model_copy(update={"lr": params[LR], "lr_scaling": "none", "lr_scaling_alpha": params[ALPHA]})
    lr = lr_for_batch(opt, params[BATCH])
    return {k: (lr if k == LR else v) for k, v in params.items() if k != ALPHA}
