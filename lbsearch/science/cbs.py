"""The critical batch size over training from branches (Merrill et al. 2025), as pure functions over rows.

A row is one branch trial: its branch point (``point``: tokens the reference had trained, samples for a
classifier), its ``k``, its batch ``batch`` = k·B (tokens, or samples), its ``seed`` and its validation
``loss`` after the same Δ tokens. At each point, CBS(t) is the largest k·B whose mean loss over seeds is within
ε of the k = 1 branch's mean (the reference continued), every smaller k within ε too (so one lucky large k does
not make it); a bootstrap over the seeds of each (point, k) gives its interval. ε is set, or by default ``EPS_SPREADS`` x
the pooled standard deviation of the seeds' losses (the spread a difference of means shows by chance). The trend
is a power law CBS ∝ tokens^b fitted by least squares in log-log, its slope's interval from the same bootstrap."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["cbs_table", "critical_batch", "default_eps", "N_BOOT", "CONFIDENCE", "EPS_SPREADS"]

N_BOOT, CONFIDENCE = 2000, 0.95
"""The CBS interval: bootstrap replicates over seeds, and the interval's coverage (also the trend's slope interval)."""
EPS_SPREADS = 2.0
"""The default ε: this many pooled standard deviations of the seeds' losses."""


def _groups(rows: list[dict[str, Any]]) -> dict[float, dict[float, tuple[float, np.ndarray]]]:
    """{point: {k: (batch, losses over seeds)}}; rows with a missing loss (a failed branch) are left out."""
    acc: dict[float, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    batch: dict[tuple[float, float], float] = {}
    for r in rows:
        if r.get("loss") is None or not np.isfinite(r["loss"]):
            continue
        acc[r["point"]][r["k"]].append(float(r["loss"]))
        batch[(r["point"], r["k"])] = r["batch"]
    return {t: {k: (batch[(t, k)], np.array(v)) for k, v in sorted(g.items())} for t, g in sorted(acc.items())}


def default_eps(rows: list[dict[str, Any]]) -> float:
    """``EPS_SPREADS`` x the pooled standard deviation of the seeds' losses over every (point, k) with two seeds or more."""
    groups = [losses for g in _groups(rows).values() for _, losses in g.values() if len(losses) > 1]
    if not groups:
        raise ValueError("ε needs at least two seeds of one branch (or set it)")
    dof = sum(len(x) - 1 for x in groups)
    return EPS_SPREADS * float(np.sqrt(sum(((x - x.mean()) ** 2).sum() for x in groups) / dof))


def critical_batch(means: dict[float, tuple[float, float]], eps: float) -> tuple[float, bool]:
    """CBS from {k: (batch, mean loss)}: the largest batch whose loss, and every smaller k's, is within ``eps`` of k = 1's.
    Also whether it is the largest k tried (then CBS is at least that: a lower bound)."""
    ks = sorted(means)
    ref, cbs = means[1][1], means[1][0]
    for k in ks:
        if means[k][1] - ref > eps:
            return cbs, False
        cbs = means[k][0]
    return cbs, True


def _boot_cbs(g: dict[float, tuple[float, np.ndarray]], eps: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """CBS of ``n`` bootstrap replicates: each (k) group's seeds resampled with replacement."""
    draws = {k: (b, losses[rng.integers(0, len(losses), size=(n, len(losses)))].mean(axis=1)) for k, (b, losses) in g.items()}
    return np.array([critical_batch({k: (b, m[i]) for k, (b, m) in draws.items()}, eps)[0] for i in range(n)])


def _trend(tokens: np.ndarray, cbs: np.ndarray, boots: np.ndarray, confidence: float) -> dict[str, Any]:
    """The power law CBS = a · tokens^slope (log-log least squares) and the bootstrap interval of the slope (``boots``: points x replicates)."""
    if len(tokens) < 2:
        return {"error": "a trend needs two branch points or more"}
    x = np.log(tokens)
    slope, intercept = np.polyfit(x, np.log(cbs), 1)
    slopes = np.array([np.polyfit(x, np.log(b), 1)[0] for b in boots.T])
    lo, hi = np.quantile(slopes, [(1 - confidence) / 2, (1 + confidence) / 2])
    verdict = ("grows" if lo > 1e-9 else "shrinks" if hi < -1e-9 else "no clear trend") + f" ({int(100 * confidence)}% interval of the slope {lo:.2f} .. {hi:.2f})"
    return {"slope": float(slope), "intercept": float(intercept), "slope_ci": [float(lo), float(hi)], "verdict": verdict}


def cbs_table(rows: list[dict[str, Any]], eps: float | None = None, *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """Per branch point: each k's mean loss and seed spread, CBS(t) with its bootstrap interval; ε and the trend over points.

    Args:
        rows: one per branch trial: ``point``, ``k``, ``batch``, ``seed``, ``loss`` (None: failed, left out).
        eps: the tolerance in loss; None: ``default_eps``.
    """
    groups = _groups(rows)
    eps_how = "set" if eps is not None else f"{EPS_SPREADS:g} x the pooled standard deviation of the seeds"
    eps = float(eps) if eps is not None else default_eps(rows)
    rng = np.random.default_rng(seed)
    points, boots = [], []
    for t, g in groups.items():
        if 1 not in g:
            raise ValueError(f"branch point {t:g}: no k = 1 branch (the reference continued) to compare with")
        means = {k: (b, float(losses.mean())) for k, (b, losses) in g.items()}
        cbs, at_max = critical_batch(means, eps)
        boot = _boot_cbs(g, eps, rng, n_boot)
        lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2], method="inverted_cdf")
        boots.append(boot)
        points.append({"point": t, "cbs": cbs, "cbs_ci": [float(lo), float(hi)], "at_largest_k": at_max, "at_k1": cbs == means[1][0] and len(g) > 1,
                       "reference_loss": means[1][1],
                       "per_k": [{"k": k, "batch": b, "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None,
                                  "min": float(x.min()), "max": float(x.max()), "seeds": len(x)} for k, (b, x) in g.items()]})
    trend = _trend(np.array([p["point"] for p in points], float), np.array([p["cbs"] for p in points], float),
                   np.array(boots, float), confidence)
    warnings = [f"point {p['point']:g}: CBS is the largest k·B tried ({p['cbs']:g}): a lower bound, try larger k" for p in points if p["at_largest_k"]]
    warnings += [f"point {p['point']:g}: CBS is the reference's own B ({p['cbs']:g}): an upper bound, a smaller reference B would resolve it"
                 for p in points if p["at_k1"]]
    return {"eps": eps, "eps_how": eps_how, "confidence": confidence, "n_boot": n_boot, "points": points, "trend": trend, "warnings": warnings}
