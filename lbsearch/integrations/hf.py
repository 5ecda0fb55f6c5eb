"""HF ``Trainer`` as an lbsearch trial: a ``TrainerCallback`` over ``lbsearch.api``.

    from lbsearch.hf import LbsearchCallback, training_arguments

    trial = api.current()
    args = TrainingArguments(output_dir="out", **training_arguments(trial, defaults={...}))
    trainer = Trainer(model, args, train_dataset=..., eval_dataset=..., callbacks=[LbsearchCallback(trial)])
    trainer.train()

The trial's effective batch B maps to the Trainer's own arguments as
``per_device_train_batch_size`` (the micro-batch) x ``gradient_accumulation_steps`` (the accumulation)
x the world size (``launcher.processes``), so B = micro-batch x accumulation x processes as in lbsearch's
own loop. The callback has the Trainer evaluate at the trial plan's evaluation points (every
``train.eval_every_samples`` samples and at the end), reports those evaluations (``eval_*`` metrics,
without the prefix) at the samples seen, logs the training loss, learning rate and gradient norm,
and stops training on every rank when the trial is pruned or diverges. Run by hand, the callback
does nothing and ``training_arguments`` returns the defaults given.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

import lbsearch.integrations.api as api
from lbsearch.spec import DECAYING_SCHEDULES, SCHEDULES, TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR

__all__ = ["LbsearchCallback", "training_arguments"]

_SKIP = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def training_arguments(trial: api.Trial | None = None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """``TrainingArguments`` keywords for the trial: the batch split, lr, warmup, steps, clipping, weight
    decay, schedule and seed from the trial plan (over ``defaults``); only ``defaults`` by hand."""
    trial = trial or api.current()
    out = dict(defaults or {})
    if not trial.active:
        return out
    v = trial.values
    return out | {
        "per_device_train_batch_size": v["micro_batch"], "gradient_accumulation_steps": v["accumulation"],
        "per_device_eval_batch_size": 2 * v["micro_batch"], "learning_rate": v["lr"], "warmup_steps": v["warmup_steps"],
        "max_steps": v["steps"], "max_grad_norm": v["clip_norm"] or 0.0, "weight_decay": v["weight_decay"],
        "seed": v["seed"], **_schedule(v, trial.config.get("schedule", {}).get("min_lr_ratio", 0.0)),
    }


def _schedule(v: dict[str, Any], min_lr_ratio: float) -> dict[str, Any]:
    """The built-in loop's schedule (``lbsearch.trial.training.make_scheduler``): a decay to ``min_lr_ratio`` of the peak
    (the experiment's ``schedule.min_lr_ratio``) is transformers' warmup-stable-decay schedule with no stable phase."""
    if min_lr_ratio and v["schedule"] in DECAYING_SCHEDULES:
        return {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {
            "num_decay_steps": max(v["steps"] - v["warmup_steps"], 1), "decay_type": v["schedule"], "min_lr_ratio": min_lr_ratio}}
    return {"lr_scheduler_type": SCHEDULES[v["schedule"]]}


class LbsearchCallback(TrainerCallback):
    """Reports a ``Trainer``'s evaluations to the lbsearch trial at samples seen and stops it when pruned."""

    def __init__(self, trial: api.Trial | None = None) -> None:
        self.trial = trial or api.current()
        self.eval_steps = {s for s, _ in self.trial.plan.evals} if self.trial.plan else set()

    @staticmethod
    def _batch(args) -> int:
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.eval_steps:
            control.should_evaluate = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        names = {"loss": TRAIN_LOSS, "learning_rate": TRAIN_LR, "grad_norm": TRAIN_GRAD_NORM}
        values = {names[k]: float(v) for k, v in (logs or {}).items() if k in names}
        if values and state.global_step:
            self.trial.log(values, samples=state.global_step * self._batch(args), step=state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        found = {k.removeprefix("eval_"): float(v) for k, v in (metrics or {}).items()
                 if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(_SKIP)}
        if not found:  # an evaluation under another prefix (e.g. `trainer.evaluate(test, metric_key_prefix="test")`)
            return
        self.trial.report(found, samples=state.global_step * self._batch(args), step=state.global_step)
        if self.trial.should_stop():
            control.should_training_stop = True
