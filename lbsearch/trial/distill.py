"""The loss of a trial: the task's own (``Plain``), or for a distilled experiment (``distill:``, ``lbsearch.spec.distill``)

    (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))      (Hinton et al., 2015)

with the teacher's logits read from the cache (computed once per teacher version and data, in fp32, by rank 0) or computed
on each micro-batch. The two terms of each step are kept on the device and become the metric rows ``train/loss_hard`` and
``train/loss_soft`` at the next read point, beside ``train/loss`` (their weighted sum, what is optimised)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lbsearch.spec import DISTILL_LOGITS, TRAIN_LOSS_HARD, TRAIN_LOSS_SOFT, ExperimentConfig, WorkerSpec, teacher_logits_file
from lbsearch.trial.batching import pad, to_device
from lbsearch.trial.distributed import average_over_ranks
from lbsearch.trial.model import load_model, uses_token_types
from lbsearch.trial.training import task_loss

__all__ = ["Plain", "Distiller", "make_loss", "teacher_logits", "soft_loss"]

TEACHER_BATCH = 64
"""Sequences per forward of the teacher while its logits are cached (length-sorted: little padding)."""


class Plain:
    """The task's loss, nothing logged beside it: the trial's loss without ``distill:``."""

    def __init__(self, task: str) -> None:
        self.task = task

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return task_loss(self.task, logits, targets)

    def close_step(self, step: int, accumulation: int) -> None:
        pass

    def row(self, step: int) -> dict[str, float]:
        return {}


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the mean over the rows."""
    return F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1), reduction="batchmean",
                    log_target=True) * temperature**2


class Distiller:
    """The distillation loss of one rank (``make_loss`` builds it)."""

    def __init__(self, acc, exp: ExperimentConfig, train, pad_id: int, teacher: torch.Tensor | torch.nn.Module, use_types: bool) -> None:
        d = exp.distill
        self.acc, self.T, self.w = acc, d.temperature, d.weight
        self.train, self.pad_id, self.use_types = train, pad_id, use_types
        self.cached = teacher if isinstance(teacher, torch.Tensor) else None  # (training samples, classes) on the device
        self.teacher = None if isinstance(teacher, torch.Tensor) else teacher
        self.parts = torch.zeros(2, dtype=torch.float64, device=acc.device)  # this step's hard and soft terms, summed over micro-batches
        self.pending: dict[int, torch.Tensor] = {}  # step -> its two terms averaged over ranks, until the next read point

    def _teacher(self, idx: np.ndarray) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[to_device(idx.astype(np.int64), self.acc.device)]
        seqs = [self.train.ids[i] for i in idx]
        types = [self.train.types[i] for i in idx] if self.use_types else None
        with torch.no_grad(), self.acc.autocast():
            return self.teacher(**pad(seqs, self.pad_id, self.acc.device, types)).logits.float()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        logits = logits.float()
        hard = F.cross_entropy(logits, targets)
        soft = soft_loss(logits, self._teacher(idx), self.T)
        self.parts += torch.stack([hard.detach(), soft.detach()]).double()
        return (1 - self.w) * hard + self.w * soft

    def close_step(self, step: int, accumulation: int) -> None:
        """The step's terms, as the worker averages its loss: summed over micro-batches / accumulation, mean over ranks."""
        self.pending[step] = average_over_ranks(self.acc, self.parts / accumulation)
        self.parts = torch.zeros_like(self.parts)

    def row(self, step: int) -> dict[str, float]:
        parts = self.pending.pop(step, None)
        if parts is None:
            return {}
        hard, soft = parts.tolist()
        return {TRAIN_LOSS_HARD: hard, TRAIN_LOSS_SOFT: soft}


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, train, pad_id: int, device, use_types: bool) -> np.ndarray:
    """The teacher's logits on every training sample, in fp32 (float32, in the split's order)."""
    order = np.argsort([len(s) for s in train.ids], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), TEACHER_BATCH):
        chunk = order[start : start + TEACHER_BATCH]
        types = [train.types[i] for i in chunk] if use_types else None
        logits = teacher(**pad([train.ids[i] for i in chunk], pad_id, device, types)).logits.float().cpu().numpy()
        out = np.zeros((len(order), logits.shape[1]), np.float32) if out is None else out
        out[chunk] = logits
    return out if out is not None else np.zeros((0, 0), np.float32)


def _check(folder: Path, spec: WorkerSpec, names: list[str]) -> None:
    """The teacher must score the student's classes, in the same order, on the student's token ids."""
    config = json.loads((folder / "config.json").read_text())
    theirs = [config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label", {})))]
    if [str(n) for n in theirs] != [str(n) for n in names]:
        raise ValueError(f"the teacher in {folder} predicts the labels {theirs}, the student {names}: distillation needs the same labels in the same order")
    if config.get("vocab_size") not in (None, spec.vocab_size):
        raise ValueError(f"the teacher's vocabulary has {config['vocab_size']} tokens, the student's tokenizer {spec.vocab_size}: "
                         "distillation needs the student's tokenizer to be the teacher's")


def _cached(acc, folder: Path, spec: WorkerSpec, exp: ExperimentConfig, train, say: Callable, tag: Callable) -> torch.Tensor:
    """The teacher's logits from the cache; rank 0 computes and writes them first where they are missing (once per teacher version and data)."""
    path = teacher_logits_file(Path(spec.data_path).parent, exp.distill.teacher_version or "unversioned", Path(spec.data_path).name)
    if acc.is_main_process and not path.is_file():
        t0 = time.time()
        teacher = load_model(folder).to(acc.device)
        logits = teacher_logits(teacher, train, spec.pad_id, acc.device, uses_token_types(teacher) and train.types is not None)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(tmp, logits)
        os.replace(tmp, path)  # whole or absent; two trials at once write the same values
        say(f"distillation: the teacher's logits on {len(logits)} training samples computed in {time.time() - t0:.1f}s, kept in {path}")
        tag({DISTILL_LOGITS: f"computed: {path}"})
    elif acc.is_main_process:
        tag({DISTILL_LOGITS: f"read: {path}"})
    acc.wait_for_everyone()
    return torch.from_numpy(np.load(path)).to(acc.device)


def make_loss(acc, spec: WorkerSpec, exp: ExperimentConfig, train, labels: dict[str, Any], say: Callable, tag: Callable) -> Plain | Distiller:
    """The trial's loss: ``Plain`` without ``distill:``; else a ``Distiller`` on the teacher in ``spec.teacher_dir``."""
    if exp.distill is None:
        return Plain(exp.task)
    if not spec.teacher_dir:
        raise ValueError("a distilled experiment needs its teacher's folder (WorkerSpec.teacher_dir), found by the orchestrator")
    folder = Path(spec.teacher_dir)
    _check(folder, spec, labels["names"])
    if exp.distill.targets == "cached":
        teacher: torch.Tensor | torch.nn.Module = _cached(acc, folder, spec, exp, train, say, tag)
        use_types = False
    else:
        teacher = load_model(folder).to(acc.device).requires_grad_(False)
        use_types = uses_token_types(teacher) and train.types is not None
        tag({DISTILL_LOGITS: "on the fly"})
    say(f"distillation: loss = {1 - exp.distill.weight:.3g} x CE + {exp.distill.weight:.3g} x T^2 KL at T = {exp.distill.temperature:.3g}, "
        f"teacher {folder} ({exp.distill.targets})")
    return Distiller(acc, exp, train, spec.pad_id, teacher, use_types)
