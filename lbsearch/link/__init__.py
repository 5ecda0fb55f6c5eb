"""The trial process's side of the wire, torch-free: rank 0's Reporter (the plan, tags and metric
rows as marked stdout lines; Optuna's pruning decision through the trial's own storage
connection) and the watchdog that ends a trial whose orchestrator is gone. The trial package and
the integrations reach Optuna through this package only."""

from lbsearch.link.reporter import Reporter
from lbsearch.link.watchdog import watch_parent

__all__ = ['Reporter', 'watch_parent']
