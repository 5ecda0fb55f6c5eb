"""A trial that goes on from another's checkpoint, the orchestrator's side: the re-run of an interrupted trial, and successive
halving with promotion (``pruner: asha_promote``, the rules in ``lbsearch.study.rungs``).

With ``asha_promote`` each trial runs to its rung and is paused there with its checkpoint (told to Optuna as pruned, reason
``paused``; its MLflow run ends FINISHED with ``lbsearch.state`` ``paused``). Before a new configuration is asked, ``promote``
enqueues the continuation of a paused trial that is in the top 1/``reduction_factor`` at its rung: a new Optuna trial with the
same params and ``resume_of``, which takes over the paused trial's checkpoints (``resume``) and its intermediate values and
runs to the next rung. Its MLflow run is a new one that holds the whole curve (the earlier part copied, ``started``), tagged
with the run it goes on from; the paused run is tagged with the trial and run that go on with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna

from lbsearch.spec import PAUSED, RESUME_OF_ATTR, RETRY_OF_ATTR, RUNG_ATTR, StudyConfig, TrialResult, adopt, sample_unit
from lbsearch.study import RESUMED_FROM, RUN_ID, configurations, is_multi, last_resort, promotable, rung_to_run, rungs
from lbsearch.tracking import RESUMED_FROM_RUN, RESUMED_FROM_STEP, Tracker, TrackingError, promoted_tags, resumed_tags, rung_tags

__all__ = ["promote", "rung_plan", "resume", "started", "ended_line"]

ASHA = "asha_promote"


def _unit(cfg: StudyConfig) -> int:
    exp = cfg.experiment
    return sample_unit(getattr(exp, "task", "single_label"), exp.data.max_length) if getattr(exp, "data", None) is not None else 1


def promote(study: optuna.Study, cfg: StudyConfig, say: Callable[[str], None]) -> bool:
    """Under the study lock, before a new configuration is asked: enqueue the continuation of the paused trial to promote
    (``promotable``; or, once every configuration has been tried and none is promotable, ``last_resort``). True: one waits."""
    if cfg.pruner.name != ASHA:
        return False
    points, unit = rungs(cfg.pruner, cfg.experiment.train), _unit(cfg)
    found = promotable(study, points, cfg.pruner.reduction_factor, unit)
    if found is None and configurations(study.get_trials(deepcopy=False), cfg.max_retries) >= cfg.n_trials:
        found = last_resort(study, points, unit)
    if found is None:
        return False
    paused, why = found
    study.enqueue_trial(paused.params, user_attrs={RESUME_OF_ATTR: paused.number})
    say(f"[study {cfg.name}] trial {paused.number} promoted ({why}): it goes on from its checkpoint")
    return True


def rung_plan(study: optuna.Study, cfg: StudyConfig, trial: optuna.Trial, script: bool) -> tuple[dict[str, Any], int | None]:
    """The rung ``trial`` runs to (user attribute ``rung``): its MLflow tags and where it pauses (samples; None: at its
    budget). Nothing outside ``asha_promote``; a script trial is never paused (it runs to its budget)."""
    if cfg.pruner.name != ASHA or script:
        return {}, None
    points = rungs(cfg.pruner, cfg.experiment.train)
    k = rung_to_run(study.get_trials(deepcopy=False), trial)
    trial.set_user_attr(RUNG_ATTR, k)
    at = points[k] if k < len(points) else None
    return rung_tags(k, at), at


def resume(study: optuna.Study, trials_dir: Path, trial: optuna.Trial, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """A re-run (``retry_of``) or a promoted trial's continuation (``resume_of``) takes over the checkpoints of the trial it goes
    on from and the intermediate values that trial reported up to them, so that the pruner and the rungs see one curve.
    Returns the MLflow tags that say so."""
    number = trial.user_attrs.get(RETRY_OF_ATTR, trial.user_attrs.get(RESUME_OF_ATTR))
    info = adopt(trials_dir, number, workdir)
    if info is None:
        if RESUME_OF_ATTR in trial.user_attrs:
            say(f"[trial {trial.number}] trial {number}'s checkpoint is not on this machine: it trains from the start")
        return {}
    old = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if not is_multi(study):  # Optuna takes intermediate values of single-objective studies only
        carried = {e["nominal_samples"] for e in info["result"].get("evals", [])}
        for samples, value in sorted(old.intermediate_values.items()):
            if samples in carried:
                trial.report(value, samples)
    # the run that holds the curve: the earlier trial's, or where it got no run (MLflow was down) the one it resumed
    source = old.user_attrs.get(RUN_ID) or old.user_attrs.get(RESUMED_FROM["run"], "")
    values = {"trial": number, "step": info["step"], "samples": info["samples"], "run": source}
    for key, value in values.items():
        trial.set_user_attr(RESUMED_FROM[key], value)
    tags = resumed_tags(number, info["step"], info["samples"], source)
    say(f"[trial {trial.number}] resumes trial {number} from its checkpoint at step {info['step']} ({info['samples']} samples)")
    return tags


def started(tracker: Tracker, trial: optuna.Trial, run_id: str, resumed: dict[str, Any], say: Callable[[str], None]) -> None:
    """The trial's MLflow run exists: the earlier trial's curves up to the checkpoint are copied into it (one curve in MLflow
    too), and a promoted trial's paused run names the trial and run that go on with it."""
    trial.set_user_attr(RUN_ID, run_id)
    source = resumed.get(RESUMED_FROM_RUN)
    if not source:
        return
    try:
        tracker.copy_metrics(source, run_id, resumed[RESUMED_FROM_STEP])
        if RESUME_OF_ATTR in trial.user_attrs and RETRY_OF_ATTR not in trial.user_attrs:
            tracker.tags(source, promoted_tags(trial.number, run_id))
    except TrackingError as err:
        say(f"[trial {trial.number}] earlier metrics not copied: {str(err).splitlines()[0][:200]}")


def ended_line(r: TrialResult, trial: optuna.Trial) -> str:
    """How a trial ended, for its last line: ``paused at rung k (N samples)``, or its state and reason."""
    if r.reason == PAUSED:
        return f"paused at rung {trial.user_attrs.get(RUNG_ATTR, 0)} ({r.samples} samples)"
    return r.state + (f" ({r.reason})" if r.reason and r.reason != "pruned" else "")
