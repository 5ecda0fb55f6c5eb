"""Successive halving with promotion (``pruner: asha_promote``), the trial's side: at its rung (``WorkerSpec.pause_at_samples``)
a trial writes a checkpoint and stops, paused; the orchestrator resumes it from there when it is promoted
(``lbsearch.study.rungs``), so that its run continues exactly as if it had never stopped."""

from __future__ import annotations

from lbsearch.trial.readings import CONTINUE, PAUSE

__all__ = ["pause_at_rung"]


def pause_at_rung(trial, saver, step: int, code: int) -> int:
    """``code`` (an evaluation's), or ``PAUSE`` at the trial's first evaluation at or past its rung once a checkpoint is
    written there. Where it cannot be written (a full disk: ``Checkpoints.save`` says so on every rank alike) the trial
    trains on past its rung instead: nothing is lost, it is only not paused."""
    at = trial.spec.pause_at_samples
    if code != CONTINUE or at is None or saver.folder is None or step >= trial.plan.steps or trial.evals.get(step, 0) < at:
        return code
    if not saver.save(step, f"at its rung ({at} samples)"):
        trial.say(f"not paused at its rung ({at} samples): no checkpoint to resume from; it trains on")
        trial.spec.pause_at_samples = None
        return code
    trial.say(f"paused at step {step} ({trial.plan.samples_at(step)} samples), its rung ({at} samples)")
    return PAUSE
