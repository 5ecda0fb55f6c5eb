"""The MLflow tags of lbsearch's runs, built here from the trial's facts: what a run is (its study,
role and trial), where it came from (a retry, a resumed checkpoint, a reproduced trial), and how it
ended. Callers pass the facts; the tag names live in this module only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lbsearch.spec import CPUS, DISTILL_LOGITS, GPUS, NOISE_SCALE, PACKING, PAUSED, PAUSED_STATE, RUN_ID, START, THREADS

if TYPE_CHECKING:
    from lbsearch.spec import TrialResult

__all__ = ["STUDY", "ROLE", "TRIAL", "STATE", "REASON", "RETRY_OF", "RESUMED_FROM_TRIAL", "RESUMED_FROM_STEP", "RESUMED_FROM_SAMPLES",
           "RESUMED_FROM_RUN", "RUNG", "RUNG_SAMPLES", "PROMOTED_TO_TRIAL", "PROMOTED_TO_RUN", "OOM_RETRIES", "REPRODUCES",
           "REPRODUCES_TRIAL", "REPRODUCED", "TOLERANCE", "MODEL", "MODEL_VERSION", "MACHINE", "RAY_NODES", "RAY_GPUS", "START", "CPUS", "THREADS", "GPUS", "PACKING",
           "NOISE_SCALE", "trial_tags", "resumed_tags", "end_tags", "oom_retry_tags", "reproduce_tags", "reproduced_tags", "train_tags", "label_tags", "rung_tags", "promoted_tags", "distill_tags",
           "BEST_TRIAL_TAG", "BEST_VALUE_TAG", "BEST_RUN_TAG", "best_tags", "DISTILL_LOGITS", "PARETO_TRIALS_TAG", "pareto_tags"]

STUDY, ROLE, TRIAL = "lbsearch.study", "lbsearch.role", "lbsearch.trial"
STATE, REASON = "lbsearch.state", "lbsearch.reason"
"""How a run ended: its state (``complete``, ``pruned``, ``failed``, ``paused``, ...) and the reason, where there is one."""
RETRY_OF = "lbsearch.retry_of"
RESUMED_FROM_TRIAL, RESUMED_FROM_STEP, RESUMED_FROM_SAMPLES, RESUMED_FROM_RUN = (
    "lbsearch.resumed_from_trial", "lbsearch.resumed_from_step", "lbsearch.resumed_from_samples", "lbsearch.resumed_from_run")
RUNG, RUNG_SAMPLES, PROMOTED_TO_TRIAL, PROMOTED_TO_RUN = "lbsearch.rung", "lbsearch.rung_samples", "lbsearch.promoted_to_trial", "lbsearch.promoted_to_run"
OOM_RETRIES = "lbsearch.oom_retries"
MODEL, MODEL_VERSION = "lbsearch.model", "lbsearch.model_version"
"""A kept model's folder and its registered version, on the run that made it."""
MACHINE = "lbsearch.machine"
"""Where a compressed variant was measured: the CPU's model name, family and units, its cores."""
REPRODUCES, REPRODUCES_TRIAL, REPRODUCED, TOLERANCE = "lbsearch.reproduces", "lbsearch.reproduces_trial", "lbsearch.reproduced", "lbsearch.tolerance"
RAY_NODES, RAY_GPUS = "lbsearch.ray_nodes", "lbsearch.ray_gpus"
"""Where a Ray cluster ran a trial: each machine's node id (machine 0 first), and its GPU ids (``;`` between machines)."""


def trial_tags(study: str, number: int, optuna_trial_id: int, commit: str | None, retry_of: int | None = None) -> dict[str, Any]:
    """A study's trial: its study, role, number and Optuna id, the code's commit (and the trial it re-runs)."""
    tags: dict[str, Any] = {STUDY: study, ROLE: "trial", TRIAL: number, "optuna.trial_id": optuna_trial_id, "git.commit": commit}
    return tags | ({RETRY_OF: retry_of} if retry_of is not None else {})


def resumed_tags(number: int, step: int, samples: int, run_id: str) -> dict[str, Any]:
    """A trial that resumed from the checkpoint of trial ``number`` (at ``step``, ``samples`` seen, in MLflow run ``run_id``)."""
    return {RESUMED_FROM_TRIAL: number, RESUMED_FROM_STEP: step, RESUMED_FROM_SAMPLES: samples, RESUMED_FROM_RUN: run_id}


def end_tags(result: TrialResult) -> dict[str, str]:
    """How a run ended: ``lbsearch.state`` (``paused`` for a trial paused at its rung, whose run ends FINISHED) and, where
    there is one, ``lbsearch.reason``."""
    state = PAUSED_STATE if result.reason == PAUSED else result.state
    return {STATE: state, **({REASON: result.reason} if result.reason else {})}


def rung_tags(rung: int, samples: int | None) -> dict[str, Any]:
    """``pruner: asha_promote``: the rung a trial runs to and where it pauses (samples; none: it runs to its budget)."""
    return {RUNG: rung, RUNG_SAMPLES: samples if samples is not None else "budget"}


def promoted_tags(number: int, run_id: str) -> dict[str, Any]:
    """On a paused trial's run, once it is promoted: the trial and the run that go on with it (from its checkpoint)."""
    return {PROMOTED_TO_TRIAL: number, PROMOTED_TO_RUN: run_id}



def oom_retry_tags(retries: int, split: dict[str, Any]) -> dict[str, Any]:
    """After an out-of-memory retry: how many so far, and the batch split it runs now."""
    return {OOM_RETRIES: retries} | split


def reproduce_tags(study: str, run_id: str, number: int, commit: str | None) -> dict[str, Any]:
    return {STUDY: study, ROLE: "reproduce", REPRODUCES: run_id, REPRODUCES_TRIAL: number, "git.commit": commit}


def reproduced_tags(same: bool, tolerance: float) -> dict[str, Any]:
    return {REPRODUCED: "yes" if same else "no", TOLERANCE: tolerance}


def train_tags(commit: str | None) -> dict[str, Any]:
    return {ROLE: "train", "git.commit": commit}


def label_tags(task: str, names_json: str) -> dict[str, str]:
    """The label mapping, as the model's ``id2label`` has it (cut to MLflow's tag length)."""
    return {"data.task": task, "data.labels": names_json[:5000]}


PARETO_TRIALS_TAG = "pareto.trials"
"""A multi-objective study's parent run: the trials on its Pareto front, comma-separated (``pareto_tags``)."""


def pareto_tags(numbers: list[int]) -> dict[str, str]:
    return {PARETO_TRIALS_TAG: ",".join(str(n) for n in numbers)}


BEST_TRIAL_TAG, BEST_VALUE_TAG, BEST_RUN_TAG = "best.trial", "best.value", "best." + RUN_ID
"""A study's parent run: its best trial so far, its value and MLflow run; beside them ``best.<param>`` for each of its params."""


def best_tags(number: int, value: float | None, run_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parent run's tags of the best trial so far."""
    return {BEST_TRIAL_TAG: number, BEST_VALUE_TAG: value, BEST_RUN_TAG: run_id} | {f"best.{k}": v for k, v in params.items()}


def distill_tags(teacher: Any, distill: Any) -> dict[str, Any]:
    """A distilled trial's teacher (``lbsearch.orchestrator.teacher.Teacher``: its reference, study and trial, kept folder
    and version) and ``distill``'s temperature, weight and targets; none without a teacher."""
    if teacher is None:
        return {}
    return {"distill.teacher": teacher.ref, "distill.teacher_trial": f"{teacher.study}/{teacher.trial}", "distill.teacher_model": str(teacher.folder),
            "distill.teacher_version": teacher.version, "distill.temperature": distill.temperature, "distill.weight": distill.weight,
            "distill.targets": distill.targets}
