"""Batch-scaling fits: steps-to-target vs B (McCandlish et al. 2018) and the best lr vs B.

    S(B) = S_min (1 + B_crit / B)         (steps to reach the target with batch B)

is linear in 1/B: S = S_min + (S_min B_crit) / B. It is fitted by least squares on relative
residuals (steps-to-target are noisy in proportion to their size), so B_crit = slope / intercept.
The best learning rate is fitted as lr* = c · B^α on log-log axes, with a t-interval on α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StepsFit", "PowerFit", "fit_steps", "fit_power"]


@dataclass(frozen=True)
class StepsFit:
    s_min: float
    b_crit: float
    n: int

    def steps(self, batch_size: np.ndarray | float) -> np.ndarray | float:
        return self.s_min * (1 + self.b_crit / np.asarray(batch_size, dtype=float))

    @property
    def e_min(self) -> float:
        """The fewest samples to reach the target (B → 0): E = E_min (1 + B / B_crit), E_min = S_min B_crit."""
        return self.s_min * self.b_crit


@dataclass(frozen=True)
class PowerFit:
    alpha: float
    alpha_low: float
    alpha_high: float
    coef: float
    n: int
    confidence: float

    def __call__(self, batch_size: np.ndarray | float) -> np.ndarray | float:
        return self.coef * np.asarray(batch_size, dtype=float) ** self.alpha


def fit_steps(batch_sizes, steps) -> StepsFit:
    """Fit S = S_min (1 + B_crit / B) to (B, steps-to-target) pairs; needs >= 2 distinct B."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    if len(np.unique(b)) < 3:
        raise ValueError("the steps-to-target fit needs >= 3 batch sizes that reached the target")
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1) / s[:, None]  # relative residuals
    (s_min, slope), *_ = np.linalg.lstsq(design, np.ones_like(s), rcond=None)
    if slope <= 0:
        raise ValueError(f"steps-to-target do not fall as B grows over {b.min():g}..{b.max():g}: B_crit lies below this range")
    if s_min <= 1e-6 * s.min():  # zero up to rounding: steps x B constant
        raise ValueError(f"steps-to-target fall as fast as 1/B over {b.min():g}..{b.max():g}: B_crit lies above this range")
    return StepsFit(s_min=float(s_min), b_crit=float(slope / s_min), n=len(b))


def fit_power(batch_sizes, values, confidence: float = 0.95) -> PowerFit:
    """Fit values = c · B^α by least squares in log-log; α with a two-sided t confidence interval."""
    from scipy import stats

    x = np.log(np.asarray(batch_sizes, dtype=float))
    y = np.log(np.asarray(values, dtype=float))
    n = len(x)
    if n < 3 or len(np.unique(x)) < 2:
        raise ValueError("the lr exponent fit needs >= 3 trials at >= 2 batch sizes")
    r = stats.linregress(x, y)
    half = stats.t.ppf(0.5 + confidence / 2, n - 2) * r.stderr
    return PowerFit(float(r.slope), float(r.slope - half), float(r.slope + half), float(np.exp(r.intercept)), n, confidence)
