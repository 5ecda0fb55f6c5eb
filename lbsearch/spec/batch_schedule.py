"""A batch-size schedule, ``train.batch_schedule``: the effective batch B growing during training, torch-free.

Three kinds (``KINDS``):

- ``constant`` (the default, and what no schedule means): B = ``train.batch_size`` throughout;
- ``stepwise``: B changes at points in training (``at_samples``, or ``at_tokens`` for a language model), to
  ``batch_sizes`` (default: ``train.batch_size`` x ``factor``^i at the i-th point, i.e. doubling);
- ``ramp``: B grows from ``train.batch_size`` to ``final_batch_size`` in equal ``increment`` steps spread evenly over the
  first ``ramp_samples`` (``ramp_tokens``), as Megatron-LM's ``--rampup-batch-size`` does.

Each change takes effect at the first optimizer step that starts at or after its point; the learning rate follows the
rule ``lr_scaling`` (lr(B) = lr(B0) x (B / B0)^alpha, alpha of ``registry.LR_SCALING``) times the schedule's shape, and
warmup, decay, evaluation points, checkpoints and pruning are all placed in samples (tokens), not steps. The sample
stream is the same as at constant B (a pure function of the seed, ``trial.batching``): a schedule only cuts it into
steps of another size. The steps, their sizes and their learning rates are the trial plan's (``spec.plan.make_plan``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lbsearch.spec.registry import LrScalingName

__all__ = ["BatchSchedule", "WithBatchSchedule", "KINDS", "change_points", "check_batch_schedule", "increment", "scheduled"]

KINDS = ("constant", "stepwise", "ramp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BatchSchedule(_Strict):
    kind: Literal[KINDS] = "constant"  # type: ignore[valid-type]
    """``constant``, ``stepwise`` or ``ramp`` (``lbsearch.spec.batch_schedule``)."""
    at_samples: list[int] | None = None
    """``stepwise``: the samples seen at which B changes (increasing)."""
    at_tokens: list[int] | None = None
    """``stepwise``, language models: the same in tokens (sets ``at_samples``)."""
    batch_sizes: list[int] | None = None
    """``stepwise``: B from each point on; default ``train.batch_size`` x ``factor``^i."""
    factor: int = Field(2, ge=2)
    """``stepwise`` without ``batch_sizes``: B is multiplied by this at each point."""
    final_batch_size: int | None = Field(None, ge=1)
    """``ramp``: the B it ends at."""
    ramp_samples: int | None = Field(None, ge=1)
    """``ramp``: the samples over which B grows from ``train.batch_size`` to ``final_batch_size``."""
    ramp_tokens: int | None = Field(None, ge=1)
    """``ramp``, language models: the same in tokens (sets ``ramp_samples``)."""
    increment: int | None = Field(None, ge=1)
    """``ramp``: B grows by this much at a time; unset: ``train.batch_size`` (the function ``increment``)."""
    lr_scaling: LrScalingName = "sqrt"
    """The lr at each B: lr(B0) x (B / B0)^alpha with alpha of this rule (``registry.LR_SCALING``; ``none`` keeps it). Its
    docs/specs.md row is checked (tests/spec/test_specs_doc.py); the tests derive their lrs from this default."""

    @model_validator(mode="after")
    def _fields(self) -> "BatchSchedule":
        """The settings of the kind in force must be there; those of the other kinds are ignored (a study may search ``kind``)."""
        if self.kind == "stepwise" and self.at_samples is None and self.at_tokens is None:
            raise ValueError("kind `stepwise` needs `at_samples` (or `at_tokens` for a language model): where B changes")
        if self.kind == "ramp" and (self.final_batch_size is None or self.ramp_samples is None and self.ramp_tokens is None):
            raise ValueError("kind `ramp` needs `final_batch_size` and `ramp_samples` (or `ramp_tokens` for a language model)")
        points = self.at_samples or self.at_tokens or []
        if any(p <= 0 for p in points) or points != sorted(set(points)):
            raise ValueError(f"the change points must be positive and increasing, got {points}")
        if self.batch_sizes is not None and len(self.batch_sizes) != len(points):
            raise ValueError(f"`batch_sizes` needs one size per change point ({len(points)}), got {len(self.batch_sizes)}")
        return self


class WithBatchSchedule(BaseModel):
    """The field ``train.batch_schedule`` (``TrainConfig`` takes it from here)."""

    batch_schedule: BatchSchedule | None = None
    """B over training: ``constant`` (default), ``stepwise`` or ``ramp`` (``lbsearch.spec.batch_schedule``, docs/batch_schedule.md)."""


def scheduled(train) -> BatchSchedule | None:
    """The train section's schedule if B changes during training, else None."""
    s = train.batch_schedule
    return s if s is not None and s.kind != "constant" else None


def increment(schedule: BatchSchedule, batch_size: int) -> int:
    """How much a ramp grows B at a time: ``increment``, unset: ``train.batch_size`` (its one default)."""
    return schedule.increment or batch_size


def change_points(schedule: BatchSchedule | None, batch_size: int) -> list[tuple[int, int]]:
    """(samples seen, B from there on), the first at 0 with ``batch_size``; one entry for no schedule."""
    if schedule is None or schedule.kind == "constant":
        return [(0, batch_size)]
    if schedule.kind == "stepwise":
        sizes = schedule.batch_sizes or [batch_size * schedule.factor ** (i + 1) for i in range(len(schedule.at_samples or []))]
        return [(0, batch_size)] + list(zip(schedule.at_samples or [], sizes))
    inc = increment(schedule, batch_size)
    n = (schedule.final_batch_size - batch_size) // inc
    return [(0, batch_size)] + [(round(i * schedule.ramp_samples / n), batch_size + i * inc) for i in range(1, n + 1)]


def check_batch_schedule(train, lm: bool, length: int, processes: int, branch: bool) -> None:
    """Cross-field rules (raises ValueError) and, for a language model, the token settings into samples."""
    s = scheduled(train)
    if s is None:
        return
    tokens = [f for f in ("at_tokens", "ramp_tokens") if getattr(s, f) is not None]
    if tokens and not lm:
        raise ValueError(f"`train.batch_schedule.{tokens[0]}` is for language-model tasks; this task counts samples")
    if s.at_tokens is not None:
        s.at_samples = [max(1, round(t / length)) for t in s.at_tokens]
    if s.ramp_tokens is not None:
        s.ramp_samples = max(1, round(s.ramp_tokens / length))
    if branch:
        raise ValueError("`train.batch_schedule` and `branching` do not go together: a branch point is a position at one B")
    B = train.batch_size
    if s.kind == "ramp" and (s.final_batch_size <= B or (s.final_batch_size - B) % increment(s, B)):
        raise ValueError(f"`train.batch_schedule.final_batch_size` must be above `train.batch_size` ({B}) by a multiple of "
                         f"`increment` ({increment(s, B)}), got {s.final_batch_size}")
    odd = [b for _, b in change_points(s, B) if b % processes]
    if odd:
        raise ValueError(f"every batch size of `train.batch_schedule` must be divisible by `launcher.processes` ({processes}), got {odd[0]}")
    late = [p for p, _ in change_points(s, B)[1:] if p >= train.budget_samples]
    if late:
        raise ValueError(f"`train.batch_schedule` changes B at {late[0]} samples, at or after the budget ({train.budget_samples})")
