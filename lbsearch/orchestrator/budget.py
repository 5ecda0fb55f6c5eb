"""What is left of a study: its trials (``n_trials``) and its compute (``budget:``, as ``lbsearch.study.spent`` counts it)."""

from __future__ import annotations

import optuna

from lbsearch.spec import StudyConfig
from lbsearch.study import budget_line, budget_used, configurations

__all__ = ["budget_reached", "trials_left"]


def budget_reached(study: optuna.Study) -> str | None:
    """Once the study's finished trials have spent its budget, the line that says so; else (or without one) None."""
    used = budget_used(study)
    return f"[study {study.study_name}] {budget_line(*used)} reached: no new trial starts" if used and used[0] >= used[1] else None


def trials_left(study: optuna.Study, cfg: StudyConfig, max_trials: int | None) -> int:
    """The trials this worker may still start: until ``n_trials`` configurations count, none once the budget is spent, at most ``max_trials``."""
    left = 0 if budget_reached(study) else cfg.n_trials - configurations(study.get_trials(deepcopy=False), cfg.max_retries)
    return left if max_trials is None else min(left, max_trials)
