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

from lbsearch.spec.batch_schedule import change_points, scheduled
from lbsearch.spec.registry import LR_SCALING
from lbsearch.spec.tasks import LM_TASKS

if TYPE_CHECKING:
    from lbsearch.spec.config import ExperimentConfig, OptimizerConfig

Phases = tuple[tuple[int, int, float, int], ...]
"""A batch schedule's phases (``batch_phases``): (first optimizer step, B, lr, steps) each; empty at constant B."""

__all__ = ["Phases", "BatchPlan", "TrialPlan", "plan_batch", "eval_points", "lr_for_batch", "make_plan", "batch_phases"]


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


def eval_points(budget_samples: int, eval_every: int, batch_size: int, phases: Phases = ()) -> list[tuple[int, int]]:
    """(optimizer step, nominal samples) pairs at which to evaluate, the last at the budget.

    An evaluation happens after the first step whose samples seen reach the nominal point
    k * eval_every; it is reported at the nominal point, so trials of different B (or batch
    schedules: ``phases``, as ``batch_phases``) line up for pruning.
    """
    steps = phases[-1][0] - 1 + phases[-1][3] if phases else budget_samples // batch_size
    points: dict[int, int] = {}
    for nominal in range(eval_every, budget_samples, eval_every):
        step = min(steps, first_step_reaching(nominal, batch_size, phases))
        points.setdefault(step, nominal)
    points[steps] = budget_samples
    return sorted(points.items())


def first_step_reaching(samples: int, batch_size: int, phases: Phases = ()) -> int:
    """The first optimizer step after which ``samples`` have been seen (it may lie past the budget's last step)."""
    if not phases:
        return math.ceil(samples / batch_size)
    for first, B, _, _ in reversed(phases):
        start = samples_before(first, batch_size, phases)
        if samples > start or first == 1:
            return first - 1 + max(1, math.ceil((samples - start) / B))
    return 1


def samples_before(step: int, batch_size: int, phases: Phases = ()) -> int:
    """Samples seen before optimizer step ``step`` (1-based), i.e. after ``step - 1`` steps."""
    if not phases:
        return (step - 1) * batch_size
    return sum(min(max(0, step - first), n) * B for first, B, _, n in phases)


def batch_phases(points: list[tuple[int, int]], budget_samples: int, lr: float, alpha: float) -> Phases:
    """A batch schedule's phases, (first optimizer step, B, lr, steps) each, from its change points (samples seen, B)
    (``batch_schedule.change_points``). A change takes effect at the first step that starts at or after its point; the
    last phase runs while a whole step fits in the budget; a phase in which no step starts is dropped. lr = ``lr`` x (B / B0)^alpha."""
    B0, phases, seen, step = points[0][1], [], 0, 1
    for (_, B), nxt in zip(points, [p for p, _ in points[1:]] + [None]):
        fit = (budget_samples - seen) // B
        n = fit if nxt is None else max(0, min(math.ceil((nxt - seen) / B), fit))
        if n:
            phases.append((step, B, lr * math.pow(B / B0, alpha), n))
            seen, step = seen + n * B, step + n
    return tuple(phases)


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
    phases: Phases = ()
    """``train.batch_schedule``: (first step, B, lr, steps) of each phase; ``batch_size`` and ``lr`` are the first's."""

    def samples_at(self, step: int) -> int:
        """Samples seen after ``step`` optimizer steps."""
        return samples_before(step + 1, self.batch_size, self.phases)

    def phase_at(self, step: int) -> tuple[int, float]:
        """(B, lr) of optimizer step ``step``."""
        return next(((B, lr) for first, B, lr, _ in reversed(self.phases) if step >= first), (self.batch_size, self.lr))

    def split_at(self, step: int) -> BatchPlan:
        """The micro-batch x accumulation x processes split of step ``step``'s B."""
        B = self.phase_at(step)[0]
        return self.batch if B == self.batch_size else plan_batch(B, self.processes, self.max_micro_batch or B)

    @property
    def largest_batch(self) -> int:
        return max([self.batch_size] + [B for _, B, _, _ in self.phases])

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
                if self.tokens_per_sample else {}) | ({"plan.batch_schedule": self.schedule_text()} if self.phases else {})

    def schedule_text(self) -> str:
        """The phases as ``B from step S (lr)``, e.g. ``32 from step 1 (lr 0.001), 64 from step 101 (lr 0.00141)``."""
        return ", ".join(f"{B} from step {first} (lr {lr:.3g})" for first, B, lr, _ in self.phases)

    def split(self) -> dict[str, Any]:
        """The device-dependent split: ``plan.*`` MLflow tags, set from what the trial process ran."""
        return {"plan.micro_batch": self.micro_batch, "plan.accumulation": self.accumulation, "plan.max_micro_batch": self.max_micro_batch}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialPlan":
        return cls(**(d | {"evals": tuple(tuple(e) for e in d["evals"]), "phases": tuple(tuple(p) for p in d.get("phases", ()))}))

    def __str__(self) -> str:
        split = str(self.batch) if self.micro_batch is not None else f"effective batch {self.batch_size} (micro-batch to be probed)"
        if self.tokens_per_sample:
            split += f" ({self.batch_tokens:,} tokens: sequences of {self.tokens_per_sample})"
        if self.phases:
            split += f"; batch schedule: {self.schedule_text()}"
        return (f"{split}; lr {self.lr:.3g}; {self.steps} steps, warmup {self.warmup_steps}; "
                f"{len(self.evals)} evaluations; precision {self.precision}")


def make_plan(exp: "ExperimentConfig", processes: int | None = None) -> TrialPlan:
    """The plan of a resolved experiment (``precision`` as it will run) on ``processes`` processes
    (default: ``launcher.processes``)."""
    tr, procs, lr = exp.train, processes or exp.launcher.processes, lr_for_batch(exp.optimizer, exp.train.batch_size)
    batches = scheduled(tr)
    phases = batch_phases(change_points(batches, tr.batch_size), tr.budget_samples, lr, LR_SCALING[batches.lr_scaling]) if batches else ()
    steps = sum(n for *_, n in phases) if phases else tr.budget_samples // tr.batch_size
    s, trained = exp.schedule, samples_before(steps + 1, tr.batch_size, phases)
    warmup_samples = s.warmup_fraction * trained if s.warmup_fraction is not None else s.warmup_samples or 0
    warmup_steps = round(warmup_samples / tr.batch_size) if not phases else min(steps, first_step_reaching(warmup_samples, tr.batch_size, phases)) if warmup_samples else 0
    plan = TrialPlan(
        batch_size=tr.batch_size, processes=procs, max_micro_batch=None, micro_batch=None, accumulation=None,
        lr=lr, steps=steps, warmup_steps=warmup_steps,
        budget_samples=tr.budget_samples, evals=tuple(eval_points(tr.budget_samples, tr.eval_every_samples, tr.batch_size, phases)),
        precision=exp.launcher.precision, tokens_per_sample=exp.data.max_length if getattr(exp, "task", None) in LM_TASKS else None, phases=phases,
    )
    limit = exp.launcher.max_micro_batch
    return plan.with_limit(limit) if limit is not None else plan
