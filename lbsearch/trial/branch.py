"""Branching on the trial's side (``lbsearch.spec.branch``): a reference keeps a checkpoint at each branch point;
a branch starts from one of them, with the reference's model and optimizer state and a schedule of its own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate.utils import set_seed

from lbsearch.spec import BRANCH_TAGS, INFO, branch_points_dir, checkpoint_name, keep_steps, kept_points

__all__ = ["kept_steps", "keep_point", "start_branch"]


def kept_steps(trial, folder: Path | None) -> set[int]:
    """The steps at which this trial keeps a checkpoint for branching (none without a checkpoint folder)."""
    if folder is None:
        return set()
    return keep_steps(trial.exp.branching, trial.plan.budget_samples, trial.plan.batch_size, trial.unit)


def keep_point(folder: Path, final: Path, step: int, keep: set[int]) -> None:
    """Main rank, a checkpoint just written whole at ``final`` (in ``folder``, the trial's ``checkpoints``): at a branch
    point, a copy of it (hard links: no bytes copied; the checkpoint is never written again) in ``branch_points``,
    renamed into place when whole, where the deletion of superseded checkpoints and the trial's end do not reach."""
    if step not in keep:
        return
    kept = branch_points_dir(folder)
    dst, tmp = kept / final.name, kept / checkpoint_name(step, tmp=True)
    if dst.exists():  # kept by the run that a resume continues
        return
    shutil.rmtree(tmp, ignore_errors=True)
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copytree(final, tmp, copy_function=os.link)
    tmp.rename(dst)


def start_branch(t) -> int:
    """Before a branch's first step (it has no checkpoint of its own yet): load the reference's kept checkpoint at the
    branch point — model, optimizer (Adam's moments and step count) and every RNG state — and keep the branch's own
    fresh schedule and lr (the rule's, in ``plan.lr``) and its own count of micro-batches (else Accelerate, counting on
    from the reference's, would close the accumulation mid-step and skip the optimizer's steps). Another seed than the reference's reseeds the RNGs. Returns 0:
    the branch's own steps start there. A trial that is not a branch: nothing, 0."""
    src = t.exp.branching.source if t.exp.branching is not None else None
    if src is None:
        return 0
    found = kept_points(Path(src.checkpoints)).get(src.at_samples)
    if found is None:
        raise FileNotFoundError(f"branching.source: no checkpoint kept at {src.at_samples} samples in {src.checkpoints}")
    info = json.loads((found / INFO).read_text())
    if info["fingerprint"] != src.fingerprint or info["processes"] != t.acc.num_processes:
        raise ValueError(f"branching.source: {found} is of another experiment or process count (fingerprint {info['fingerprint']} on "
                         f"{info['processes']} processes; the branch needs {src.fingerprint} on {t.acc.num_processes})")
    own = t.scheduler.state_dict()
    t.acc.load_state(str(found))  # the reference's schedule comes with it: the branch's own is put back
    t.scheduler.load_state_dict(own)
    t.acc.step = 0  # Accelerate's micro-batch count, restored at the reference's accumulation: the branch's (k·B) starts whole
    for group in t.optimizer.param_groups:
        group["lr"] = group["initial_lr"] = t.plan.lr
    if t.exp.seed != src.reference_seed:
        set_seed(t.exp.seed)
    k, tokens = t.plan.batch_size / src.reference_batch_size, src.at_samples * t.unit
    values = {"reference": src.reference, "point_samples": src.at_samples, "point_tokens": tokens, "k": f"{k:g}", "rule": t.exp.optimizer.lr_scaling,
              "lr": t.plan.lr}
    t.rep.tags({BRANCH_TAGS[key]: value for key, value in values.items()})
    t.say(f"branched from {src.reference} at {tokens:,} {'tokens' if t.unit > 1 else 'samples'} ({found.name}): k {k:g}, "
          f"B {t.plan.batch_size}, lr {t.plan.lr:.4g} ({t.exp.optimizer.lr_scaling}), seed {t.exp.seed}")
    return 0
