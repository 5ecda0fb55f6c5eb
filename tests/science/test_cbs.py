"""The CBS estimator on synthetic branch rows: known losses give the known CBS(t) inside its bootstrap interval,
ε from the seeds' spread, a growing trend seen as growing, a flat one not, and the report's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lbsearch.science import CBS_HTML, CBS_JSON, EPS_SPREADS, cbs_table, critical_batch, default_eps, write_cbs_report
from lbsearch.science.cbs_report import CBS_FIGURES

B = 64  # tokens
KS = [1, 2, 4, 8, 16, 32]


def _rows(truth: dict[int, int], seeds: int = 3, noise: float = 0.01, seed: int = 0) -> list[dict]:
    """Loss flat up to the true CBS, then rising by 0.3 per doubling of k·B (plus seed noise)."""
    rng = np.random.default_rng(seed)
    return [{"point": t, "k": k, "batch": k * B, "seed": s, "loss": 3.0 + 0.3 * max(0.0, np.log2(k * B / c)) + rng.normal(0, noise)}
            for t, c in truth.items() for k in KS for s in range(seeds)]


def test_critical_batch_is_the_largest_contiguous_k_within_eps():
    means = {1: (64, 3.0), 2: (128, 3.01), 4: (256, 3.2), 8: (512, 3.0)}  # k = 8 back within ε by chance: not counted
    assert critical_batch(means, 0.05) == (128, False)
    assert critical_batch({1: (64, 3.0), 2: (128, 3.0)}, 0.05) == (128, True)  # the largest k tried: a lower bound


def test_default_eps_is_eps_spreads_times_the_pooled_seed_spread():
    rows = [{"point": 1, "k": 1, "batch": 1, "seed": s, "loss": v} for s, v in enumerate([1.0, 1.2])] + \
           [{"point": 1, "k": 2, "batch": 2, "seed": s, "loss": v} for s, v in enumerate([2.0, 2.4])]
    assert default_eps(rows) == pytest.approx(EPS_SPREADS * np.sqrt((0.02 + 0.08) / 2))
    with pytest.raises(ValueError, match="two seeds"):
        default_eps(rows[:1] + rows[2:3])


def test_known_cbs_over_training_is_recovered_within_its_interval():
    truth = {1_000: 128, 4_000: 256, 16_000: 512, 64_000: 1024}  # CBS doubles each 4x tokens: slope 0.5
    out = cbs_table(_rows(truth), n_boot=500)
    assert out["eps_how"].startswith(f"{EPS_SPREADS:g} x") and 0.005 < out["eps"] / EPS_SPREADS < 0.02  # EPS_SPREADS x the noise of 0.01
    for p in out["points"]:
        assert p["cbs"] == truth[p["point"]]
        assert p["cbs_ci"][0] <= truth[p["point"]] <= p["cbs_ci"][1]
        assert not p["at_largest_k"]
    tr = out["trend"]
    assert tr["slope"] == pytest.approx(0.5, abs=0.01) and tr["slope_ci"][0] - 1e-9 <= 0.5 <= tr["slope_ci"][1] + 1e-9  # every resample's CBS is exact: a point interval
    assert tr["verdict"].startswith("grows")


def test_flat_cbs_has_no_clear_trend_and_a_capped_cbs_is_flagged():
    out = cbs_table(_rows({1_000: 256, 4_000: 256, 16_000: 256}), n_boot=300)
    assert [p["cbs"] for p in out["points"]] == [256, 256, 256]
    assert not out["trend"]["verdict"].startswith("grows")
    capped = cbs_table(_rows({1_000: 10**6}), eps=0.05, n_boot=100)
    assert capped["points"][0]["at_largest_k"] and "lower bound" in capped["warnings"][0]
    floor = cbs_table(_rows({1_000: 1}), eps=0.05, n_boot=100)  # already worse at 2B: CBS is B or less
    assert floor["points"][0]["cbs"] == B and floor["points"][0]["at_k1"] and "upper bound" in floor["warnings"][0]
    assert "error" in capped["trend"]  # one point: no trend
    with pytest.raises(ValueError, match="no k = 1"):
        cbs_table([r for r in _rows({1_000: 128}) if r["k"] != 1], eps=0.05)


def test_report_files(tmp_path):
    out = cbs_table(_rows({1_000: 128, 4_000: 256}), n_boot=200)
    page = write_cbs_report(out, tmp_path, study="s-branch-0", reference="s#0", delta=4096, b_simple={1_000: 90.0}, b_crit=466.0, machine="Measured on X.")
    assert page == tmp_path / CBS_HTML
    assert {CBS_HTML, CBS_JSON, *CBS_FIGURES} <= {p.name for p in tmp_path.iterdir()}
    facts = json.loads((tmp_path / CBS_JSON).read_text())
    assert facts["b_crit"] == 466.0 and facts["b_simple"] == {"1000": 90.0} and [p["cbs"] for p in facts["points"]] == [128, 256]
    assert "grows" in page.read_text() or "no clear trend" in page.read_text()
