"""An experiment's ``distill:`` section: train its model (the student) on a kept model's soft targets as well as
on the labels (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"):

    loss = (1 - weight) * CE(student, labels) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with T the ``temperature`` (T^2 keeps the soft term's gradients on the scale of the hard term's as T grows).
``temperature`` and ``weight`` are fields like any other: a study searches them as ``distill.temperature`` and
``distill.weight``. The teacher is resolved to its kept folder by the orchestrator (``lbsearch.orchestrator.teacher``);
the trial computes the loss (``lbsearch.trial.distill``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lbsearch.spec.workdir import BEST_ALIAS, best_uri

__all__ = ["DistillConfig", "WithDistill", "DISTILL_TASKS", "teacher_study", "teacher_logits_file"]

DISTILL_TASKS = ("single_label",)
"""The tasks a student can be distilled for: soft targets are a distribution over classes. Multi-label (one sigmoid per
label), regression (no distribution) and language models (a distribution per token, a cache of vocabulary x tokens) are refused."""

_REF = re.compile(rf"^(?:models:/)?(?P<study>[A-Za-z0-9_.-]+)(?:@{re.escape(BEST_ALIAS)})?$")


def teacher_study(ref: str) -> str:
    """The study whose best trial's kept model ``ref`` names: ``models:/STUDY@best`` or ``STUDY``."""
    found = _REF.match(ref)
    if found is None:
        raise ValueError(f"`teacher` must be `{best_uri('STUDY')}` or a study name, got {ref!r}")
    return found["study"]


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    teacher: str
    """The kept model to learn from: ``models:/STUDY@best`` or ``STUDY``, the best trial's model of a study in the same
    mlruns/ (and storage), as ``lbsearch predict STUDY`` uses it. Its labels and vocabulary must be the student's."""
    temperature: float = Field(2.0, gt=0, le=100)
    """T: both distributions are softened by dividing the logits by T."""
    weight: float = Field(0.5, ge=0, le=1)
    """w: the soft-target term's share of the loss (0: labels only; 1: the teacher only)."""
    targets: Literal["cached", "on_the_fly"] = "cached"
    """``cached``: the teacher's logits on the training split are computed once, in fp32, and kept in mlruns/cache per
    teacher version and dataset digest (``lbsearch.spec.workdir.teacher_logits_file``); ``on_the_fly``: the teacher runs
    beside the student on each micro-batch (in the trial's precision), nothing kept."""
    teacher_version: str | None = None
    """Set by lbsearch when a trial starts (the content digest of the teacher's kept folder), so that the saved config
    names the teacher that ran: ``lbsearch reproduce`` refuses a teacher that has changed since. Leave it unset."""

    @field_validator("teacher")
    @classmethod
    def _ref(cls, value: str) -> str:
        teacher_study(value)
        return value


class WithDistill(BaseModel):
    """The ``distill`` section of an experiment (``lbsearch.spec.config.ExperimentConfig`` derives from this)."""

    distill: DistillConfig | None = None
    """Learn from a kept model's soft targets as well as from the labels; None: the labels only."""


def teacher_logits_file(cache_dir: Path, version: str, data_digest: str) -> Path:
    """Where the teacher of ``version`` keeps its logits on the training split of the data of ``data_digest``
    (``distill.targets: cached``): in the data cache folder (``lbsearch.spec.workdir.data_cache_dir``)."""
    return cache_dir / f"teacher-{version}-{data_digest}.npy"
