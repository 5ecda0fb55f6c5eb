"""The teacher of a distilled experiment (``distill:``, ``lbsearch.spec.distill``), found by the orchestrator: the kept
folder of a study's best trial (as ``lbsearch predict STUDY`` finds it) and its version, the digest of that folder's
files. The trial process gets the folder in its ``WorkerSpec`` (it never asks MLflow); a teacher that cannot be used
is a ``SpecError`` raised before any run is created. Torch-free."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbsearch.spec import DISTILL_TASKS, KEPT_FILE, Session, SpecError, teacher_study, trial_model_dir
from lbsearch.study import best_trial, load_existing_study

__all__ = ["Teacher", "find_teacher", "folder_version"]


@dataclass(frozen=True)
class Teacher:
    ref: str
    """As the spec wrote it: ``models:/STUDY@best`` or ``STUDY``."""
    study: str
    trial: int
    folder: Path
    version: str


def folder_version(folder: Path) -> str:
    """The digest of every file in a kept model's folder (names and contents): the teacher's version."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def find_teacher(session: Session, exp: Any, where: str = "distill") -> Teacher | None:
    """The teacher of ``exp`` (None without ``distill:``). ``where``: the field path of the ``distill`` section in the
    spec the user wrote (``experiment.distill`` in a study), for the errors."""
    d = getattr(exp, "distill", None)
    if d is None:
        return None
    if exp.task not in DISTILL_TASKS:
        raise SpecError(None, where, f"distillation learns a distribution over classes: it is for task {', '.join(DISTILL_TASKS)}, "
                        f"not `{exp.task}` (remove `distill:` or change the task)")
    name = teacher_study(d.teacher)
    try:
        study = load_existing_study(session, name)
    except SpecError as err:
        raise SpecError(None, f"{where}.teacher", f"no teacher {d.teacher!r}: {err.message}") from None
    best = best_trial(study)
    if best is None:
        raise SpecError(None, f"{where}.teacher", f"no teacher {d.teacher!r}: study {name!r} has no complete trial, so no kept model")
    folder = trial_model_dir(session.root, name, best.number)
    if not (folder / "config.json").is_file():
        raise SpecError(None, f"{where}.teacher", f"no teacher {d.teacher!r}: the best trial {best.number} of study {name!r} has no kept "
                        f"model in {folder} (see that study's `save_model`)")
    info_file = folder / KEPT_FILE
    task = json.loads(info_file.read_text()).get("task", "single_label") if info_file.is_file() else "single_label"
    if task not in DISTILL_TASKS:
        raise SpecError(None, f"{where}.teacher", f"the teacher {d.teacher!r} is a `{task}` model; a teacher must be a {', '.join(DISTILL_TASKS)} classifier")
    version = folder_version(folder)
    if d.teacher_version is not None and d.teacher_version != version:
        raise SpecError(None, f"{where}.teacher_version", f"the teacher {d.teacher!r} (trial {best.number} of {name!r}) is version {version} now; "
                        f"this config ran with version {d.teacher_version}: the same numbers need that teacher")
    return Teacher(d.teacher, name, best.number, folder, version)
