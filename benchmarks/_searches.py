"""The searches ``benchmarks/search_efficiency.py`` replays over a table, each a sampler, a pruner and the space it
searches: lbsearch's (built by its own ``make_sampler`` / ``make_pruner``, each trial's sampler seeded by (seed, trial
number) as a study seeds it, a diverged trial told as the worker tells it) and Optuna's as they come (one sampler seeded
by the seed for the whole run, Optuna's default arguments, steps = samples seen)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from _bench import table

from lbsearch.spec.config import ExperimentConfig, FloatParam, PrunerConfig, SamplerConfig
from lbsearch.spec.plan import lr_for_batch
from lbsearch.study.pruner import make_pruner
from lbsearch.study.sampler import make_sampler

DEFAULT_CHOICES = "default_choices"
"""The default search over the space declared as the table's choices (B, lr and warmup each a list), as a user declares a table."""
GOALS = {"grid": 0.3, "random": 0.5}
"""The default search's median compute at most this share of each baseline's."""
SUCCESS_GOAL = 0.9
"""The default search gets within tolerance in at least this share of seeds."""
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
    choices: bool = False
    """The space as the table's choices (every dimension categorical) instead of ranges snapped to the table."""


def searches(default: tuple[SamplerConfig, PrunerConfig]) -> dict[str, Search]:
    """Every search, by name; ``default``: lbsearch's default sampler and pruner (a study that names neither)."""
    sampler, pruner = default
    # every pruner below names protect_warmup (off; the *_protect searches turn it on), not the default's
    tpe, median = SamplerConfig(name="tpe"), PrunerConfig(name="median", protect_warmup=False)
    gp = SamplerConfig(name="gp", n_startup_trials=tpe.n_startup_trials)
    tpe10 = tpe.model_copy(update={"n_startup_trials": 10})
    patient = PrunerConfig(name="patient", patience=2, min_delta=0.0, protect_warmup=False)
    percentile = PrunerConfig(name="percentile", percentile=75.0, protect_warmup=False)
    tpe10_is, patient_is = f"TPE ({tpe10.n_startup_trials} start-up trials)", f"patient median (patience {patient.patience})"
    return {
        "default": Search(sampler, pruner, note=f"lbsearch's default: {sampler.name} sampler, {pruner.name} pruner"),
        DEFAULT_CHOICES: Search(sampler, pruner, choices=True, note=f"lbsearch's default ({sampler.name}, {pruner.name}) with the space declared as the table's choices"),
        "tpe_median": Search(tpe, median, note="lbsearch TPE + median pruning at equal samples seen"),
        "tpe_asha": Search(tpe, PrunerConfig(name="asha", protect_warmup=False), note="lbsearch TPE + ASHA"),
        "tpe_hyperband": Search(tpe, PrunerConfig(name="hyperband", protect_warmup=False), note="lbsearch TPE + Hyperband"),
        "tpe_asha_promote": Search(tpe, PrunerConfig(name="asha_promote", protect_warmup=False), note="lbsearch TPE + asha_promote: paused at rungs, resumed when promoted (_promote.py)"),
        "tpe_percentile": Search(tpe, percentile, note=f"lbsearch TPE + percentile pruner ({percentile.percentile:g} %)"),
        "tpe_patient": Search(tpe, patient, note=f"lbsearch TPE + {patient_is}"),
        # lbsearch's pruners never stopping a trial in its own lr warmup (pruner.protect_warmup), with the sampler choices that exist
        **{f"{name}_protect": Search(sampler, pc.model_copy(update={"protect_warmup": True}), note=f"{note}, no trial pruned in its lr warmup")
           for name, sampler, pc, note in [("tpe_median", tpe, median, "lbsearch TPE + median"),
                                           ("tpe10_median", tpe10, median, f"lbsearch {tpe10_is} + median"),
                                           ("tpe_patient", tpe, patient, f"lbsearch TPE + {patient_is}"),
                                           ("tpe10_patient", tpe10, patient, f"lbsearch {tpe10_is} + {patient_is}"),
                                           ("gp_median", gp, median, "lbsearch GP (diverged trials informative) + median")]},
        "tpe10_patient": Search(tpe10, patient, note=f"lbsearch {tpe10_is} + {patient_is}"),
        "tpe_alpha": Search(tpe, median, alpha=True, note="lbsearch TPE + median over (B, base lr, alpha, warmup)"),
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


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians count a miss as infinitely late (null when the median run missed)."""
    found = [r["samples_to_best"] for r in runs if r["samples_to_best"] is not None]
    med = statistics.median([math.inf if r["samples_to_best"] is None else r["samples_to_best"] for r in runs])
    return {
        "samples_to_best_median": None if math.isinf(med) else med,
        "samples_to_best_mean_of_successes": statistics.mean(found) if found else None,
        "samples_to_best_runs": [r["samples_to_best"] for r in runs],
        "trials_to_best_runs": [r["trials_to_best"] for r in runs],
        "success_rate": len(found) / len(runs),
        "samples_spent_when_missed": [r["samples_total"] for r in runs if r["samples_to_best"] is None],
        "samples_total_median": statistics.median(r["samples_total"] for r in runs),
        "pruned_trials_mean": statistics.mean(r["pruned"] for r in runs),
    }


def ratio(tpe: float | None, other: float | None, goal: float) -> tuple[float | None, bool]:
    """tpe / other and whether it meets the goal; a baseline whose median run missed is beaten by any finite tpe."""
    if tpe is None:
        return None, False
    return (None, True) if other is None else (tpe / other, tpe / other <= goal)


def goals(sums: dict[str, dict[str, Any]], t: str, name: str = "default") -> dict[str, Any]:
    """Search ``name`` (the default, or the default over choices: keys ``<t>.<name>.goal_*``) against GOALS (random and grid, medians) and SUCCESS_GOAL."""
    out: dict[str, Any] = {}
    p = t if name == "default" else f"{t}.{name}"
    met = [sums[name]["success_rate"] >= SUCCESS_GOAL]
    out |= {f"{p}.goal_success_rate": SUCCESS_GOAL, f"{p}.goal_success_met": met[0]}
    for other, goal in GOALS.items():
        if other in sums:
            r, ok = ratio(sums[name]["samples_to_best_median"], sums[other]["samples_to_best_median"], goal)
            out |= {f"{p}.ratio_{name}_over_{other}": r, f"{p}.goal_ratio_{name}_over_{other}": goal, f"{p}.goal_{name}_over_{other}_met": ok}
            met.append(ok)
    out[f"{p}.goal_met"] = all(met)
    return out


def print_summary(sums: dict[str, dict[str, Any]], out: dict[str, Any], t: str, tokens: int) -> None:
    def cell(v: float | None) -> str:
        return "miss" if v is None else f"{v:.0f}"

    print(table(["search", "samples to best (median)", "tokens" if tokens > 1 else "", "mean of successes", "success", "per seed", "trials to best", "pruned / run"],
                [[m, cell(s["samples_to_best_median"]), cell(s["samples_to_best_median"] and s["samples_to_best_median"] * tokens) if tokens > 1 else "",
                  cell(s["samples_to_best_mean_of_successes"]), f"{s['success_rate']:.0%}",
                  " ".join(cell(v) for v in s["samples_to_best_runs"]), " ".join(cell(v) for v in s["trials_to_best_runs"]),
                  f"{s['pruned_trials_mean']:.1f}"] for m, s in sums.items()]))
    for name in ("default", DEFAULT_CHOICES):
        p = t if name == "default" else f"{t}.{name}"
        if f"{p}.goal_met" not in out:
            continue
        print(f"{name}: found in {sums[name]['success_rate']:.0%} of seeds (goal >= {SUCCESS_GOAL:.0%}): {'met' if out[f'{p}.goal_success_met'] else 'not met'}")
        for other, goal in GOALS.items():
            r = out.get(f"{p}.ratio_{name}_over_{other}")
            print(f"{name} / {other}: {'n/a' if r is None else f'{r:.2f}'} (goal <= {goal}): {'met' if out.get(f'{p}.goal_{name}_over_{other}_met') else 'not met'}")
