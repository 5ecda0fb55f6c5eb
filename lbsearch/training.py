"""The torch pieces of a trial: batches, the optimizer, exact evaluation across ranks, the
micro-batch probe, and the collectives that keep ranks in step."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.config import ExperimentConfig

__all__ = ["pad", "make_optimizer", "Evaluator", "mean_over_ranks", "stop_code", "maybe_inject_oom", "maybe_inject_overflow", "probe_micro_batch",
           "cpu_fp16"]


def pad(seqs: list[np.ndarray], pad_id: int, device, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask, as wide as the longest sequence rounded up to ``multiple``."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (all 1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(exp: ExperimentConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    o = exp.optimizer
    groups = param_groups(model, o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=o.fused or None)
    import pytorch_optimizer

    if o.name == "lamb":
        # max_grad_norm=0 turns LAMB's own clipping off: the clip dimension is train.clip_norm only.
        return pytorch_optimizer.Lamb(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, max_grad_norm=0.0)
    return pytorch_optimizer.LARS(groups, lr=lr, momentum=o.beta1)


class Evaluator:
    """Exact evaluation across ranks: each rank scores a disjoint shard of the length-sorted split,
    and per-class counts and loss sums are summed, so the metric equals the 1-process value."""

    def __init__(self, split, num_labels: int, micro_batch: int, rank: int, world: int) -> None:
        ids = split.ids
        order = np.argsort([len(s) for s in ids], kind="stable")[rank::world]
        self.ids = [ids[i] for i in order]
        self.labels = split.labels[order]
        self.k = num_labels
        self.mb = micro_batch

    @torch.no_grad()
    def __call__(self, accelerator, model, pad_id: int) -> dict[str, float]:
        model.eval()
        dev = accelerator.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        conf = torch.zeros((self.k, self.k), dtype=torch.float64, device=dev)  # [true, pred]
        for i in range(0, len(self.ids), self.mb):
            batch = pad(self.ids[i : i + self.mb], pad_id, dev)
            y = torch.as_tensor(self.labels[i : i + self.mb], device=dev)
            logits = model(**batch).logits.float()
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            conf.index_put_((y, logits.argmax(-1)), torch.ones(len(y), dtype=torch.float64, device=dev), accumulate=True)
        model.train()
        loss_sum, conf = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(conf, "sum")
        n = conf.sum().item()
        tp = conf.diag()
        f1 = (2 * tp / (conf.sum(0) + conf.sum(1)).clamp(min=1)).mean().item()
        return {"loss": loss_sum.item() / n, "accuracy": (tp.sum() / n).item(), "f1": f1}


def mean_over_ranks(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t)
    return t.item() / accelerator.num_processes


def sum_over_ranks(accelerator, values: list[float]) -> list[float]:
    if accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def maybe_inject_oom(micro_batch: int) -> None:
    """Tests set LBSEARCH_INJECT_OOM_ABOVE=N to make micro-batches above N "run out of memory" on CPU."""
    limit = int(os.environ.get("LBSEARCH_INJECT_OOM_ABOVE", "0"))
    if limit and micro_batch > limit:
        raise torch.OutOfMemoryError(f"out of memory (injected: micro-batch {micro_batch} > {limit})")


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


def stop_code(accelerator, code: int) -> int:
    """The largest stop code over ranks: every rank stops at the same step, for the same reason."""
    if accelerator.num_processes == 1:
        return code
    t = torch.tensor([code], device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())
