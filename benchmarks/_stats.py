"""How the benchmarks judge a figure against its goal (no torch: ``verdicts.py`` and the tests import it).

A benchmark alternates its variants A B A B in one run, so the robust statistic of "A against B" is
the median of the pairwise ratios A_i / B_i: a stall that slows one repeat of both sides cancels in
its pair, where the ratio of the two medians can pair a fast A with a slow B. A verdict reads the
pairwise ratios (or the per-trial values, for a goal on a time) and says:

- ``met``: the median meets the goal and so does every single ratio;
- ``not met``: the median does not meet the goal;
- ``not shown``: the median meets the goal but some ratio does not: the goal lies inside the
  run-to-run spread, so the run does not show it met.

With a single pair, the spread of repeated runs of the same configuration (``spread``, a fraction)
stands in for the range; without it the verdict says the spread was not measured.
"""

from __future__ import annotations

import statistics
from typing import Any

MET, NOT_MET, NOT_SHOWN = "met", "not met", "not shown"
ONE_RUN = "met in one run (spread not measured)"


def pairwise(a: list[float], b: list[float]) -> dict[str, Any]:
    """The ratios a_i / b_i of runs taken side by side, their median, min and max."""
    if len(a) != len(b) or not a:
        raise ValueError(f"pairwise ratios need runs in pairs, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    return {"runs": ratios, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def spread(values: list[float]) -> float | None:
    """Run-to-run spread of repeats of one configuration: (max - min) / median; None for one run."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None


def meets(value: float, goal: float, at_most: bool) -> bool:
    return value <= goal if at_most else value >= goal


def verdict(values: list[float], goal: float, at_most: bool, spread_of_one: float | None = None) -> str:
    """``met``, ``not met`` or ``not shown`` for ``values`` (pairwise ratios, or per-trial values)
    against ``goal`` (``at_most``: the value must not exceed it; else it must reach it)."""
    if not values:
        raise ValueError("no values to judge")
    mid = statistics.median(values)
    if not meets(mid, goal, at_most):
        return NOT_MET
    if len(values) == 1:
        if spread_of_one is None:
            return ONE_RUN
        worst = mid * (1 + spread_of_one) if at_most else mid / (1 + spread_of_one)
        return MET if meets(worst, goal, at_most) else NOT_SHOWN
    return MET if all(meets(v, goal, at_most) for v in values) else NOT_SHOWN


def judged(values: list[float], goal: float, at_most: bool, spread_of_one: float | None = None) -> dict[str, Any]:
    """The verdict with what it read: the values, their median and range, the goal."""
    return {"values": values, "median": statistics.median(values), "min": min(values), "max": max(values),
            "goal": goal, "goal_is": "at most" if at_most else "at least", "spread_of_one_run": spread_of_one,
            "verdict": verdict(values, goal, at_most, spread_of_one)}
