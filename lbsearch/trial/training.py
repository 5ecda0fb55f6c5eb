"""The torch pieces of a trial: the task's loss, the optimizer and schedule, exact evaluation across
ranks and the micro-batch probe (padding is in ``batching``, the rank collectives in ``distributed``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.data import META_FILE
from lbsearch.spec import DECAYING_SCHEDULES, SCHEDULES, ExperimentConfig
from lbsearch.trial.batching import pad

__all__ = ["pad", "make_optimizer", "make_scheduler", "lm_settings", "task_loss", "training_targets", "Evaluator", "maybe_inject_oom", "maybe_inject_overflow", "probe_micro_batch", "cpu_fp16"]


def param_groups(model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = True) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (all 1-d parameters), nor on embedding tables unless
    ``decay_embeddings`` (a tied output layer shares the input table and follows it)."""
    embeddings = set() if decay_embeddings else {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]  # each shared (tied) tensor once
    decay = [p for p in params if p.ndim >= 2 and id(p) not in embeddings]
    no_decay = [p for p in params if p.ndim < 2 or id(p) in embeddings]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(exp: ExperimentConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    o = exp.optimizer
    groups = param_groups(model, o.weight_decay, o.decay_embeddings)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=o.fused or None)
    import pytorch_optimizer

    if o.name == "lamb":
        # no clipping of LAMB's own (pytorch_optimizer clips only with pre_norm=True, off here): the clip dimension is train.clip_norm only
        return pytorch_optimizer.Lamb(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, max_grad_norm=0.0)
    if o.name == "lars":
        return pytorch_optimizer.LARS(groups, lr=lr, momentum=o.beta1)
    raise ValueError(f"optimizer {o.name!r} is allowed by OptimizerConfig.name but not built here: add it to make_optimizer")


def make_scheduler(schedule, optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int):
    """transformers' schedule: linear warmup, then linear or cosine decay (to ``min_lr_ratio`` of the peak:
    the warmup-stable-decay schedule with no stable phase) or constant."""
    from transformers import get_scheduler, get_wsd_schedule

    if schedule.min_lr_ratio > 0 and schedule.name in DECAYING_SCHEDULES:
        return get_wsd_schedule(optimizer, num_warmup_steps=warmup_steps, num_decay_steps=max(steps - warmup_steps, 1), num_stable_steps=0,
                                decay_type=schedule.name, min_lr_ratio=schedule.min_lr_ratio)
    return get_scheduler(SCHEDULES[schedule.name], optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)


def lm_settings(exp: ExperimentConfig, spec) -> dict[str, Any] | None:
    """What a language-model trial needs beside its data (None for a classifier): masking for ``masked_lm``."""
    from lbsearch.spec import LM_TASKS

    if exp.task not in LM_TASKS:
        return None
    corpus = json.loads((Path(spec.data_path) / META_FILE).read_text()).get("corpus", {})
    return {"probability": exp.data.mlm_probability, "mask_id": corpus.get("mask_id"), "vocab_size": spec.vocab_size}


def task_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (single-label), binary cross-entropy over every label (multi-label) or MSE (regression);
    language models: ``lbsearch.trial.lm.lm_loss``."""
    if task in ("causal_lm", "masked_lm"):
        from lbsearch.trial.lm import lm_loss

        return lm_loss(task, logits, targets)
    logits = logits.float()
    if task == "single_label":
        return torch.nn.functional.cross_entropy(logits, targets)
    if task == "multi_label":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return torch.nn.functional.mse_loss(logits.squeeze(-1), targets)


def training_targets(labels: np.ndarray, task: str, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """What the loss compares the outputs with: class ids, the 0/1 matrix, or the scaled regression values."""
    if task == "regression":
        return ((labels - shift) / scale).astype(np.float32)
    return labels.astype(np.float32) if task == "multi_label" else labels.astype(np.int64)


class Evaluator:
    """Exact evaluation across ranks: each rank scores a disjoint shard of the length-sorted split, the
    outputs of all ranks are gathered back into the split's order, and the metrics (``lbsearch.trial.metrics``)
    are computed on the whole split, so they equal the 1-process value."""

    def __init__(self, split, task: str, labels: dict[str, Any], threshold: float, micro_batch: int, rank: int, world: int,
                 use_types: bool = False) -> None:
        ids = split.ids
        self.index = np.argsort([len(s) for s in ids], kind="stable")[rank::world]
        self.ids = [ids[i] for i in self.index]
        self.types = [split.types[i] for i in self.index] if split.types is not None and use_types else None
        self.labels, self.n = split.labels, len(ids)
        self.task, self.threshold = task, threshold
        self.shift, self.scale = labels.get("shift", 0.0), labels.get("scale", 1.0)
        self.k = 1 if task == "regression" else len(labels["names"])
        self.mb = micro_batch

    @torch.no_grad()
    def __call__(self, accelerator, model, pad_id: int) -> dict[str, float]:
        model.eval()
        outs = [np.zeros((0, self.k))]
        # every rank runs as many forwards as the largest shard needs: under FSDP each forward is a collective
        rounds = -(-(-(-self.n // accelerator.num_processes)) // self.mb)
        for i in range(0, rounds * self.mb, self.mb):
            if i >= len(self.ids):  # a shorter shard: a discarded forward on one sample keeps the ranks in step
                model(**pad(self.ids[-1:] or [np.array([pad_id])], pad_id, accelerator.device, self.types[-1:] if self.types else None))
                continue
            batch = pad(self.ids[i : i + self.mb], pad_id, accelerator.device, self.types[i : i + self.mb] if self.types else None)
            outs.append(model(**batch).logits.float().reshape(-1, self.k).cpu().double().numpy())
        model.train()
        return self.metrics(accelerator.num_processes, self.index, np.concatenate(outs))

    def metrics(self, world: int, index: np.ndarray, logits: np.ndarray) -> dict[str, float]:
        """The task's metrics once every rank's ``(index, logits)`` is gathered into the split's order."""
        from lbsearch.trial.metrics import task_metrics

        parts = [(index, logits)]
        if world > 1:
            from accelerate.utils import gather_object

            parts = gather_object(parts)
        full = np.full((self.n, self.k), np.nan)
        for idx, out in parts:
            full[idx] = out
        return task_metrics(self.task, full, self.labels, threshold=self.threshold, shift=self.shift, scale=self.scale)


def maybe_inject_oom(micro_batch: int) -> None:
    """Tests set LBSEARCH_INJECT_OOM_ABOVE=N to make micro-batches above N "run out of memory" on CPU."""
    limit = int(os.environ.get("LBSEARCH_INJECT_OOM_ABOVE", "0"))
    if limit and micro_batch > limit:
        raise torch.OutOfMemoryError(f"out of memory (injected: micro-batch {micro_batch} > {limit})")


def maybe_inject_save_error() -> None:
    """Tests set LBSEARCH_INJECT_SAVE_ERROR=1 to make saving the trained model fail (a full disk)."""
    if os.environ.get("LBSEARCH_INJECT_SAVE_ERROR") == "1":
        raise OSError(28, "No space left on device (injected)")


def maybe_inject_overflow(model: torch.nn.Module, step: int) -> None:
    """Tests set LBSEARCH_INJECT_OVERFLOW_AT=N[,M...] to make those steps' gradients infinite (one
    element of the first parameter's gradient), as an fp16 overflow does."""
    if str(step) in os.environ.get("LBSEARCH_INJECT_OVERFLOW_AT", "").split(","):
        grad = next(p.grad for p in model.parameters() if p.grad is not None)
        grad.view(-1)[0] = float("inf")


def cpu_fp16(accelerator) -> None:
    """fp16 as asked on a CPU. Accelerate 1.15 applies fp16 only off the CPU (its autocast and GradScaler
    sit behind ``mixed_precision == "fp16" and self.device.type != "cpu"``) and otherwise trains in
    fp32 without a word; this turns on both for the CPU: torch's CPU autocast in float16 and
    ``torch.amp.GradScaler("cpu")``, set before ``prepare`` so that Accelerate wraps, scales and
    unscales exactly as on a GPU."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")


def probe_micro_batch(accelerator, model, exp: ExperimentConfig, per_process: int, cache_dir: Path, say) -> int:
    """The largest micro-batch (powers of two, up to the per-process batch) whose forward and backward
    at full sequence length fit in memory; cached per model, length, precision and device. Every rank
    probes its own device and all take the smallest result."""
    import hashlib

    device = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "cpu"
    key_src = json.dumps([exp.model.model_dump(mode="json"), exp.data.max_length, exp.launcher.precision, device, torch.__version__], sort_keys=True)
    cache = cache_dir / f"probe-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.json"
    found = json.loads(cache.read_text()) if cache.is_file() else None
    if found and (found["limit"] < found["upper"] or found["upper"] >= per_process):
        limit, how = min(found["limit"], per_process), f"cached in {cache.name}"
    else:
        model.to(accelerator.device).train()
        limit, size = 0, 1
        ids = torch.full((per_process, exp.data.max_length), 100, dtype=torch.long, device=accelerator.device)
        while size <= per_process:
            try:
                maybe_inject_oom(size)
                with accelerator.autocast():
                    out = model(input_ids=ids[:size], attention_mask=torch.ones_like(ids[:size])).logits
                out.float().sum().backward()
                limit = size
            except torch.OutOfMemoryError:
                break
            finally:
                model.zero_grad(set_to_none=True)
                if accelerator.device.type == "cuda":
                    torch.cuda.empty_cache()
            size *= 2
        if limit == 0:
            raise torch.OutOfMemoryError("out of memory at micro-batch 1 (probe)")
        how = "probed"
    if accelerator.num_processes > 1:
        t = torch.tensor([limit], device=accelerator.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        limit = int(t.item())
    if accelerator.is_main_process and how == "probed":
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"limit": limit, "upper": per_process, "device": device}))
        os.replace(tmp, cache)
    say(f"micro-batch limit {limit} ({how})")
    return limit


