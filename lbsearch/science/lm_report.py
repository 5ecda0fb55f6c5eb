"""The batch-scaling report of a language-model study, in tokens and at several loss targets.

For a ``causal_lm`` / ``masked_lm`` study, ``lbsearch report`` adds this analysis (``analyse``) to the
classification report:

1. **Curves.** Each trial's evaluations (Optuna's intermediate values: validation loss at nominal
   tokens seen) are placed at the tokens the trial had really seen when it evaluated: the end of
   optimizer step ``ceil(nominal / B)`` of its plan, i.e. ``step x B x L`` tokens.
2. **Targets.** Three or more validation losses (``lbsearch report --targets``, or chosen from the
   data: between the lowest first-evaluation loss of any trial and the highest loss that every
   batch size reaches, so that every crossing lies between two evaluations of every curve).
3. **Tokens to a target**: linear in tokens between the last evaluation above the target and the
   first at or below it; steps to target S = tokens / (B x L).
4. **The envelope**: per B, the trial (over the lr grid and seeds) with the fewest steps to the target.
5. **The fit** S = S_min (1 + B_crit / B) per target (``scaling.fit_steps``), and
   log B_crit = log B* - (1/alpha_B) log L over the targets (Kaplan et al. 2020: alpha_B ~ 0.21).
6. **Bootstrap intervals** (``CONFIDENCE``) over seeds and learning rates: each B's trials are resampled with
   replacement, the envelope and both fits recomputed (``N_RESAMPLES``, seeded); percentile intervals.

B_simple (the gradient noise scale, a diagnostic from gradient statistics) is reported beside
B_crit (a measurement of steps to a target), both in tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lbsearch.science.scaling import fit_steps
from lbsearch.spec import CONFIG_ATTR

__all__ = ["Curve", "curves", "tokens_to_target", "choose_targets", "analyse", "MAX_EVAL_GAP", "KAPLAN_ALPHA_B", "N_RESAMPLES"]

N_RESAMPLES, CONFIDENCE = 1000, 0.95
"""The bootstrap intervals of a language-model report: resamples (seeded) and the intervals' coverage."""
MAX_EVAL_GAP = 0.02
"""Evaluations further apart than this fraction of a run are flagged: interpolation then blurs the crossing."""
KAPLAN_ALPHA_B = 0.21
FRACTIONS = (0.2, 0.45, 0.7, 0.95)
"""Automatic targets: these fractions of the way (in log loss) from the highest to the lowest usable loss."""


@dataclass(frozen=True)
class Curve:
    number: int
    batch_size: int
    seq_len: int
    lr: float
    seed: int
    budget_tokens: int
    tokens: tuple[float, ...]
    """Tokens really seen at each evaluation (``step x B x L``)."""
    loss: tuple[float, ...]
    b_simple_tokens: float | None

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_len

    def max_gap(self) -> float:
        """The widest spacing of evaluations (from the start), as a fraction of the run."""
        t = np.concatenate([[0.0], self.tokens])
        return float(np.diff(t).max() / self.budget_tokens) if len(self.tokens) else 1.0


def curves(study) -> list[Curve]:
    """The evaluation curves of a language-model study's complete and pruned trials."""
    from optuna.trial import TrialState

    from lbsearch.spec import experiment_model, make_plan

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if CONFIG_ATTR not in t.user_attrs or not any(math.isfinite(v) for v in t.intermediate_values.values()):
            continue
        raw = json.loads(t.user_attrs[CONFIG_ATTR])
        plan = make_plan(experiment_model(raw).model_validate(raw))
        L = plan.tokens_per_sample or 1
        step_of = {nominal: step for step, nominal in plan.evals}
        keys = sorted(k for k, v in t.intermediate_values.items() if math.isfinite(v))  # a diverged evaluation is no crossing
        tokens = tuple(float(plan.samples_at(step_of[k // L]) * L if k // L in step_of else k) for k in keys)  # seen at the evaluation
        values = [t.intermediate_values[k] for k in keys]
        loss = tuple(math.log(v) if raw.get("metric", {}).get("name") == "perplexity" else float(v) for v in values)
        out.append(Curve(number=t.number, batch_size=plan.batch_size, seq_len=L, lr=plan.lr, seed=int(raw.get("seed", 0)),
                         budget_tokens=plan.budget_samples * L, tokens=tokens, loss=loss, b_simple_tokens=t.user_attrs.get("b_simple_tokens")))
    return out


def tokens_to_target(tokens, loss, target: float) -> tuple[float | None, bool]:
    """Tokens at which a curve first reaches ``target``, linear in tokens between the last evaluation
    above it and the first at or below it; None if never. The flag is True when the first evaluation
    is already at or below the target: its tokens are then only an upper bound."""
    t, y = np.asarray(tokens, dtype=float), np.asarray(loss, dtype=float)
    hit = np.flatnonzero(y <= target)
    if not hit.size:
        return None, False
    i = int(hit[0])
    if i == 0:
        return float(t[0]), True
    frac = (y[i - 1] - target) / (y[i - 1] - y[i])
    return float(t[i - 1] + frac * (t[i] - t[i - 1])), False


def choose_targets(cs: list[Curve], n: int = len(FRACTIONS)) -> list[float]:
    """Losses that every batch size reaches and no curve reaches at its first evaluation."""
    by_b: dict[int, list[Curve]] = {}
    for c in cs:
        by_b.setdefault(c.batch_size, []).append(c)
    high = min(c.loss[0] for c in cs)
    low = max(min(min(c.loss) for c in group) for group in by_b.values())
    if not low < high:
        raise ValueError(f"no loss lies between the first evaluations (lowest {high:.4g}) and the best loss of every batch size "
                         f"({low:.4g}): give targets with --targets")
    fractions = np.linspace(FRACTIONS[0], FRACTIONS[-1], n) if n != len(FRACTIONS) else np.array(FRACTIONS)
    return [float(v) for v in np.exp(np.log(high) + fractions * (np.log(low) - np.log(high)))]


def _fit(sizes: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """(S_min, B_crit) over the batch sizes that reached the target; NaNs when the fit fails."""
    ok = np.isfinite(steps)
    try:
        f = fit_steps(sizes[ok], steps[ok])
    except ValueError:
        return math.nan, math.nan
    return f.s_min, f.b_crit


def _exponent(targets: np.ndarray, b_crit: np.ndarray) -> float:
    """The slope k of log B_crit against log L (alpha_B = -1/k); NaN with fewer than 3 fitted targets."""
    ok = np.isfinite(b_crit) & (b_crit > 0)
    if ok.sum() < 3:
        return math.nan
    return float(np.polyfit(np.log(targets[ok]), np.log(b_crit[ok]), 1)[0])


def _envelope(ttt: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per B (rows) and target (columns): the fewest tokens to the target over the B's trials, and which trial."""
    env = np.full((len(groups), ttt.shape[1]), np.nan)
    arg = np.full(env.shape, -1)
    for i, g in enumerate(groups):
        sub = ttt[g]
        reached = np.isfinite(sub).any(axis=0)
        env[i, reached] = np.nanmin(sub[:, reached], axis=0)
        arg[i, reached] = g[np.nanargmin(sub[:, reached], axis=0)]
    return env, arg


def _fits(env: np.ndarray, sizes: np.ndarray, bt: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    steps = env / bt[:, None]
    sm, bc = np.array([_fit(sizes, steps[:, j]) for j in range(len(targets))]).T.reshape(2, -1)
    return sm, bc, _exponent(targets, bc)


def _bootstrap(ttt: np.ndarray, groups: list[np.ndarray], sizes: np.ndarray, bt: np.ndarray, targets: np.ndarray,
               n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B_crit per target and the exponent slope over ``n`` resamples of each B's trials (with replacement)."""
    rng = np.random.default_rng(seed)
    b_crit, s_min, slope = np.full((n, len(targets)), np.nan), np.full((n, len(targets)), np.nan), np.full(n, np.nan)
    for r in range(n):
        picked = [g[rng.integers(0, len(g), len(g))] for g in groups]
        env, _ = _envelope(ttt, picked)
        s_min[r], b_crit[r], slope[r] = _fits(env, sizes, bt, targets)
    return s_min, b_crit, slope


def _interval(samples: np.ndarray, confidence: float) -> list[float | None]:
    ok = samples[np.isfinite(samples)]
    if ok.size < 0.5 * samples.size:  # the fit failed in most resamples: no interval
        return [None, None]
    q = 100 * (1 - confidence) / 2
    return [float(np.percentile(ok, q)), float(np.percentile(ok, 100 - q))]


def _warnings(cs: list[Curve], ttt_flags: np.ndarray, targets: list[float], groups: list[np.ndarray], arg: np.ndarray) -> list[str]:
    out = []
    for b in sorted({c.batch_size for c in cs}):
        gap = max(c.max_gap() for c in cs if c.batch_size == b)
        if gap > MAX_EVAL_GAP + 1e-9:
            steps = min(c.budget_tokens // c.batch_tokens for c in cs if c.batch_size == b)
            out.append(f"B = {b}: evaluations up to {100 * gap:.1f}% of the run apart (more than {100 * MAX_EVAL_GAP:.0f}%; "
                       f"the run has {steps} optimizer steps): its crossings are interpolated over wider gaps")
    for j, target in enumerate(targets):
        early = sorted({cs[k].number for k in np.flatnonzero(ttt_flags[:, j])})
        if early:
            out.append(f"target {target:.4g}: trials {early} reached it at their first evaluation: their tokens to target are upper bounds")
    for i, g in enumerate(groups):
        lrs = sorted({cs[k].lr for k in g})
        edge = sorted({cs[a].lr for a in arg[i] if a >= 0 and len(lrs) >= 2 and cs[a].lr in (lrs[0], lrs[-1])})
        if edge:
            out.append(f"B = {cs[g[0]].batch_size}: the fastest lr at some target is at the edge of the grid ({', '.join(f'{v:.3g}' for v in edge)}"
                       f" of {lrs[0]:.3g}..{lrs[-1]:.3g}): the optimum may lie outside it")
    return out


def analyse(cs: list[Curve], targets: list[float] | None = None, *, n_boot: int = N_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The token-level batch-scaling analysis of a language-model study's curves (see the module docstring)."""
    if not cs:
        return {"error": "no trial has an evaluation curve"}
    try:
        targets = sorted(targets or choose_targets(cs), reverse=True)
    except ValueError as err:
        return {"error": str(err)}
    sizes = np.array(sorted({c.batch_size for c in cs}), dtype=float)
    L = cs[0].seq_len
    groups = [np.array([k for k, c in enumerate(cs) if c.batch_size == b]) for b in sizes]
    hits = [[tokens_to_target(c.tokens, c.loss, t) for t in targets] for c in cs]
    ttt = np.array([[np.nan if v is None else v for v, _ in row] for row in hits])
    flags = np.array([[f for _, f in row] for row in hits])
    bt = sizes * L
    env, arg = _envelope(ttt, groups)
    s_min, b_crit, slope = _fits(env, sizes, bt, np.array(targets))
    boot_s, boot_b, boot_k = _bootstrap(ttt, groups, sizes, bt, np.array(targets), n_boot, seed)
    out: dict[str, Any] = {"seq_len": L, "targets": targets, "bootstrap": {"resamples": n_boot, "seed": seed, "confidence": confidence},
                           "interpolation": "linear in tokens seen between the last evaluation above the target and the first at or below it",
                           "fits": [], "per_batch_size": _rows(cs, groups, sizes, L, env, arg, targets)}
    for j, target in enumerate(targets):
        out["fits"].append(_target_fit(target, sizes, bt, env[:, j], s_min[j], b_crit[j], boot_s[:, j], boot_b[:, j], L, confidence))
    out["exponent"] = _exponent_summary(slope, boot_k, confidence)
    out["warnings"] = _warnings(cs, flags, targets, groups, arg)
    return out


def _target_fit(target, sizes, bt, env, s_min, b_crit, boot_s, boot_b, L, confidence) -> dict[str, Any]:
    steps = env / bt
    fit: dict[str, Any] = {"target": target, "batch_sizes_reached": [int(b) for b, s in zip(sizes, steps) if np.isfinite(s)]}
    if not np.isfinite(b_crit):
        ok = np.isfinite(steps)
        try:
            fit_steps(sizes[ok], steps[ok])
        except ValueError as err:
            fit["error"] = str(err)
        return fit
    pred = s_min * (1 + b_crit / sizes)
    ci = _interval(boot_b, confidence)
    fit |= {"s_min": s_min, "b_crit": b_crit, "b_crit_tokens": b_crit * L, "e_min_tokens": s_min * b_crit * L,
            "b_crit_ci": ci, "b_crit_tokens_ci": [v * L if v is not None else None for v in ci], "s_min_ci": _interval(boot_s, confidence),
            "failed_resamples": int(np.isnan(boot_b).sum()),
            "residuals": [None if not np.isfinite(s) else float(s / p - 1) for s, p in zip(steps, pred)]}
    return fit


def _exponent_summary(slope: float, boot: np.ndarray, confidence: float) -> dict[str, Any]:
    if not np.isfinite(slope):
        return {"error": "fewer than 3 targets have a fitted B_crit"}
    lo, hi = _interval(boot, confidence)
    out = {"slope": slope, "slope_ci": [lo, hi], "alpha_b": -1 / slope if slope else None, "kaplan_alpha_b": KAPLAN_ALPHA_B}
    if lo is not None and (hi < 0 or lo > 0):  # -1/k is monotone on an interval that excludes 0
        out["alpha_b_ci"] = sorted([-1 / lo, -1 / hi])
    if lo is None:
        out["trend"] = "undetermined: the fit failed in most resamples"
    elif hi < 0:
        out["trend"] = "B_crit grows as the target loss falls (the whole interval of the slope is negative)"
    elif lo > 0:
        out["trend"] = "B_crit falls as the target loss falls (the whole interval of the slope is positive): the opposite of the prediction"
    else:
        out["trend"] = "no clear trend: the interval of the slope includes 0"
    return out


def _rows(cs, groups, sizes, L, env, arg, targets) -> list[dict[str, Any]]:
    rows = []
    for i, (b, g) in enumerate(zip(sizes, groups)):
        noise = [cs[k].b_simple_tokens for k in g if cs[k].b_simple_tokens is not None]
        rows.append({"batch_size": int(b), "batch_tokens": int(b) * L, "trials": len(g), "seeds": len({cs[k].seed for k in g}),
                     "lrs": sorted({cs[k].lr for k in g}),
                     "tokens_to_target": [None if not np.isfinite(v) else float(v) for v in env[i]],
                     "steps_to_target": [None if not np.isfinite(v) else float(v / (b * L)) for v in env[i]],
                     "envelope_lr": [cs[a].lr if a >= 0 else None for a in arg[i]],
                     "envelope_trial": [cs[a].number if a >= 0 else None for a in arg[i]],
                     "b_simple_tokens_median": float(np.median(noise)) if noise else None, "b_simple_trials": len(noise)})
    return rows
