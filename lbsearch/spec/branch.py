"""Branching from checkpoints (the critical batch size over training, Merrill et al. 2025): the experiment's
``branching`` section, the reference's branch points and a branch's start, torch-free.

A *reference* trial keeps a checkpoint at each of its branch points (``branching.keep_at``: fractions of its
budget, or tokens for a language model and samples for a classifier) under its working folder,
``<trial>/branch_points/step-<S>/``; these outlive the trial (its ``checkpoints/`` do not). A *branch* is a trial whose
``branching.source`` names one of them: it loads the reference's model and optimizer state (the Adam moments
and step count) from it, starts a fresh schedule (``branch_experiment``: constant lr, no warmup) at k·B with the lr
of the rule, and trains a fixed number of tokens (samples) on. Its data order is the reference's sample stream
*continued*: the stream is one sequence of sample indices, a pure function of the seed (``trial.batching``), of
which a trial at batch B reads B per step; a branch reads it from the position the reference had reached, in
samples, k·B per step. A branch of the reference's seed at k = 1 is therefore the reference's own continuation
(bit for bit on a CPU); another seed reads the stream of that seed from the same position and reseeds dropout.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lbsearch.spec.workdir import INFO, PREFIX

__all__ = ["Branching", "BranchSource", "WithBranching", "BRANCH_POINTS", "BRANCH_TAGS", "CBS_TAGS", "keep_steps", "stream_start", "branch_points_dir", "branch_experiment",
           "SEARCHED", "RULES", "kept_points", "tracking_home"]

BRANCH_POINTS = "branch_points"
"""The folder, beside a trial's ``checkpoints``, of the checkpoints it keeps at its branch points (a rename leaves the points of
reference trials already run unfound)."""
BRANCH_TAGS = {key: f"lbsearch.branch.{key}" for key in ("reference", "point_samples", "point_tokens", "k", "rule", "lr", "study")}
"""The MLflow tags of branching: a branch's run (``reference`` ``#trial``, its point in samples and tokens, ``k``, ``rule``, ``lr``:
set by the trial, ``lbsearch.trial.branch``), the branch study's parent run (``reference``, ``rule``) and the reference trial's
run (``study``: its branch study), set by ``lbsearch.orchestrator.branch``."""
CBS_TAGS = {key: f"cbs.{key}" for key in ("eps", "trend")}
"""The tags of a branch study's parent run that summarise its critical batch: ε and the trend's verdict (its metrics:
``CBS_CBS``, ``CBS_CI_LOW``, ``CBS_CI_HIGH``, ``lbsearch.spec.metric_names``)."""
RULES = ("sqrt", "linear", "none")
"""A branch's lr rule: lr = η · k^α with α 0.5, 1 or 0 (``optimizer.lr_scaling`` of the branch, reference batch = B)."""
SEARCHED = ("branching.source.at_samples", "train.batch_size", "seed")
"""What a branch study's grid runs over: the branch point, k·B and the seed of the continuation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BranchSource(_Strict):
    """Where a branch starts: written by ``lbsearch branch`` (``lbsearch.orchestrator.branch``), not by hand."""

    checkpoints: str
    """The reference trial's ``branch_points`` folder."""
    at_samples: int = Field(ge=1)
    """The branch point: the samples the reference had seen (a checkpoint it kept there), and the stream position the branch reads from."""
    fingerprint: str
    """The reference experiment's (``spec.workdir.fingerprint``): the checkpoint must carry it."""
    reference: str
    """``<study>#<trial>``."""
    reference_seed: int
    reference_batch_size: int = Field(ge=1)
    reference_run: str | None = None
    """The reference trial's MLflow run: the branch study's parent run nests under it (``tracking_home``)."""


class Branching(_Strict):
    keep_at: list[float] = Field(default_factory=list)
    """Branch points of a reference trial: each a fraction of the budget (<= 1) or a count of tokens (language models) or samples
    (> 1); a checkpoint is kept at the first step that reaches each (before the budget's last step)."""
    source: BranchSource | None = None
    """A branch trial: the reference checkpoint it starts from."""

    @model_validator(mode="after")
    def _points(self) -> "Branching":
        bad = [p for p in self.keep_at if not p > 0]
        if bad:
            raise ValueError(f"`keep_at` points must be > 0 (a fraction of the budget, or tokens / samples), got {bad[0]}")
        return self


class WithBranching(BaseModel):
    """The experiment's field ``branching`` (``ExperimentConfig`` takes it from here)."""

    branching: Branching | None = None
    """Keep branch-point checkpoints (a reference) or start from one (a branch): ``lbsearch.spec.branch``, docs/critical_batch.md."""


def keep_steps(branching: Branching | None, budget_samples: int, batch_size: int, unit: int) -> set[int]:
    """The optimizer steps at which a reference keeps a checkpoint: the first step whose samples reach each point
    (``unit``: tokens per sample), those before the last step (a trial's end writes none)."""
    if branching is None:
        return set()
    steps = budget_samples // batch_size
    points = [p * budget_samples if p <= 1 else p / unit for p in branching.keep_at]
    return {s for s in (max(1, math.ceil(p / batch_size - 1e-9)) for p in points) if s < steps}


def tracking_home(cfg) -> tuple[str, str | None]:
    """Where a study's MLflow runs go: (the experiment's name, the run its parent run nests under). A study's own
    experiment, at the top; a branch study's (``lbsearch branch``) the reference study's, under the reference trial's run."""
    branching = getattr(cfg.experiment, "branching", None)
    src = branching.source if branching is not None else None
    return (src.reference.rsplit("#", 1)[0], src.reference_run) if src is not None else (cfg.name, None)


def stream_start(branching: Branching | None) -> int:
    """Where in the sample stream a trial starts reading (samples): a branch's point, else 0."""
    return branching.source.at_samples if branching is not None and branching.source is not None else 0


def branch_points_dir(checkpoint_dir: str | Path) -> Path:
    """A trial's kept branch points: ``branch_points`` beside its ``checkpoints`` folder."""
    return Path(checkpoint_dir).parent / BRANCH_POINTS


def kept_points(folder: Path) -> dict[int, Path]:
    """The whole checkpoints kept in a ``branch_points`` folder, by the samples seen at each."""
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / INFO).is_file()) if folder.is_dir() else []
    return {json.loads((p / INFO).read_text())["samples"]: p for p in found}


def branch_experiment(reference: dict[str, Any], lr: float, delta_samples: int, rule: str, source: dict[str, Any]) -> dict[str, Any]:
    """The experiment of a branch study (its grid sets ``SEARCHED``): the reference's resolved experiment with exactly these
    changes, which a branch's checkpoint check allows: the lr is the reference's (``lr``) at reference batch B, scaled
    by ``rule`` at k·B; the schedule constant without warmup (every branch starts fresh); the budget and the one
    evaluation at ``delta_samples``; no branch points of its own; ``branching.source``."""
    exp = copy.deepcopy(reference)
    B = reference["train"]["batch_size"]
    exp["optimizer"] |= {"lr": lr, "lr_scaling": rule, "lr_scaling_alpha": None, "reference_batch_size": B}
    exp["schedule"] |= {"name": "constant", "warmup_fraction": 0.0, "warmup_samples": None, "warmup_tokens": None}
    exp["train"] |= {"budget_samples": delta_samples, "eval_every_samples": delta_samples, "budget_tokens": None, "eval_every_tokens": None}
    exp["branching"] = {"keep_at": [], "source": source}
    return exp
