"""A batch-size schedule, the trial's side (``train.batch_schedule``; the phases are the plan's, ``lbsearch.spec.plan``).

At the first step of a new phase the trial re-plans B's split (``replan``): micro-batch x accumulation x processes
for the new B under the same micro-batch limit, Accelerate's accumulation count reset with it, and the noise-scale
monitor told the new sizes; the change is said in the log and logged as ``plan/*`` metrics at the samples seen.
The step before a change is a read point, so nothing measured at the old B is pending across it. The learning rate
follows the phases (``in_samples``): the schedule's shape (warmup, decay) read at the samples seen, times the
phase's lr. A resumed trial re-plans at its first step, so a kill across a change resumes exactly.
"""

from __future__ import annotations

import torch

from lbsearch.spec import PLAN_ACCUMULATION, PLAN_BATCH_SIZE, PLAN_LR, PLAN_MICRO_BATCH

__all__ = ["check_resizable", "in_samples", "phase_ends", "replan"]


def check_resizable(acc, plan) -> None:
    """DeepSpeed fixes the micro-batch and accumulation in its config when the engine is built: no schedule there."""
    if plan.phases and acc.distributed_type == "DEEPSPEED":
        raise ValueError("`train.batch_schedule` does not work under DeepSpeed, whose config fixes B's split for the whole run")


def phase_ends(plan) -> set[int]:
    """The last step of each phase but the last: read points."""
    return {first - 1 for first, *_ in plan.phases[1:]}


def in_samples(shape: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer, plan) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule of a trial with phases: ``shape`` (built with warmup and length in samples) read at the
    samples seen before each step, times the lr of the step's phase over the first phase's."""
    read = shape.lr_lambdas[0]

    def factor(done: int) -> float:  # ``done`` optimizer steps taken: the lr of step done + 1
        return plan.phase_at(done + 1)[1] / plan.lr * read(plan.samples_at(done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def replan(trial, step: int) -> None:
    """Before step ``step``: if its B is not the one the trial runs, the new split (see the module's docstring)."""
    if trial.plan.phase_at(step)[0] == trial.batch.batch_size:  # the B it runs: nothing to re-plan (most steps)
        return
    split = trial.plan.split_at(step)
    trial.batch = split
    trial.acc.gradient_accumulation_steps = split.accumulation
    trial.acc.step = 0  # Accelerate syncs gradients when its micro-step count is a multiple of the accumulation
    trial.gns.resize(split.batch_size, split.micro_batch, split.accumulation)
    seen, lr = trial.plan.samples_at(step - 1), trial.plan.phase_at(step)[1]
    tokens = f", {seen * trial.unit:,} tokens" if trial.lm else ""
    trial.say(f"step {step} ({seen:,} samples seen{tokens}): {split}; lr {lr:.3g}")
    trial.rep.metrics({PLAN_BATCH_SIZE: split.batch_size, PLAN_MICRO_BATCH: split.micro_batch, PLAN_ACCUMULATION: split.accumulation,
                       PLAN_LR: lr}, seen)
