"""Batch-scaling fits on noisy synthetic curves with known parameters."""

import numpy as np
import pytest

from lbsearch.science.scaling import fit_power, fit_steps


@pytest.mark.parametrize("s_min,b_crit", [(200.0, 64.0), (50.0, 1000.0), (1000.0, 8.0)])
def test_steps_fit_recovers_s_min_and_b_crit_from_noisy_curves(s_min, b_crit):
    rng = np.random.default_rng(0)
    ladder = np.array([8, 16, 32, 64, 128, 256, 512, 1024, 2048], dtype=float)
    b = np.repeat(ladder, 3)
    steps = s_min * (1 + b_crit / b) * np.exp(rng.normal(0, 0.03, b.size))  # 3% multiplicative noise
    fit = fit_steps(b, steps)
    assert fit.s_min == pytest.approx(s_min, rel=0.05)
    assert fit.b_crit == pytest.approx(b_crit, rel=0.05)
    assert fit.e_min == pytest.approx(s_min * b_crit, rel=0.08)


def test_power_fit_covers_the_true_exponent():
    rng = np.random.default_rng(1)
    b = np.repeat([16, 32, 64, 128, 256], 2).astype(float)
    lr = 3e-4 * (b / 16) ** 0.5 * np.exp(rng.normal(0, 0.1, b.size))
    fit = fit_power(b, lr)
    assert fit.alpha_low < 0.5 < fit.alpha_high
    assert fit.alpha_high - fit.alpha_low < 0.4
    with pytest.raises(ValueError, match=">= 3 batch sizes"):
        fit_steps([32, 32, 64], [10, 11, 6])
    with pytest.raises(ValueError, match="above this range"):  # perfect scaling throughout: no S_min to see
        fit_steps([16, 32, 64], [400, 200, 100])
