"""Rank 0's link back to the orchestrator: the plan, tags and metric rows as marked stdout lines, and Optuna's pruning decision through the trial's own storage connection.

Metric rows are ``[key, value, timestamp_ms, step]`` where ``step`` is the data seen: samples, or
tokens for a language model (samples x ``max_length``). MLflow's charts then line trials of different
batch sizes up at equal data; the optimizer step is a metric of its own (``progress/step``)."""


from __future__ import annotations

import math
import sys
import time
from typing import Any

from lbsearch.spec import TrialPlan, WorkerSpec, message, metric_messages, sample_unit


class Reporter:
    """Rank 0's link to the Optuna trial and to the metric stream. Every method is safe to call on a
    reporter with neither (other ranks, reproduce and train runs): the loop never asks."""

    def __init__(self, spec: WorkerSpec, is_main: bool, train: dict[str, Any] | None = None) -> None:
        self.trial = None
        self.tracking = spec.tracking and is_main
        self.is_main = is_main
        self._buffer: list[list[Any]] = []
        exp = spec.experiment
        self.unit = sample_unit(exp.get("task", "single_label"), exp.get("data", {}).get("max_length", 1))
        """Tokens per sample for a language model, else 1: the metric rows' step is ``samples x unit``."""
        if is_main and spec.optuna is not None:
            from lbsearch.study import attach_trial

            self.trial = attach_trial(spec.optuna, train or exp["train"], self.unit if train is None else 1)

    def plan(self, plan: dict[str, Any]) -> None:
        """The trial's plan: to MLflow, and its warmup end to the pruner (which leaves the trial alone before it)."""
        if self.trial is not None:
            from lbsearch.study import note_warmup  # here: the trial API imports no Optuna until it has a trial

            note_warmup(self.trial, TrialPlan.from_dict(plan))
        if self.tracking:
            _send(message("plan", plan))

    def tags(self, tags: dict[str, str]) -> None:
        """Tags for the trial's MLflow run (e.g. why a diagnostic is off)."""
        if self.tracking:
            _send(message("tags", tags))

    def metrics(self, values: dict[str, float | None], samples: int, ms: int | None = None) -> None:
        """Metric rows at ``samples`` seen: their MLflow step is the data seen, ``samples x unit``
        (tokens for a language model), so trials of different B compare at equal data. ``ms``: their
        time (a training step's rows are sent at a later read point), else now."""
        if not self.tracking:
            return
        now, step = ms or int(time.time() * 1000), int(samples) * self.unit
        self._buffer += [[k, float(v), now, step] for k, v in values.items() if v is not None and math.isfinite(v)]

    def flush(self, at_least: int = 1) -> None:
        """Send the buffered metric rows, when there are ``at_least`` of them."""
        if self.tracking and len(self._buffer) >= max(1, at_least):
            for line in metric_messages(self._buffer):
                _send(line)
            self._buffer.clear()

    def sync(self) -> None:
        """At a checkpoint: the rows still buffered are sent, and the orchestrator has every row sent so far in MLflow before it
        reads the next line (the one that announces the checkpoint), so a machine that dies after it loses no row before the checkpoint."""
        self.flush()
        if self.tracking:
            _send(message("sync", None))

    def should_prune(self, value: float, samples: int) -> bool:
        """Report an intermediate value at ``samples`` seen; True when the trial should be pruned."""
        if self.trial is None:
            return False
        self.trial.report(value, step=samples)
        return self.trial.should_prune()


def _send(line: str) -> None:
    """One marked line in one write (``print`` writes the text and its newline apart, and under ``PYTHONUNBUFFERED``, as trials
    run, each is a write of its own, so another rank's output could land between them); what this rank printed before goes first."""
    sys.stdout.flush()
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
