"""The trial plan: every number a trial derives from its experiment, computed here and nowhere else.

``make_plan(exp)`` turns a resolved experiment into the effective-batch split (micro-batch x
accumulation x processes = B), the learning rate after the scaling rule, the optimizer steps, the
warmup steps and the evaluation points. The orchestrator logs it, the worker trains by it and the
report reads it. Torch-free: ``lbsearch status`` and ``report`` never import torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from lbsearch.spec.registry import LR_SCALING
from lbsearch.spec.tasks import LM_TASKS

if TYPE_CHECKING:
    from lbsearch.spec.config import ExperimentConfig, OptimizerConfig

__all__ = ["BatchPlan", "TrialPlan", "plan_batch", "eval_points", "lr_for_batch", "make_plan"]


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    processes: int
    micro_batch: int
    accumulation: int

    def __str__(self) -> str:
        return (
            f"effective batch {self.batch_size} = micro-batch {self.micro_batch} x accumulation "
            f"{self.accumulation} x processes {self.processes}"
        )


def plan_batch(batch_size: int, processes: int, max_micro_batch: int) -> BatchPlan:
    """The largest micro-batch <= ``max_micro_batch`` that splits the per-process batch evenly."""
    if batch_size % processes:
        raise ValueError(f"batch size {batch_size} cannot be split over {processes} processes")
    per_process = batch_size // processes
    accumulation = max(1, math.ceil(per_process / max_micro_batch))
    while per_process % accumulation:
        accumulation += 1
    return BatchPlan(batch_size, processes, per_process // accumulation, accumulation)


def eval_points(budget_samples: int, eval_every: int, batch_size: int) -> list[tuple[int, int]]:
    """(optimizer step, nominal samples) pairs at which to evaluate, the last at the budget.

    An evaluation happens after the first step whose samples seen reach the nominal point
    k * eval_every; it is reported at the nominal point, so trials of different B line up for
    pruning.
    """
    steps = budget_samples // batch_size
    points: dict[int, int] = {}
    for nominal in range(eval_every, budget_samples, eval_every):
        step = min(steps, math.ceil(nominal / batch_size))
        points.setdefault(step, nominal)
    points[steps] = budget_samples
    return sorted(points.items())


def lr_for_batch(opt: "OptimizerConfig", batch_size: int) -> float:
    """lr = base_lr * (B / B_ref)^alpha: alpha is ``optimizer.lr_scaling_alpha`` where set, else that of the rule
    ``optimizer.lr_scaling`` names (``registry.LR_SCALING``)."""
    alpha = opt.lr_scaling_alpha if opt.lr_scaling_alpha is not None else LR_SCALING[opt.lr_scaling]
    return opt.lr * math.pow(batch_size / opt.reference_batch_size, alpha)


@dataclass(frozen=True)
class TrialPlan:
    """What a trial runs. ``micro_batch`` / ``accumulation`` are None until the micro-batch limit is
    known (``launcher.max_micro_batch: null`` is probed by the trial process)."""

    batch_size: int
    processes: int
    max_micro_batch: int | None
    micro_batch: int | None
    accumulation: int | None
    lr: float
    steps: int
    warmup_steps: int
    budget_samples: int
    evals: tuple[tuple[int, int], ...]
    """(optimizer step, nominal samples seen) of each evaluation; the last is at the budget."""
    precision: str
    tokens_per_sample: int | None = None
    """Language models: every sample is a packed sequence of this many tokens (``data.max_length``);
    budgets, batches and pruning points are then also stated in tokens."""

    @property
    def batch_tokens(self) -> int | None:
        """B_tokens = B x L for a language model; None otherwise."""
        return self.batch_size * self.tokens_per_sample if self.tokens_per_sample else None

    @property
    def warmup_end_samples(self) -> int:
        """The nominal samples of the first evaluation at or after the last warmup step (0 without warmup): before it the
        trial's lr is still rising, so it is not comparable with trials past their warmup and no pruner stops it
        (``pruner.protect_warmup``, ``lbsearch.study.pruner``)."""
        return next((n for s, n in self.evals if s >= self.warmup_steps), self.budget_samples) if self.warmup_steps else 0

    @property
    def batch(self) -> BatchPlan:
        if self.micro_batch is None or self.accumulation is None:
            raise ValueError("the micro-batch limit is not known yet (probed by the trial)")
        return BatchPlan(self.batch_size, self.processes, self.micro_batch, self.accumulation)

    def with_limit(self, max_micro_batch: int) -> "TrialPlan":
        """The same plan with a known per-device micro-batch limit (after a probe or an OOM retry)."""
        b = plan_batch(self.batch_size, self.processes, max_micro_batch)
        return replace(self, max_micro_batch=max_micro_batch, micro_batch=b.micro_batch, accumulation=b.accumulation)

    def params(self) -> dict[str, Any]:
        """The facts that hold whatever the device: logged once as ``plan.*`` MLflow params."""
        return {"plan.batch_size": self.batch_size, "plan.processes": self.processes, "plan.lr": self.lr, "plan.steps": self.steps,
                "plan.warmup_steps": self.warmup_steps, "plan.precision": self.precision, "plan.evals": [s for _, s in self.evals]} | (
                {"plan.batch_tokens": self.batch_tokens, "plan.budget_tokens": self.budget_samples * self.tokens_per_sample}
                if self.tokens_per_sample else {})

    def split(self) -> dict[str, Any]:
        """The device-dependent split: ``plan.*`` MLflow tags, set from what the trial process ran."""
        return {"plan.micro_batch": self.micro_batch, "plan.accumulation": self.accumulation, "plan.max_micro_batch": self.max_micro_batch}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialPlan":
        return cls(**(d | {"evals": tuple(tuple(e) for e in d["evals"])}))

    def __str__(self) -> str:
        split = str(self.batch) if self.micro_batch is not None else f"effective batch {self.batch_size} (micro-batch to be probed)"
        if self.tokens_per_sample:
            split += f" ({self.batch_tokens:,} tokens: sequences of {self.tokens_per_sample})"
        return (f"{split}; lr {self.lr:.3g}; {self.steps} steps, warmup {self.warmup_steps}; "
                f"{len(self.evals)} evaluations; precision {self.precision}")


def make_plan(exp: "ExperimentConfig", processes: int | None = None) -> TrialPlan:
    """The plan of a resolved experiment (``precision`` as it will run) on ``processes`` processes
    (default: ``launcher.processes``)."""
    tr, procs = exp.train, processes or exp.launcher.processes
    steps = tr.budget_samples // tr.batch_size
    s = exp.schedule
    warmup_samples = s.warmup_fraction * steps * tr.batch_size if s.warmup_fraction is not None else s.warmup_samples or 0
    plan = TrialPlan(
        batch_size=tr.batch_size, processes=procs, max_micro_batch=None, micro_batch=None, accumulation=None,
        lr=lr_for_batch(exp.optimizer, tr.batch_size), steps=steps, warmup_steps=round(warmup_samples / tr.batch_size),
        budget_samples=tr.budget_samples, evals=tuple(eval_points(tr.budget_samples, tr.eval_every_samples, tr.batch_size)),
        precision=exp.launcher.precision, tokens_per_sample=exp.data.max_length if getattr(exp, "task", None) in LM_TASKS else None,
    )
    limit = exp.launcher.max_micro_batch
    return plan.with_limit(limit) if limit is not None else plan
