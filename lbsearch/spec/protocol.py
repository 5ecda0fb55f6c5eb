"""What the orchestrator and a trial process exchange. Torch-free and MLflow-free.

- in: ``spec.json`` (a ``WorkerSpec``): the resolved experiment, the tokenized-data cache, the
  Optuna trial to report to (or none), where to write the result (a script trial finds it through
  ``$LBSEARCH_TRIAL_SPEC``, read by the public ``lbsearch.api``);
- during: marked stdout lines (``message`` / ``split_message``), each written in one call of at most ``PIPE_BUF`` bytes: the plan that runs, tags, and rows of
  metrics that the orchestrator writes to the trial's MLflow run (the trial never imports MLflow,
  so each run has a single writer), and ``sync`` (at a checkpoint: the orchestrator has every row sent
  before it in MLflow before it reads on);
- out: ``result.json`` (a ``TrialResult``), written atomically by rank 0. The process exit code
  only says whether that file was written.
"""


from __future__ import annotations

import json
import os
from pathlib import Path
from select import PIPE_BUF
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["OptunaRef", "WorkerSpec", "TrialResult", "message", "metric_messages", "parse_message", "split_message", "write_result", "read_result",
           "START", "CPUS", "THREADS", "GPUS", "PACKING", "NOISE_SCALE", "DISTILL_LOGITS"]

MARK = "@@lbsearch "
_DECODER = json.JSONDecoder()
START, CPUS, THREADS, GPUS = "lbsearch.start", "lbsearch.cpus", "lbsearch.threads", "lbsearch.gpus"
"""Tags a trial process sends of itself: launched or forked from the standby process; its CPU cores, torch threads
(``reproduce`` runs with as many) and GPUs. Their home with every other tag name is ``lbsearch.tracking.tags``."""
PACKING, NOISE_SCALE = "lbsearch.packing", "lbsearch.noise_scale"
"""``on`` or ``off: why`` for packed micro-batches; why the gradient noise scale is not measured."""
DISTILL_LOGITS = "distill.logits"
"""A distilled trial: where its teacher's logits came from (computed into the cache, read from it, or on the fly)."""


class OptunaRef(BaseModel):
    """The Optuna trial a trial process reports to (rank 0 only)."""

    storage: str
    study_name: str
    trial_id: int
    pruner: dict[str, Any]


class WorkerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: dict[str, Any]
    """The fully resolved experiment (``ExperimentConfig.model_dump(mode="json")``)."""
    data_path: str = ""
    """The tokenized-data cache (lbsearch's own trials; a script trial loads its own data)."""
    num_labels: int = 0
    pad_id: int = 0
    vocab_size: int = 0
    labels: dict[str, Any] = {}
    """``lbsearch.data.labels.LabelInfo.to_dict()``: class names (the model's ``id2label``), regression scaling."""
    optuna: OptunaRef | None = None
    tracking: bool = False
    """Send metric rows on stdout (the orchestrator logs them to the trial's MLflow run)."""
    result: str | None = None
    watch_pid: int | None = None
    """Exit when this process (the orchestrator) is gone."""
    model_dir: str | None = None
    """Where a complete trial saves its model (``lbsearch.trial.model.save_model``); None: not saved."""
    checkpoint_dir: str | None = None
    """Where the trial writes its checkpoints and resumes from the newest one there (``lbsearch.trial.checkpoint``); None: none."""
    teacher_dir: str | None = None
    """A distilled experiment's teacher: the kept model's folder, found by the orchestrator (``lbsearch.orchestrator.teacher``)."""
    pause_at_samples: int | None = None
    """``pruner: asha_promote``: the trial's rung. At its first evaluation at or past this many (nominal) samples it writes a
    checkpoint and stops as pruned, reason ``paused`` (``lbsearch.trial.rung``); None: it runs to its budget."""


class TrialResult(BaseModel):
    # an undefined metric (AUROC without both classes, a correlation of constant predictions) is NaN, kept as NaN
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    state: Literal["complete", "pruned", "failed"]
    reason: str | None = None
    """pruned: ``pruned`` or ``diverged``; failed: the error, ``out of memory`` or ``interrupted``."""
    oom: bool = False
    steps: int = 0
    samples: int = 0
    evals: list[dict[str, Any]] = []
    validation: dict[str, float] | None = None
    test: dict[str, float] | None = None
    value: float | None = None
    samples_to_target: int | None = None
    steps_to_target: int | None = None
    b_simple: float | None = None
    tokens_to_target: int | None = None
    """Language models: samples (sequences) to target x tokens per sequence."""
    b_simple_tokens: float | None = None
    first_step_s: float | None = None
    train_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    skipped_steps: int | None = None
    """fp16: optimizer steps the GradScaler skipped (an overflow in the gradients); None without a GradScaler."""
    model_dir: str | None = None
    """The saved model's folder, when the trial saved one."""
    model_error: str | None = None
    """Why a complete trial's model could not be saved (``status`` shows it as the trial's reason)."""
    mfu: float | None = None
    """Model FLOPs utilisation over the training time (``lbsearch.trial.flops``); None where no peak is known."""
    wall_s: float | None = None
    plan: dict[str, Any] | None = None
    """``TrialPlan.to_dict()`` of what ran (micro-batch limit known)."""


def message(kind: Literal["metrics", "plan", "tags", "sync"], payload: Any) -> str:
    return MARK + json.dumps({kind: payload})


def metric_messages(rows: list[list[Any]]) -> list[str]:
    """``rows`` as ``metrics`` messages of at most ``PIPE_BUF`` bytes each, newline included: a write that size to a
    pipe is never broken up by another rank's output (the ranks share the orchestrator's pipe). A row is kept whole."""
    out: list[list[list[Any]]] = [[]]
    size = base = len(message("metrics", [])) + 1
    for row in rows:
        n = len(json.dumps(row)) + 2  # ", " between rows
        if out[-1] and size + n > PIPE_BUF:
            out.append([])
            size = base
        out[-1].append(row)
        size += n
    return [message("metrics", chunk) for chunk in out if chunk]


def split_message(line: str) -> tuple[str, tuple[str, Any] | None]:
    """A line of the trial's output as its plain text and its ``(kind, payload)`` (None where it has no message).
    The mark may follow text that another rank wrote without its newline yet, and the message keeps nothing of it:
    the text around the message's JSON is the plain text. A marked line whose JSON is cut raises ``ValueError``."""
    at = line.find(MARK)
    if at < 0:
        return line, None
    found, end = _DECODER.raw_decode(line, at + len(MARK))
    if not isinstance(found, dict) or len(found) != 1:
        raise ValueError(f"not one message: {line[at:at + 80]!r}")
    ((kind, payload),) = found.items()
    return line[:at] + line[end:], (kind, payload)


def parse_message(line: str) -> tuple[str, Any] | None:
    """``(kind, payload)`` for a line with a message, else None (``split_message``)."""
    return split_message(line)[1]


def write_result(path: str | Path, result: TrialResult) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(result.model_dump_json(indent=1))
    os.replace(tmp, path)


def read_result(path: str | Path) -> TrialResult:
    return TrialResult.model_validate_json(Path(path).read_text())


FLAG = "--standby"
"""``python -m lbsearch.trial.worker --standby SPEC``: import (SPEC: a trial's spec, to guess its model
family), then fork a child per trial sent on the socket that is its stdin."""


