"""The names of the Optuna user attributes lbsearch keeps on a study's trials and on the study itself: the bookkeeping
every worker and every command reads back from the shared storage. Studies already stored keep the names they were
written with, so a rename leaves their trials unfound (their runs, configs, re-runs and promotions) unless the old name
is read too. In ``spec`` because every floor reads some of them (``tracking`` and ``science`` cannot import ``study``).

The figures of a trial's result (``samples``, ``test_<metric>``, ``wall_s``, ``reason``, ...) are user attributes too,
named after the fields of ``TrialResult`` (``lbsearch.spec.protocol``)."""

__all__ = ["RUN_ID", "CONFIG_ATTR", "RESUMED_FROM", "RETRY_OF_ATTR", "ATTEMPT_ATTR", "RESUME_OF_ATTR", "RUNG_ATTR", "HOST_ATTR", "PID_ATTR",
           "METRIC_ATTR", "OBJECTIVES_ATTR", "SPEC_ATTR", "WARM_STARTED_ATTR"]

RUN_ID = "mlflow_run_id"
"""A trial's MLflow run id (set by ``orchestrator.loop`` when the run starts): how every command finds a trial's run; the
parent run's ``best.`` tag of the best trial's run id is spelled from it (``lbsearch.tracking.tags``)."""

CONFIG_ATTR = "config"
"""A trial's resolved experiment as it ran, as JSON (set by ``orchestrator.loop``; read by ``reproduce``, ``compress``, the
reports, a branch study and ``status``)."""

RESUMED_FROM = {"trial": "resumed_from_trial", "step": "resumed_from_step", "samples": "resumed_from_samples", "run": "resumed_from_run"}
"""A trial resumed from an earlier trial's checkpoint (set by ``orchestrator.promotion.resume``): the trial, its checkpoint's
step and samples, and the MLflow run that holds its curve. Named apart from the MLflow tags of the same facts
(``tracking.resumed_tags``), so that renaming a tag leaves the studies already stored readable."""

RETRY_OF_ATTR, ATTEMPT_ATTR = "retry_of", "attempt"
"""A re-run of a failed trial (``study.storage``): the trial it re-runs, and how many times its worker died before."""

RESUME_OF_ATTR, RUNG_ATTR = "resume_of", "rung"
"""``pruner: asha_promote``: the paused trial a promoted trial goes on from (``orchestrator.promotion``), and the rung a
trial runs to (``study.rungs``)."""

HOST_ATTR, PID_ATTR = "host", "pid"
"""The machine and process of the orchestrator running a trial: a trial left RUNNING by a process that is gone is failed
and re-run (``study.storage.recover``)."""

METRIC_ATTR, OBJECTIVES_ATTR, SPEC_ATTR, WARM_STARTED_ATTR = "metric", "objectives", "spec", "warm_started"
"""The study's own: its metric's name (the reports and ``status`` read it), its objectives (a study cannot change them),
its spec as JSON, and the study a warm start copied trials from (done once)."""
