"""The Optuna study: storage, the study lock, heartbeats and recovery, samplers and pruners,
read-only views of the trials, and the one module that reaches Optuna's private attributes."""

from lbsearch.study.access import trial_id
from lbsearch.study.pruner import note_warmup
from lbsearch.study.rungs import configurations, continuation, is_paused, last_resort, promotable, promoted, rung_to_run, rungs
from lbsearch.study.sampler import make_sampler, objective_values, suggest
from lbsearch.study.storage import attach_trial, heartbeat, heartbeat_interval, host, load_existing_study, open_storage, open_study, recover, stored_study, study_lock, tell_once, uses_heartbeats
from lbsearch.study.views import (
    FACTS,
    RESUMED_FROM,
    ROW_STATES,
    RUN_ID,
    best_trial,
    best_value,
    budget_line,
    budget_used,
    counted,
    is_multi,
    objectives,
    pareto,
    pick,
    reason,
    spent,
    status_columns,
    summary,
    to_csv,
    trial_rows,
    value_columns,
)

__all__ = ['FACTS', 'RESUMED_FROM', 'ROW_STATES', 'RUN_ID', 'best_trial', 'best_value', 'budget_line', 'budget_used', 'counted', 'is_multi', 'objectives', 'pareto', 'pick', 'reason', 'status_columns', 'spent', 'summary', 'to_csv', 'trial_rows', 'value_columns', 'attach_trial', 'heartbeat', 'heartbeat_interval', 'host', 'load_existing_study', 'open_storage', 'open_study', 'recover', 'stored_study', 'study_lock', 'tell_once', 'uses_heartbeats', 'note_warmup', 'make_sampler', 'objective_values', 'suggest', 'trial_id', 'configurations', 'continuation', 'is_paused', 'last_resort', 'promotable', 'promoted', 'rung_to_run', 'rungs']
