"""The MLflow tags of lbsearch's runs, built here from the trial's facts: what a run is (its study,
role and trial), where it came from (a retry, a resumed checkpoint, a reproduced trial), and how it
ended. Callers pass the facts; the tag names live in this module only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lbsearch.spec import PAUSED

if TYPE_CHECKING:
    from lbsearch.spec import TrialResult

__all__ = ["STUDY", "ROLE", "STATE", "REASON", "RAY_NODES", "RAY_GPUS", "trial_tags", "resumed_tags", "end_tags", "oom_retry_tags", "reproduce_tags", "reproduced_tags", "train_tags", "label_tags", "rung_tags", "promoted_tags", "distill_tags"]

STUDY, ROLE = "lbsearch.study", "lbsearch.role"
STATE, REASON = "lbsearch.state", "lbsearch.reason"
"""How a run ended: its state (``complete``, ``pruned``, ``failed``, ``paused``, ...) and the reason, where there is one."""
RAY_NODES, RAY_GPUS = "lbsearch.ray_nodes", "lbsearch.ray_gpus"
"""Where a Ray cluster ran a trial: each machine's node id (machine 0 first), and its GPU ids (``;`` between machines)."""


def trial_tags(study: str, number: int, optuna_trial_id: int, commit: str | None, retry_of: int | None = None) -> dict[str, Any]:
    """A study's trial: its study, role, number and Optuna id, the code's commit (and the trial it re-runs)."""
    tags: dict[str, Any] = {STUDY: study, ROLE: "trial", "lbsearch.trial": number, "optuna.trial_id": optuna_trial_id, "git.commit": commit}
    return tags | ({"lbsearch.retry_of": retry_of} if retry_of is not None else {})


def resumed_tags(number: int, step: int, samples: int, run_id: str) -> dict[str, Any]:
    """A trial that resumed from the checkpoint of trial ``number`` (at ``step``, ``samples`` seen, in MLflow run ``run_id``)."""
    return {"lbsearch.resumed_from_trial": number, "lbsearch.resumed_from_step": step, "lbsearch.resumed_from_samples": samples,
            "lbsearch.resumed_from_run": run_id}


def end_tags(result: TrialResult) -> dict[str, str]:
    """How a run ended: ``lbsearch.state`` (``paused`` for a trial paused at its rung, whose run ends FINISHED) and, where
    there is one, ``lbsearch.reason``."""
    state = "paused" if result.reason == PAUSED else result.state
    return {STATE: state, **({REASON: result.reason} if result.reason else {})}


def rung_tags(rung: int, samples: int | None) -> dict[str, Any]:
    """``pruner: asha_promote``: the rung a trial runs to and where it pauses (samples; none: it runs to its budget)."""
    return {"lbsearch.rung": rung, "lbsearch.rung_samples": samples if samples is not None else "budget"}


def promoted_tags(number: int, run_id: str) -> dict[str, Any]:
    """On a paused trial's run, once it is promoted: the trial and the run that go on with it (from its checkpoint)."""
    return {"lbsearch.promoted_to_trial": number, "lbsearch.promoted_to_run": run_id}



def oom_retry_tags(retries: int, split: dict[str, Any]) -> dict[str, Any]:
    """After an out-of-memory retry: how many so far, and the batch split it runs now."""
    return {"lbsearch.oom_retries": retries} | split


def reproduce_tags(study: str, run_id: str, number: int, commit: str | None) -> dict[str, Any]:
    return {STUDY: study, ROLE: "reproduce", "lbsearch.reproduces": run_id, "lbsearch.reproduces_trial": number, "git.commit": commit}


def reproduced_tags(same: bool, tolerance: float) -> dict[str, Any]:
    return {"lbsearch.reproduced": "yes" if same else "no", "lbsearch.tolerance": tolerance}


def train_tags(commit: str | None) -> dict[str, Any]:
    return {ROLE: "train", "git.commit": commit}


def label_tags(task: str, names_json: str) -> dict[str, str]:
    """The label mapping, as the model's ``id2label`` has it (cut to MLflow's tag length)."""
    return {"data.task": task, "data.labels": names_json[:5000]}


def distill_tags(teacher: Any, distill: Any) -> dict[str, Any]:
    """A distilled trial's teacher (``lbsearch.orchestrator.teacher.Teacher``: its reference, study and trial, kept folder
    and version) and ``distill``'s temperature, weight and targets; none without a teacher."""
    if teacher is None:
        return {}
    return {"distill.teacher": teacher.ref, "distill.teacher_trial": f"{teacher.study}/{teacher.trial}", "distill.teacher_model": str(teacher.folder),
            "distill.teacher_version": teacher.version, "distill.temperature": distill.temperature, "distill.weight": distill.weight,
            "distill.targets": distill.targets}
