"""Rank 0's link back to the orchestrator: the plan, tags and metric rows as marked stdout lines, and Optuna's pruning decision through the trial's own storage connection."""


from __future__ import annotations

import math
import time
from typing import Any

from lbsearch.spec import WorkerSpec, message


class Reporter:
    """Rank 0's link to the Optuna trial and to the metric stream. Every method is safe to call on a
    reporter with neither (other ranks, reproduce and train runs): the loop never asks."""

    def __init__(self, spec: WorkerSpec, is_main: bool, train: dict[str, Any] | None = None) -> None:
        self.trial = None
        self.tracking = spec.tracking and is_main
        self.is_main = is_main
        self._buffer: list[list[Any]] = []
        if is_main and spec.optuna is not None:
            from lbsearch.spec import sample_unit
            from lbsearch.study import attach_trial

            exp = spec.experiment
            unit = sample_unit(exp.get("task", "single_label"), exp.get("data", {}).get("max_length", 1)) if train is None else 1
            self.trial = attach_trial(spec.optuna, train or exp["train"], unit)

    def plan(self, plan: dict[str, Any]) -> None:
        if self.tracking:
            print(message("plan", plan), flush=True)

    def tags(self, tags: dict[str, str]) -> None:
        """Tags for the trial's MLflow run (e.g. why a diagnostic is off)."""
        if self.tracking:
            print(message("tags", tags), flush=True)

    def metrics(self, values: dict[str, float | None], step: int) -> None:
        if not self.tracking:
            return
        now = int(time.time() * 1000)
        self._buffer += [[k, float(v), now, step] for k, v in values.items() if v is not None and math.isfinite(v)]

    def flush(self, at_least: int = 1) -> None:
        """Send the buffered metric rows, when there are ``at_least`` of them."""
        if self.tracking and len(self._buffer) >= max(1, at_least):
            print(message("metrics", self._buffer), flush=True)
            self._buffer.clear()

    def should_prune(self, value: float, samples: int) -> bool:
        """Report an intermediate value at ``samples`` seen; True when the trial should be pruned."""
        if self.trial is None:
            return False
        self.trial.report(value, step=samples)
        return self.trial.should_prune()


