"""The names a study spec may give its sampler and pruner: the one list that the config accepts,
the errors quote, the study package builds from and docs/specs.md tables (each checked by a test)."""

from __future__ import annotations

from typing import Literal

__all__ = ["SAMPLERS", "PRUNERS", "GROUPING_PRUNERS", "SamplerName", "PrunerName"]

SAMPLERS = {
    "tpe": "tree-structured Parzen estimator (multivariate, constant liar)",
    "random": "independent random draws",
    "grid": "every point of a categorical grid",
    "qmc": "scrambled Sobol points (quasi-random search)",
    "gp": "Gaussian-process Bayesian optimisation (small budgets of expensive trials)",
    "nsga2": "the genetic multi-objective sampler",
}
PRUNERS = {
    "median": "stops a trial below the median of earlier trials at the same samples seen",
    "asha": "asynchronous successive halving: rungs at eval_every_samples x reduction_factor^k samples",
    "hyperband": "successive halving over brackets of the whole study",
    "none": "never prunes",
}
GROUPING_PRUNERS = ("median", "asha")
"""The pruners that can compare a trial with the trials of the same ``group_by`` value only."""

SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
PrunerName = Literal[tuple(PRUNERS)]  # type: ignore[valid-type]
