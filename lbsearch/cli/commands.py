"""The commands besides the search: ``reproduce`` a trial, ``train`` one experiment, ``predict`` with a kept model (``report`` is ``lbsearch.orchestrator.finish``).
Reproduce and train run through the same tracked trial as the search (``runner.run_tracked``)."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

from optuna.trial import FrozenTrial

from lbsearch.data import prepare_data
from lbsearch.orchestrator import TrialRun, resolved, run_tracked, trial_files
from lbsearch.spec import (
    CONFIG_ATTR,
    GPU_TOLERANCE,
    ExperimentConfig,
    Session,
    SpecError,
    as_recorded,
    data_cache_dir,
    experiment_model,
    is_script,
    models_dir,
    tracking_home,
    trial_model_dir,
    trials_dir,
)
from lbsearch.study import RUN_ID, best_trial, load_existing_study, stored_study
from lbsearch.tracking import THREADS, find_variant, git_commit, keep_train_model, reproduce_tags, reproduced_tags, tracker_for, train_tags

__all__ = ["reproduce", "train_once", "predict"]


def _home(study, name: str) -> str:
    """The MLflow experiment of a study's runs (a branch study's is its reference's: ``spec.branch.tracking_home``)."""
    stored = stored_study(study)
    return tracking_home(stored)[0] if stored else name


def _target(study, name: str, number: int | None) -> FrozenTrial:
    if number is None:
        target = best_trial(study)
        if target is None:
            raise SpecError(None, "study", f"study {name!r} has no complete trial to reproduce")
        return target
    matches = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not matches or CONFIG_ATTR not in matches[0].user_attrs:
        raise SpecError(None, "--trial", f"study {name!r} has no trial {number} with a saved config")
    return matches[0]


def _same(a: float | None, b: float | None, tol: float) -> bool:
    return a is not None and b is not None and math.isfinite(a) and abs(a - b) <= tol


def reproduce(session: Session, name: str, *, number: int | None, tolerance: float | None) -> int:
    """Re-run trial ``number`` (None: the best) from its saved resolved config as a new MLflow run; 0 when metrics agree
    within ``tolerance`` (None: 0 on the CPU, ``GPU_TOLERANCE`` on a GPU)."""
    study = load_existing_study(session, name)
    target = _target(study, name, number)
    raw = as_recorded(json.loads(target.user_attrs[CONFIG_ATTR]))
    exp = experiment_model(raw).model_validate(raw)
    data = None if is_script(exp) else prepare_data(exp, data_cache_dir(session.root))
    tracker = tracker_for(session, stored_study(study))
    orig_run = target.user_attrs.get(RUN_ID, "")
    tags = tracker.client.get_run(orig_run).data.tags if orig_run else {}
    parent = tags.get("mlflow.parentRunId")
    if tags.get(THREADS) and (exp.launcher.cpu or not _cuda()):  # a CPU's sums depend on the thread count: the trial's own
        os.environ["OMP_NUM_THREADS"] = tags[THREADS]
    prefix = f"[reproduce {target.number}]"
    run = TrialRun(exp=exp, data=data, workdir=trials_dir(session.root, name) / f"reproduce-{target.number:04d}-{uuid.uuid4().hex[:6]}",
                   prefix=prefix, experiment_id=tracker.experiment(_home(study, name)), run_name=f"reproduce-trial-{target.number}", parent=parent,
                   tags=reproduce_tags(name, orig_run, target.number, git_commit()) | _digest(data),
                   files=trial_files(session, exp.model_dump(mode="json"), name, target.number))
    session.out(f"{prefix} re-running trial {target.number} of {name} from its saved config")
    out = run_tracked(session, tracker, run)
    r = out.result
    if tolerance is None:
        tolerance = 0.0 if exp.launcher.cpu or not _cuda() else GPU_TOLERANCE
    m, ua = exp.metric.name, target.user_attrs
    rows = [("validation", m, ua.get(f"validation_{m}"), (r.validation or {}).get(m)),
            ("test", m, ua.get(f"test_{m}"), (r.test or {}).get(m)),
            ("validation", "loss", ua.get("validation_loss"), (r.validation or {}).get("loss"))]
    same = r.state == "complete" and all(_same(new, old, tolerance) for _, _, old, new in rows if old is not None)
    for split, metric, old, new in rows:
        session.out(f"{prefix} {split} {metric}: original {old!r} reproduced {new!r}")
    tracker.tags(out.run_id, reproduced_tags(same, tolerance))
    verdict = "reproduced: metrics identical" if same and tolerance == 0 else f"reproduced within tolerance {tolerance}" if same else "MISMATCH"
    session.out(f"{prefix} {verdict} (MLflow run {out.run_id})")
    return 0 if same else 1


def _digest(data) -> dict[str, str]:
    return {"data.digest": data.digest} if data is not None else {}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_once(session: Session, exp: ExperimentConfig, *, spec_file: Path | None = None) -> int:
    """One training run of an experiment, no search: a run in the MLflow experiment ``train-<name>``."""
    exp = resolved(exp)
    data = None if is_script(exp) else prepare_data(exp, data_cache_dir(session.root))
    tracker = tracker_for(session)
    run = TrialRun(exp=exp, data=data, workdir=trials_dir(session.root, f"train-{exp.name}") / uuid.uuid4().hex[:8], prefix="[train]",
                   experiment_id=tracker.experiment(f"train-{exp.name}"), run_name=exp.name,
                   tags=train_tags(git_commit(spec_file.parent if spec_file else None)) | _digest(data),
                   files=trial_files(session, exp.model_dump(mode="json"), None, None), save_model=True)
    out = run_tracked(session, tracker, run)
    r = out.result
    if r.state != "complete":
        session.out(f"[train] {r.state}: {r.reason}")
        return 1
    if r.model_dir:
        folder, why = keep_train_model(tracker, session.root, name=exp.name, experiment_id=run.experiment_id, run_id=out.run_id, saved=Path(r.model_dir))
        session.out(f"[train] model kept in {folder}" + (f"; not logged to MLflow ({why})" if why else f" (and logged to MLflow run {out.run_id})"))
    m = exp.metric.name
    test = f" · test {m} {r.test[m]:.4f}" if r.test and m in r.test else ""
    session.out(f"[train] validation {m} {r.validation[m]:.4f}{test} · MLflow run {out.run_id}")
    return 0


def predict(session: Session, name: str, text_or_file: str, *, number: int | None = None, model: str | None = None) -> int:
    """Classify texts with a kept model of study ``name`` (default: the best trial's; ``model``: a compressed
    variant's version or alias, ``lbsearch compress``): one line per text, ``label<TAB>probability<TAB>text``.
    ``text_or_file``: a text, or a file with one text a line."""
    if model is not None:
        load_existing_study(session, name)
        return _print_labels(session, find_variant(tracker_for(session), name, model)[0], text_or_file)
    if number is None:
        target = best_trial(load_existing_study(session, name))
        if target is None:
            raise SpecError(None, "study", f"study {name!r} has no complete trial")
        number = target.number
    folder = trial_model_dir(session.root, name, number)
    if not (folder / "config.json").is_file():
        kept = sorted(p.name for p in models_dir(session.root, name).glob("trial-*"))
        raise SpecError(None, "--trial", f"no kept model for trial {number} of study {name!r} (kept: {', '.join(kept) or 'none'}; "
                        "see the study's `save_model`)")
    return _print_labels(session, folder, text_or_file)


def _print_labels(session: Session, folder: Path, text_or_file: str) -> int:
    from lbsearch.trial import classify

    path = Path(text_or_file)
    texts = [t for t in path.read_text().splitlines() if t.strip()] if path.is_file() else [text_or_file]
    for text, (label, p) in zip(texts, classify(folder, texts)):
        session.out(f"{label}\t{p:.4f}\t{text}")
    return 0


