"""Compressing a kept classifier: dynamic int8 quantization (``model.quantize_int8``) and global magnitude
pruning (``torch.nn.utils.prune``, made permanent), an optional short fine-tune of a pruned model with its
zeros held, and what each variant is worth: the task's metrics on validation and test by the trials' own
``Evaluator``, the bytes of its weight files, its non-zero parameters, and the latency (one text) and
throughput (32 texts) of ``predict`` (``model.predictions``) on this machine. Torch; never MLflow."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from torch.nn.utils import prune
from transformers import AutoTokenizer

from lbsearch.data import load_arrays
from lbsearch.spec import (
    KEPT_FILE,
    SPEED_LATENCY_MS_MEDIAN,
    SPEED_LATENCY_MS_P10,
    SPEED_LATENCY_MS_P90,
    SPEED_THROUGHPUT_PER_S,
    SPEED_THROUGHPUT_PER_S_P10,
    SPEED_THROUGHPUT_PER_S_P90,
    ExperimentConfig,
    make_plan,
)
from lbsearch.trial.batching import pad
from lbsearch.trial.model import load_model, predictions, uses_token_types
from lbsearch.trial.training import Evaluator, make_optimizer, make_scheduler, task_loss, training_targets

__all__ = ["prune_global", "pruned_share", "nonzero_params", "finetune", "evaluate", "timing", "machine_name", "THROUGHPUT_BATCH", "WARMUP_CALLS"]

THROUGHPUT_BATCH = 32
"""Texts per ``predict`` call when throughput is measured (latency: one text per call)."""
WARMUP_CALLS = 3
"""Untimed ``predict`` calls of each kind (one text, ``THROUGHPUT_BATCH`` texts) before the timed ones."""


def _prunable(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """The weights magnitude pruning ranks together: every ``nn.Linear``'s (attention, feed-forward,
    pooler, head); embeddings and norms stay whole."""
    return [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]


def prune_global(model: torch.nn.Module, sparsity: float, permanent: bool = True) -> torch.nn.Module:
    """Zero the ``sparsity`` share of all ``nn.Linear`` weights with the smallest magnitude, ranked
    across layers (``prune.global_unstructured`` with L1). ``permanent``: the masks are folded into the
    weights (``prune.remove``); otherwise they stay as hooks that keep the zeros through training."""
    params = _prunable(model)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    if permanent:
        make_permanent(model)
    return model


def make_permanent(model: torch.nn.Module) -> None:
    for module, name in _prunable(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)


def pruned_share(model: torch.nn.Module) -> float:
    """The share of the prunable weights (``nn.Linear``'s) that are exactly zero."""
    zeros = total = 0
    for module, name in _prunable(model):
        w = getattr(module, name)
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros / total if total else 0.0


def nonzero_params(model: torch.nn.Module) -> int:
    """Non-zero parameters, each shared tensor once; an int8 ``Linear``'s weight counted on its integers."""
    count = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    for m in model.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            count += int(torch.count_nonzero(m.weight().int_repr()))
            bias = m.bias()
            count += int(torch.count_nonzero(bias)) if bias is not None else 0
    return count


def finetune(model: torch.nn.Module, exp: ExperimentConfig, data_path: str | Path, pad_id: int, labels: dict[str, Any], steps: int,
             say=print) -> None:
    """``steps`` optimizer steps of a pruned model (masks on: its zeros stay zero) on the training split:
    the trial's optimizer (``make_optimizer``) at its lr after scaling, decaying linearly to 0 without
    warmup, batches of the trial's B drawn with the experiment's seed, in fp32; then the masks are folded in."""
    train = load_arrays(data_path, "train")
    plan = make_plan(exp, 1)
    if exp.model.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    optimizer = make_optimizer(exp, model, plan.lr)
    scheduler = make_scheduler(exp.schedule.model_copy(update={"name": "linear", "min_lr_ratio": 0.0}), optimizer, 0, steps)
    targets = torch.as_tensor(training_targets(train.labels, exp.task, labels.get("shift", 0.0), labels.get("scale", 1.0)))
    types = train.types if uses_token_types(model) else None
    rng, size = np.random.default_rng(exp.seed), min(plan.batch_size, len(train.ids))
    micro = max(1, min(plan.micro_batch or 32, size))
    model.train()
    for step in range(steps):
        idx, total = rng.choice(len(train.ids), size, replace=False), 0.0
        for i in range(0, size, micro):
            part = idx[i : i + micro]
            batch = pad([train.ids[j] for j in part], pad_id, "cpu", [types[j] for j in part] if types else None)
            loss = task_loss(exp.task, model(**batch).logits, targets[part]) * len(part) / size
            loss.backward()
            total += float(loss.detach())
        if exp.train.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step == steps - 1 or (step + 1) % max(1, steps // 4) == 0:
            say(f"fine-tune step {step + 1}/{steps}: loss {total:.4f}")
    make_permanent(model)
    model.eval()


def evaluate(model: torch.nn.Module, data_path: str | Path, pad_id: int, info: dict[str, Any],
             threads: int | None = None) -> dict[str, dict[str, float]]:
    """The task's metrics on validation and test, as a trial evaluates: ``Evaluator`` (length-sorted
    batches of the trial's evaluation batch size, ``info`` is the kept model's ``lbsearch.json``), in fp32 on
    the CPU; with ``threads`` torch threads (a CPU's sums depend on the count: ``verify`` uses the measured run's)."""
    if threads:
        torch.set_num_threads(threads)
    state, out = PartialState(cpu=True), {}
    for split in ("validation", "test"):
        arrays = load_arrays(data_path, split)
        evaluator = Evaluator(arrays, info["task"], info["labels"], info["threshold"], info["eval_batch_size"], 0, 1,
                              uses_token_types(model) and arrays.types is not None)
        out[split] = evaluator(state, model, pad_id)
    model.eval()  # the Evaluator leaves a model in train mode
    return out


def _texts(folder: Path, data_path: str | Path, n: int) -> list[str]:
    """``n`` test texts as a user would send them: the test split's tokens decoded."""
    tok = AutoTokenizer.from_pretrained(folder)
    ids = load_arrays(data_path, "test").ids[:n]
    return tok.batch_decode([list(x) for x in ids], skip_special_tokens=True)


def timing(folder: Path, data_path: str | Path, repeats: int, model: torch.nn.Module | None = None) -> dict[str, float]:
    """``predict``'s time on this machine (tokenizer, forward, label names; the model loaded once): per
    call of one text (``repeats`` calls over different test texts) and of ``THROUGHPUT_BATCH`` texts
    (``max(5, repeats // 5)`` calls); medians, 10th and 90th percentiles, after ``WARMUP_CALLS`` of each."""
    folder = Path(folder)
    info = json.loads((folder / KEPT_FILE).read_text())
    tok, model = AutoTokenizer.from_pretrained(folder), model if model is not None else load_model(folder)
    texts = _texts(folder, data_path, max(repeats, THROUGHPUT_BATCH))

    def clock(batch: list[str]) -> float:
        t0 = time.perf_counter()
        predictions(tok, model, info, batch, batch_size=THROUGHPUT_BATCH)
        return time.perf_counter() - t0

    for _ in range(WARMUP_CALLS):
        clock(texts[:1]), clock(texts[:THROUGHPUT_BATCH])
    one = np.array([clock([texts[i % len(texts)]]) for i in range(repeats)]) * 1e3
    many = np.array([clock(texts[:THROUGHPUT_BATCH]) for _ in range(max(5, repeats // 5))])
    rate = THROUGHPUT_BATCH / many
    return {SPEED_LATENCY_MS_MEDIAN: float(np.median(one)), SPEED_LATENCY_MS_P10: float(np.percentile(one, 10)),
            SPEED_LATENCY_MS_P90: float(np.percentile(one, 90)), SPEED_THROUGHPUT_PER_S: float(np.median(rate)),
            SPEED_THROUGHPUT_PER_S_P10: float(np.percentile(rate, 10)), SPEED_THROUGHPUT_PER_S_P90: float(np.percentile(rate, 90)),
            "threads": torch.get_num_threads()}


def machine_name() -> str:
    """The CPU (model name, family and model numbers) and whether it has bf16 / VNNI units: beside every latency."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
    units = ",".join(f for f in ("avx512_vnni", "avx512_bf16", "amx_int8") if f in flags) or "no avx512 vnni/bf16"
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; {units}; {os.cpu_count()} cores)"
