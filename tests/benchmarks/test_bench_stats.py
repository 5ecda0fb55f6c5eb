"""benchmarks/_stats.py: how a benchmark's figure is judged against its goal.

The cases are the figures the docs once judged on a favourable statistic: the tracking benchmark's
ratio of medians (1.010) against its pairwise median (1.023), and a whole-study ratio (0.649) inside
the 9% spread of the same study run twice."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_stats", Path(__file__).resolve().parents[2] / "benchmarks" / "_stats.py")
stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stats)

# benchmarks/results/tracking.json: trial wall times with MLflow on and off, alternating on, off, on, ...
ON = [9.878244924000228, 9.20971899899996, 9.826289306000035, 9.324611267999899, 9.490097901999889]
OFF = [9.144775324999955, 8.99938989400016, 9.428639378000298, 9.47654512500003, 9.393703205999827]


def test_pairs_are_taken_side_by_side_not_median_against_median():
    pairs = stats.pairwise(ON, OFF)
    assert statistics.median(ON) / statistics.median(OFF) == pytest.approx(1.0103, abs=1e-4)  # the favourable statistic
    assert pairs["median"] == pytest.approx(1.0234, abs=1e-4)
    assert pairs["runs"][0] == pytest.approx(ON[0] / OFF[0]) and pairs["min"] < 1 < pairs["max"]
    assert stats.verdict(pairs["runs"], 1.02, at_most=True) == stats.NOT_MET


def test_met_only_when_the_median_and_every_pair_meet_the_goal():
    assert stats.verdict([0.99, 1.0, 1.01], 0.97, at_most=False) == stats.MET
    assert stats.verdict([0.96, 0.99, 1.01], 0.97, at_most=False) == stats.NOT_SHOWN  # the goal inside the spread
    assert stats.verdict([0.95, 0.96, 1.01], 0.97, at_most=False) == stats.NOT_MET
    assert stats.verdict([4.9, 6.5, 0.5], 5.0, at_most=True) == stats.NOT_SHOWN  # per-trial times: one trial over the goal


def test_one_pair_is_judged_against_the_spread_of_its_configuration():
    on_runs = [403.0, 369.0]  # the same "on" study, twice
    assert stats.spread(on_runs) == pytest.approx(34 / 386)
    assert stats.verdict([0.649], 0.67, at_most=True, spread_of_one=stats.spread(on_runs)) == stats.NOT_SHOWN
    assert stats.verdict([0.50], 0.67, at_most=True, spread_of_one=stats.spread(on_runs)) == stats.MET
    assert stats.verdict([0.649], 0.67, at_most=True) == stats.ONE_RUN
    assert stats.verdict([0.699], 0.67, at_most=True) == stats.NOT_MET
    assert stats.spread([403.0]) is None


def test_runs_must_come_in_pairs():
    with pytest.raises(ValueError, match="in pairs"):
        stats.pairwise([1.0, 2.0], [1.0])
