"""The language-model report's analysis on synthetic curves with known critical batch sizes."""

import json

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from lbsearch.science.lm_figures import html_section
from lbsearch.science.lm_report import Curve, _exponent, analyse, choose_targets, curves, tokens_to_target
from lbsearch.spec import CONFIG_ATTR

L = 64
TARGETS = [4.0, 3.5, 3.0]
ALPHA_B, B_STAR = 0.25, 4096.0  # B_crit(L) = B* L^(-1/alpha_B): 16, 27.3, 50.6 sequences at the three targets
S_MIN = {4.0: 100.0, 3.5: 200.0, 3.0: 400.0}


def b_crit(loss: float) -> float:
    return B_STAR * loss ** (-1 / ALPHA_B)


def _curve(number: int, b: int, lr: float, seed: int, slow: float, rng) -> Curve:
    """A loss curve through the exact crossings S = S_min (1 + B_crit / B) (times ``slow`` and 3% noise), sampled
    at 200 evaluations; linear in tokens between the crossings."""
    knots = [S_MIN[t] * (1 + b_crit(t) / b) * slow * np.exp(rng.normal(0, 0.03)) * b * L for t in TARGETS]
    end = 1.3 * knots[-1]
    xs, ys = [0.0] + knots + [end], [8.0] + TARGETS + [2.9]
    tokens = np.linspace(end / 200, end, 200)
    return Curve(number, b, L, lr, seed, int(end), tuple(tokens), tuple(np.interp(tokens, xs, ys)), 10.0 * b * L)


def _ladder(seed: int = 0) -> list[Curve]:
    """7 batch sizes x 3 learning rates (the best one 1.3x and 1.7x faster than the others), a second seed at B = 16, 32."""
    rng, cs = np.random.default_rng(seed), []
    for b in (4, 8, 16, 32, 64, 128, 256):
        for s in (0, 1) if b in (16, 32) else (0,):
            for lr, slow in ((1e-3, 1.3), (2e-3, 1.0), (4e-3, 1.7)):
                cs.append(_curve(len(cs), b, lr, s, slow, rng))
    return cs


def test_interpolation_is_linear_in_tokens_between_the_evaluations_around_the_crossing():
    tokens, loss = [100, 200, 300, 400], [5.0, 4.0, 4.2, 3.0]
    assert tokens_to_target(tokens, loss, 4.5) == (150.0, False)
    assert tokens_to_target(tokens, loss, 4.0) == (200.0, False)  # the first evaluation at or below it
    assert tokens_to_target(tokens, loss, 3.6) == pytest.approx((350.0, False))  # the last above is 4.2 at 300, not 5.0
    assert tokens_to_target(tokens, loss, 5.5) == (100.0, True)  # already below at the first evaluation: an upper bound
    assert tokens_to_target(tokens, loss, 2.0) == (None, False)


def test_multi_target_fit_recovers_b_crit_with_intervals_that_cover_it():
    s = analyse(_ladder(), TARGETS, n_boot=1000, seed=0)
    assert s["targets"] == sorted(TARGETS, reverse=True)
    for f in s["fits"]:
        true = b_crit(f["target"])
        assert f["b_crit"] == pytest.approx(true, rel=0.15), f
        assert f["b_crit_ci"][0] <= true <= f["b_crit_ci"][1], f
        assert f["b_crit_tokens"] == pytest.approx(f["b_crit"] * L)
        assert f["s_min"] == pytest.approx(S_MIN[f["target"]], rel=0.1)
        assert max(abs(r) for r in f["residuals"]) < 0.15
    e = s["exponent"]
    assert e["slope"] == pytest.approx(-1 / ALPHA_B, rel=0.15)
    assert e["slope_ci"][0] <= -1 / ALPHA_B <= e["slope_ci"][1]
    assert e["alpha_b_ci"][0] <= ALPHA_B <= e["alpha_b_ci"][1]
    assert e["trend"].startswith("B_crit grows as the target loss falls")
    rows = {r["batch_size"]: r for r in s["per_batch_size"]}
    assert rows[16]["seeds"] == 2 and rows[16]["trials"] == 6 and rows[4]["batch_tokens"] == 4 * L
    assert all(lr == 2e-3 for r in rows.values() for lr in r["envelope_lr"])  # the envelope is the fastest lr
    assert rows[8]["b_simple_tokens_median"] == pytest.approx(10.0 * 8 * L)
    assert not s["warnings"]  # 200 evaluations: 0.5% apart, the fastest lr inside the grid


def test_bootstrap_is_seeded():
    a, b = analyse(_ladder(), TARGETS, n_boot=200, seed=3), analyse(_ladder(), TARGETS, n_boot=200, seed=3)
    assert a["fits"] == b["fits"] and a["exponent"] == b["exponent"]


def test_exponent_fit_and_automatic_targets():
    losses = np.array([4.0, 3.5, 3.0, 2.5])
    assert _exponent(losses, B_STAR * losses ** (-1 / 0.21)) == pytest.approx(-1 / 0.21)
    assert np.isnan(_exponent(losses[:2], np.array([10.0, 20.0])))
    cs = _ladder()
    targets = choose_targets(cs)
    high, low = min(c.loss[0] for c in cs), max(min(min(c.loss) for c in cs if c.batch_size == b) for b in (4, 8, 256))
    assert len(targets) == 4 and all(low < t < high for t in targets) and targets == sorted(targets, reverse=True)
    s = analyse(cs, n_boot=100)
    assert len(s["fits"]) == 4 and all("b_crit" in f for f in s["fits"])


def test_sparse_evaluations_and_an_lr_at_the_grid_edge_are_warned():
    rng = np.random.default_rng(0)
    cs = [_curve(i, b, 1e-3 * (1 + i % 3), 0, 1.0 if i % 3 == 0 else 1.5, rng) for i, b in enumerate([8, 8, 8, 32, 32, 32, 128, 128, 128])]
    cs[0] = Curve(0, 8, L, cs[0].lr, 0, cs[0].budget_tokens, cs[0].tokens[9::10], cs[0].loss[9::10], None)  # 20 evaluations: 5% apart
    w = analyse(cs, TARGETS, n_boot=50)["warnings"]
    assert any(x.startswith("B = 8: evaluations up to 5.0% of the run apart") for x in w), w
    assert any("at the edge of the grid" in x for x in w), w


def test_curves_place_evaluations_at_the_tokens_really_seen():
    """B = 128 sequences of 64 = 8192 tokens per step, evaluations asked every 4096 tokens: one per step,
    reported (for pruning) at the nominal tokens but seen after the whole step."""
    cfg = {"name": "x", "task": "causal_lm", "seed": 1, "data": {"source": "speeches", "max_length": L},
           "model": {"source": "random", "model_type": "gpt2", "config": {"n_embd": 32, "n_layer": 1, "n_head": 2}},
           "train": {"batch_size": 128, "budget_tokens": 32768, "eval_every_tokens": 4096}}
    study = optuna.create_study()
    values = {4096: 7.0, 12288: 6.0, 20480: 5.5, 32768: 5.0}  # the plan's nominal points (1, 3, 5 x 4096) and the budget
    study.add_trial(create_trial(params={"train.batch_size": 128}, distributions={"train.batch_size": CategoricalDistribution([128])},
                                 value=5.0, intermediate_values=values, user_attrs={CONFIG_ATTR: json.dumps(cfg), "b_simple_tokens": 900.0}))
    (c,) = curves(study)
    assert (c.batch_size, c.seq_len, c.batch_tokens, c.seed, c.budget_tokens) == (128, L, 8192, 1, 32768)
    assert c.tokens == (8192.0, 16384.0, 24576.0, 32768.0)  # after steps 1, 2, 3, 4
    assert c.loss[0] == 7.0 and c.b_simple_tokens == 900.0


def test_the_page_states_the_coverage_its_intervals_were_computed_at(tmp_path):
    """The intervals' coverage in the table, the figure and the exponent text is the analysis's own, not a fixed 95%."""
    s = analyse(_ladder(), TARGETS, n_boot=100, seed=0, confidence=0.8)
    page = html_section(s)
    assert "80% interval (tokens)" in page and "80% interval" in page.split("<b>Exponent.</b>", 1)[1] and "95%" not in page
