"""The gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, appendix A.1).

Every optimizer step sees the gradient at two batch sizes for free: the small gradients of size b
(under accumulation on one process: the gradient of the step's first ``head`` micro-batches, a
random subset of the step that ``batching.step_micro_batches`` keeps apart, read before the next
micro-batch adds to it; with P > 1: each rank's gradient, a random share, before the all-reduce) and the averaged gradient of size B (its norm is the pre-clip norm that
clipping computes anyway). With s the mean squared norm of the small gradients and l the squared
norm of the large one, unbiased per-step estimates are

    |G|² ≈ (B·l − b·s) / (B − b),        tr(Σ) ≈ (s − l) / (1/b − 1/B).

Each is noisy, so lbsearch keeps bias-corrected exponential moving averages of both and reports the
ratio of the averages. One process without accumulation sees a single batch size: nothing to measure.

Under accumulation, keeping the head a random subset costs padding (the head and the rest are
length-sorted apart, not the step as a whole): ~12% of step time at B = 16 x 4 on CPU. So the
monitor measures every ``every``-th optimizer step only (``train.noise_scale_every``),
and only those steps take the head layout (``head_for_step``); the others are sorted whole.
"""

from __future__ import annotations

import math

import torch

from lbsearch.spec import GNS_B_SIMPLE, GNS_B_SIMPLE_TOKENS, GNS_GRAD_SQ, GNS_TRACE_SIGMA

__all__ = ["NoiseScale", "GradientNoiseMonitor", "head_for_step"]


def head_for_step(step: int, processes: int, accumulation: int, every: int) -> int:
    """Micro-batches at the start of optimizer step ``step`` (1-based) laid out apart as the small
    gradient's random subset: ``accumulation // 2`` on the measured steps of one process under
    accumulation, else 0 (the rank's share is sorted whole)."""
    return accumulation // 2 if processes == 1 and accumulation > 1 and (step - 1) % every == 0 else 0


class NoiseScale:
    """EMAs of the unbiased |G|² and tr(Σ) estimates, and their ratio B_simple."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.n = 0
        self._g2 = self._trace = 0.0

    @staticmethod
    def estimates(s: float, l: float, b: float, big: float) -> tuple[float, float]:
        """(|G|², tr(Σ)) from one step: s, l the squared norms at batch sizes b < big."""
        return (big * l - b * s) / (big - b), (s - l) / (1.0 / b - 1.0 / big)

    def update(self, s: float, l: float, b: float, big: float) -> None:
        g2, trace = self.estimates(s, l, b, big)
        self.n += 1
        self._g2 = self.beta * self._g2 + (1 - self.beta) * g2
        self._trace = self.beta * self._trace + (1 - self.beta) * trace

    def state(self) -> list[float]:
        """What a checkpoint keeps (``lbsearch.trial.checkpoint``)."""
        return [self.n, self._g2, self._trace]

    def load(self, state: list[float]) -> None:
        self.n, self._g2, self._trace = int(state[0]), state[1], state[2]

    def _corrected(self, v: float) -> float | None:
        return v / (1 - self.beta**self.n) if self.n else None

    @property
    def grad_sq(self) -> float | None:
        return self._corrected(self._g2)

    @property
    def trace(self) -> float | None:
        return self._corrected(self._trace)

    @property
    def b_simple(self) -> float | None:
        g2, trace = self.grad_sq, self.trace
        # either estimate can come out <= 0 while noise dominates it: then there is no ratio to report
        return trace / g2 if g2 is not None and trace is not None and g2 > 0 and trace > 0 else None


class GradientNoiseMonitor:
    """Collects s and l around an Accelerate training step and feeds a NoiseScale.

    Call ``begin(step)`` before each optimizer step (it returns the head for the micro-batch
    layout), ``after_backward()`` after each micro-batch's ``accelerator.backward`` and
    ``step(pre_clip_norm)`` once per optimizer step; steps are measured every ``every``-th. With P > 1 the model must be the prepared
    (DDP-wrapped) model: a communication hook reads each rank's gradient before the all-reduce. Under FSDP or DeepSpeed
    there is no such gradient: the monitor is off, and ``off_reason`` says why.
    A monitor built with ``enabled=False`` (or that has nothing to measure) does nothing.
    """

    def __init__(self, accelerator, model: torch.nn.Module, batch_size: int, micro_batch: int, accumulation: int, beta: float,
                 every: int = 1, enabled: bool = True) -> None:
        self.acc = accelerator
        self.every = every
        self._measure = False
        self._unscale = 1.0
        self.big = batch_size
        self.noise = NoiseScale(beta)
        self.accumulation = accumulation
        self._s: torch.Tensor | None = None
        self._seen = self._step = 0
        self._pending: list[tuple[int, torch.Tensor]] = []
        self.params = [p for p in model.parameters() if p.requires_grad]
        processes = accelerator.num_processes
        kind = getattr(accelerator.distributed_type, "value", "")
        self.off_reason: str | None = None
        """Why a monitor that was asked for measures nothing (shown in the trial's log and MLflow tags)."""
        self._single = enabled and kind not in ("FSDP", "DEEPSPEED") and processes == 1  # measures under accumulation only
        self.mode: str | None = None
        self.b: int | None = None
        # off (``enabled=False``): every method does nothing, and steps keep the whole-sorted layout
        if enabled and kind in ("FSDP", "DEEPSPEED"):
            self.off_reason = (f"{kind} reduces (and shards) the gradients itself: no rank's own gradient is there to read, "
                               "and the per-rank hook needs DDP")
        elif enabled and processes > 1:
            self.mode, self.b = "rank", batch_size // processes
            self._rank_sq = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            model.register_comm_hook(state=self, hook=_norm_then_allreduce)
        elif enabled:
            self.resize(batch_size, micro_batch, accumulation)

    def resize(self, batch_size: int, micro_batch: int, accumulation: int) -> None:
        """A new split of B (a batch schedule's change, between read points: nothing pending). One process measures
        under accumulation only; the estimates (of |G|² and tr(Σ), which do not depend on B) carry on."""
        self.big, self.accumulation = batch_size, accumulation
        if self.mode == "rank":
            self.b = batch_size // self.acc.num_processes
        elif self._single:
            on = accumulation > 1
            self.mode, self.b = ("micro", micro_batch * (accumulation // 2)) if on else (None, None)
            self.off_reason = None if on else "one process without accumulation sees one batch size"

    @property
    def active(self) -> bool:
        return self.mode is not None

    @property
    def head(self) -> int:
        """Micro-batches (of one process under accumulation) whose summed gradient is the small one."""
        return self.accumulation // 2 if self.mode == "micro" else 0

    def begin(self, step: int) -> int:
        """Start optimizer step ``step`` (1-based); returns the head for ``step_micro_batches``."""
        self._measure, self._step = self.active and (step - 1) % self.every == 0, step
        if self._measure:
            # fp16: backward ran on the loss times the GradScaler's scale, so the gradients read
            # here are scaled (clip_grad_norm_ unscales before the pre-clip norm); the scale only
            # changes at the optimizer step
            scaler = getattr(self.acc, "scaler", None)
            scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
            self._unscale = 1.0 / scale**2
        return head_for_step(step, self.acc.num_processes, self.accumulation, self.every) if self.active else 0

    @torch.no_grad()
    def after_backward(self) -> None:
        """After the first ``head`` micro-batches of a step, .grad = (head / accumulation) x their
        gradient: one read of the gradients per step, no copy."""
        if self.mode != "micro" or not self._measure:
            return
        self._seen += 1
        if self._seen == self.head:
            grads = [p.grad for p in self.params if p.grad is not None]
            self._s = _sum_sq(grads) * (self.accumulation / self.head) ** 2 * self._unscale

    def step(self, pre_clip_norm: torch.Tensor) -> None:
        """After clipping: keep this step's small-batch |G|² and pre-clip norm (device tensors) for ``settle``."""
        if self.mode is None:
            return
        if not self._measure:
            self._seen = 0
            if self.mode == "rank":
                self._rank_sq.zero_()
            return
        if self.mode == "micro":
            s = self._s
            self._s, self._seen = None, 0
        else:
            s = self._rank_sq.clone()
            torch.distributed.all_reduce(s)
            s = s / self.acc.num_processes * self._unscale
            self._rank_sq.zero_()
        self._pending.append((self._step, torch.stack([s.double(), pre_clip_norm.double()])))

    def settle(self, until: int) -> None:
        """At a read point: the kept steps up to ``until`` (the trial's last step) into the estimates, in
        order and in one transfer to the host; later ones (after a divergence) are dropped."""
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).tolist()
        for (step, _), (s, norm) in zip(self._pending, values):
            if step <= until and math.isfinite(norm) and math.isfinite(s):
                self.noise.update(s, norm**2, self.b, self.big)
        self._pending.clear()

    def metrics(self, unit: int | None = None) -> dict[str, float | None]:
        """The estimates so far; with a language model's ``unit`` (tokens per sample), B_simple in tokens too."""
        n = self.noise
        if not self.active:
            return {}
        tokens = {GNS_B_SIMPLE_TOKENS: n.b_simple * unit} if unit and n.b_simple is not None else {}
        return {GNS_B_SIMPLE: n.b_simple, GNS_GRAD_SQ: n.grad_sq, GNS_TRACE_SIGMA: n.trace} | tokens


def _sum_sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors)).double().pow(2).sum()


def _norm_then_allreduce(state: GradientNoiseMonitor, bucket):
    """DDP communication hook: add this rank's squared gradient norm, then the default all-reduce
    (which averages over ranks, as DDP does without a hook)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state._rank_sq += torch.linalg.vector_norm(bucket.buffer(), dtype=torch.float64) ** 2
    return allreduce_hook(None, bucket)
