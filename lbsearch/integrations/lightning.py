"""Lightning as an lbsearch trial: a ``Callback`` over ``lbsearch.api`` (``pip install lbsearch[lightning]``).

    from lbsearch.lightning import LbsearchCallback, trainer_arguments

    trial = api.current()
    loader = DataLoader(train, batch_size=trial.get("micro_batch", 16), shuffle=True)
    trainer = L.Trainer(callbacks=[LbsearchCallback(trial)], **trainer_arguments(trial, defaults={...}))
    trainer.fit(module, loader, val_loader)

The trial's effective batch B maps to Lightning's own arguments as the training DataLoader's
``batch_size`` (the micro-batch) x ``Trainer(accumulate_grad_batches=...)`` (the accumulation) x the
world size (``launcher.processes``, which ``accelerate launch`` starts and Lightning joins), so
B = micro-batch x accumulation x processes as in lbsearch's own loop. ``trainer_arguments`` also sets
``max_steps``, ``gradient_clip_val`` and the validation interval (every ``train.eval_every_samples``
samples). The callback reports each validation (the ``val_*`` / ``val/*`` metrics the module logs,
without the prefix) at the samples seen, logs the training loss, and stops training on every rank
when the trial is pruned or diverges. The learning rate and warmup (``trial.values["lr"]``,
``["warmup_steps"]``) belong to the module's ``configure_optimizers``. By hand it does nothing.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.callbacks import Callback

import lbsearch.integrations.api as api
from lbsearch.spec import TRAIN_LOSS, VAL

__all__ = ["LbsearchCallback", "trainer_arguments"]


def trainer_arguments(trial: api.Trial | None = None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lightning.Trainer`` keywords for the trial: accumulation, steps, clipping, validation interval."""
    trial = trial or api.current()
    out = dict(defaults or {})
    if not trial.active:
        return out
    v = trial.values
    every = max(1, math.ceil(v["eval_every_samples"] / v["batch_size"]))  # optimizer steps between validations
    return out | {"accumulate_grad_batches": v["accumulation"], "max_steps": v["steps"], "gradient_clip_val": v["clip_norm"],
                  "val_check_interval": every * v["accumulation"], "check_val_every_n_epoch": None}


class LbsearchCallback(Callback):
    """Reports a ``LightningModule``'s validations to the lbsearch trial at samples seen and stops it when pruned."""

    def __init__(self, trial: api.Trial | None = None) -> None:
        self.trial = trial or api.current()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.trial.active and loss is not None and trainer.global_step and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            seen = trainer.global_step * self.trial.plan.batch_size  # optimizer steps x B
            self.trial.log({TRAIN_LOSS: float(loss)}, samples=seen, step=trainer.global_step)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not self.trial.active or trainer.state.fn != "fit":  # not `trainer.validate()` after fit
            return
        found = {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val_", VAL))}
        self.trial.report(found, samples=trainer.global_step * self.trial.plan.batch_size, step=trainer.global_step)
        if self.trial.should_stop():
            trainer.should_stop = True
