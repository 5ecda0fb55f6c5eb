"""How a trial's training ends, decided in one place for the built-in loop and for your own code
through the API: when a loss has diverged, and what a failure's reason is (out of memory,
interrupted, or the exception's first line)."""

from __future__ import annotations

import math

from lbsearch.spec.protocol import TrialResult

__all__ = ["diverged", "DIVERGED_REASON", "is_out_of_memory", "failure", "WORKER_DIED", "INTERRUPTED", "TRACKING_LOST", "RETRYABLE", "PAUSED", "PAUSED_STATE", "PROMOTED_STATE", "TrackingOutage", "GPU_TOLERANCE"]

WORKER_DIED, INTERRUPTED, TRACKING_LOST = "worker died", "interrupted", "tracking unavailable"
RETRYABLE = (INTERRUPTED, WORKER_DIED, TRACKING_LOST)
"""The reasons of a failed trial that lbsearch re-runs (same params, from its last checkpoint, whose
checkpoints are therefore kept): its process or machine died, it was stopped (Ctrl-C, SIGTERM), or
MLflow stayed unreachable past the outage limit (``lbsearch.tracking.outbox``)."""

DIVERGED_REASON = "diverged"
"""The reason of a trial stopped because its loss diverged (``diverged``): told as pruned. The built-in loop, the API,
the samplers (which learn from diverged trials, ``lbsearch.study.sampler.informed``) and the search benchmarks use it."""

PAUSED = "paused"
"""The reason of a trial that successive halving with promotion (``pruner: asha_promote``) stopped at its rung: told as
pruned, its checkpoint kept; a promotion resumes it from there (``lbsearch.study.rungs``)."""

PAUSED_STATE, PROMOTED_STATE = "paused", "promoted"
"""The state a trial paused at its rung shows (a ``status`` row and its run's ``lbsearch.state`` tag), and the state its row shows
once a trial goes on from its checkpoint (``lbsearch.study.views``). The same word as the reason ``PAUSED``, but another fact."""

GPU_TOLERANCE = 0.01
"""How far each metric of a re-run (``lbsearch reproduce``) may differ from the trial's on a GPU by default; on the CPU: 0, bit for bit."""


class TrackingOutage(Exception):
    """MLflow stayed unreachable past the outage limit: a running trial is stopped (retryably), a study
    stops (resumable); the command says so and exits 1."""


def diverged(loss: float, first_loss: float, factor: float, finite: bool = True) -> bool:
    """A loss (or, with ``finite=False``, a gradient norm) that is not finite, or a loss above
    ``factor`` x the first loss (``train.divergence_factor``)."""
    return not finite or not math.isfinite(loss) or loss > factor * first_loss


def is_out_of_memory(err: BaseException | None) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA, MPS, or injected on CPU), or an error that says so
    (an allocator's RuntimeError, a framework that wraps it)."""
    return err is not None and ("OutOfMemoryError" in type(err).__name__ or "out of memory" in str(err).lower())


def failure(err: BaseException | None, otherwise: str = "") -> TrialResult:
    """The failed result of a trial that raised ``err`` (``otherwise`` where it raised nothing):
    ``interrupted`` for Ctrl-C, ``out of memory`` (retried with more accumulation), else the
    exception's type and first line."""
    if isinstance(err, KeyboardInterrupt):
        reason = INTERRUPTED
    elif err is not None:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    else:
        reason = otherwise
    oom = is_out_of_memory(err)
    return TrialResult(state="failed", reason="out of memory" if oom else reason, oom=oom)
