"""Host reads of a training step (read points, ``train.log_every_steps``): what a step leaves on the device,
and the host's reading of it at read points only.

A step's loss and pre-clip gradient norm stay device tensors. Reading one (``.item()``) makes the
host wait for the device to finish every kernel queued before it: a GPU then idles while the host
queues the next step. So a step reads nothing; its values wait in ``Readings.rows`` until a **read
point**: every ``train.log_every_steps`` steps, the first and the last step, each evaluation and
checkpoint, and within about two seconds of the last read (one process: by its clock; several: every rank
reads at the step that the slowest rank's step time gives, agreed at the last read). There the rows
come to the host in one transfer and become the metric rows, the clip count and the stop decision,
exactly as if each step had been read at once.

What a read point cannot wait for is the guard: a step whose loss or gradient norm is not finite,
or whose loss is above ``train.divergence_factor`` x the first (``lbsearch.spec.diverged``), must
never reach the optimizer. On the device, ``halted`` turns true at such a step and stays true; the
fused AdamW skips its update wherever it is true (its ``found_inf`` input, which it also takes from
a GradScaler), so the parameters and moments stay those of the step before. The next read point
finds the first halted row and stops the trial there, as diverged, at that step.

Where no such guard exists the check runs on the host before each optimizer step (``on_host``):
fp16, whose GradScaler decides the skip and the schedule of the next step on the host, and an
optimizer without ``found_inf`` (LAMB, LARS, AdamW with ``optimizer.fused: false``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from lbsearch.spec import diverged

__all__ = ["READ_AT_LEAST_EVERY_S", "CONTINUE", "DIVERGED", "OVERFLOW", "PRUNED", "PAUSE", "Readings", "Row"]

CONTINUE, DIVERGED, PRUNED, OVERFLOW, PAUSE = 0, 1, 2, 3, 4  # PAUSE: at its rung (lbsearch.trial.rung)
READ_AT_LEAST_EVERY_S = 2.0  # one process: a read point at least this often, whatever log_every_steps says


@dataclass
class Row:
    """One optimizer step as the host learns it."""

    step: int
    lr: float
    ms: int  # when the step was queued (the metric row's timestamp)
    loss: torch.Tensor | float
    grad_norm: torch.Tensor | float


class Readings:
    """A trial's per-step values between read points, and the host's state built from them: the first
    loss, the clipped and fp16-skipped step counts, the last loss and gradient norm."""

    def __init__(self, optimizer, scaler, factor: float, max_skipped: int, clip: float | None, every: int, processes: int, say=print,
                 slowest=lambda seconds: seconds) -> None:
        self.optimizer, self.scaler, self.say, self.slowest = optimizer, scaler, say, slowest
        self.factor, self.max_skipped, self.clip, self.every, self.processes = factor, max_skipped, clip, every, processes
        self.on_host = scaler is not None or not getattr(optimizer, "_step_supports_amp_scaling", False)
        self.rows: list[Row] = []
        self.halted: torch.Tensor | None = None
        self.first_t: torch.Tensor | None = None
        self.first_loss: float | None = None
        self.loss = self.grad_norm = math.nan
        self.clipped = self.skipped = self.skipped_in_row = 0  # skipped: optimizer steps the fp16 GradScaler skipped (in all, in a row)
        self.t_read, self.last_read, self._code, self.next_read = time.time(), 0, CONTINUE, every

    def before_optimizer(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> int:
        """CONTINUE when the optimizer may step. On the host: the check itself (CONTINUE, DIVERGED or
        OVERFLOW, read now). On the device: the guard, and CONTINUE (the fused optimizer skips halted steps)."""
        if self.on_host:
            loss_f, norm_f = loss.item(), norm.item()
            self.rows.append(Row(step, math.nan, int(time.time() * 1000), loss_f, norm_f))
            return self._check(loss_f, norm_f)
        if self.first_t is None:
            self.first_t = loss.detach().clone() if self.first_loss is None else torch.tensor(self.first_loss, dtype=loss.dtype, device=loss.device)
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm)) | (loss > self.factor * self.first_t)
        self.halted = bad if self.halted is None else self.halted | bad
        self.optimizer.found_inf = self.halted.float()
        self.rows.append(Row(step, math.nan, int(time.time() * 1000), loss.detach(), norm.detach()))
        return CONTINUE

    def after_optimizer(self, lr: float) -> None:
        """The learning rate the schedule gives after this step (what ``train/lr`` logs)."""
        self.rows[-1].lr = lr

    def due(self, step: int, last: int, forced: bool) -> bool:
        """Whether ``step`` is a read point. Every rank decides alike: one process also reads when two seconds
        have passed; several read at ``next_read``, which each read sets from the slowest rank's step time."""
        if self.on_host or forced or step in (1, last) or step % self.every == 0:
            return True
        if self.processes == 1:
            return time.time() - self.t_read >= READ_AT_LEAST_EVERY_S
        return step >= self.next_read

    def read(self) -> tuple[list[tuple[Row, float]], int, int]:
        """The rows since the last read on the host, each with its clip fraction, up to the first that
        stops the trial; the stop code and the step it stops at (CONTINUE and the last step otherwise)."""
        rows, self.rows = self.rows, []
        if not rows:
            return [], CONTINUE, self.last_read
        if not self.on_host:
            values = torch.stack([torch.stack([r.loss.double(), r.grad_norm.double()]) for r in rows]).tolist()  # the one transfer
            for r, (loss, norm) in zip(rows, values):
                r.loss, r.grad_norm = loss, norm
        out, code = [], CONTINUE
        for r in rows:
            self.loss, self.grad_norm = r.loss, r.grad_norm
            if self.on_host:
                code = self._code
            else:
                if self.first_loss is None:
                    self.first_loss = r.loss
                code = DIVERGED if diverged(r.loss, self.first_loss, self.factor, math.isfinite(r.grad_norm)) else CONTINUE
            self.clipped += int(self.clip is not None and r.grad_norm > self.clip)
            out.append((r, self.clipped / r.step))
            if code != CONTINUE:
                break
        if self.processes > 1:  # a collective, at a step every rank reads at: the next read within ~2 s of slow steps too
            per_step = self.slowest((time.time() - self.t_read) / max(1, rows[-1].step - self.last_read))
            self.next_read = rows[-1].step + min(self.every, max(1, int(READ_AT_LEAST_EVERY_S / max(per_step, 1e-9))))
        self.t_read, self.last_read = time.time(), out[-1][0].step
        return out, code, out[-1][0].step

    def _check(self, loss: float, norm: float) -> int:
        """The host check of one step. Under fp16 a finite loss with a non-finite gradient norm is an
        overflow the GradScaler skips (counted); more than ``train.max_skipped_steps`` in a row stop the
        trial. Otherwise a non-finite value, or a loss above ``divergence_factor`` x the first, diverges."""
        self.first_loss = loss if self.first_loss is None else self.first_loss
        finite = math.isfinite(loss) and math.isfinite(norm)
        if self.scaler is not None and math.isfinite(loss) and not finite:
            self.skipped, self.skipped_in_row = self.skipped + 1, self.skipped_in_row + 1
            self.say(f"fp16 overflow: step skipped by the GradScaler ({self.skipped_in_row} in a row, {self.skipped} in all)")
            self._code = OVERFLOW if self.skipped_in_row > self.max_skipped else CONTINUE
            return self._code
        self.skipped_in_row = 0
        self._code = DIVERGED if diverged(loss, self.first_loss, self.factor, finite) else CONTINUE
        return self._code

    def state(self) -> dict:
        return {"first_loss": self.first_loss, "clipped": self.clipped, "skipped": self.skipped, "skipped_in_row": self.skipped_in_row}

    def load(self, state: dict, step: int) -> None:
        self.first_loss, self.clipped, self.skipped, self.skipped_in_row = (state[k] for k in ("first_loss", "clipped", "skipped", "skipped_in_row"))
        self.rows, self.halted, self.first_t, self.last_read = [], None, None, step
        self.loss = self.grad_norm = math.nan
