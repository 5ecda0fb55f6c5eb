"""The two sides of ``benchmarks/gpu.py``: lbsearch's trial loop and a bare, tuned PyTorch loop, timed alike.

Both train the same model (a transformers model of the experiment's family and config, SDPA attention)
on the same samples (``lbsearch.trial.batching.sample_stream``: step ``s`` sees the same B samples on
both sides) at the same B, precision and sequence width. The timed window is the same optimizer
steps on both sides: ``intervals`` spans of ``interval`` steps after a warm-up, each span timed between
two ``torch.cuda.synchronize()`` calls, so queued GPU work is inside the span it belongs to. lbsearch
evaluates between spans (its evaluation points); the evaluation is outside every span. Work is counted
with lbsearch's FLOP count (``lbsearch.trial.flops.flop_count``) on the real tokens of each step, for
both sides, over the same device peak (``peak_flops``): MFU and the lbsearch / bare ratio are apples
to apples.

Host synchronisations are counted per optimizer step on both sides (``SyncCounter``): on a GPU every
operation PyTorch flags under ``torch.cuda.set_sync_debug_mode("warn")`` (``.item()``, ``bool()`` of a
device tensor, a pageable host-to-device copy, ``nonzero``, ...); on a CPU, calls of the Tensor methods
that would synchronise on a GPU (``item``, ``tolist``, ``bool()``, ``float()``, ``int()``, ``cpu``, ``numpy``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from _bench import fresh_accelerate, worker_spec

from lbsearch.data import PreparedData, load_arrays
from lbsearch.spec import TRAIN_MFU, TRAIN_TOKENS_PER_S, ExperimentConfig, make_plan
from lbsearch.trial.batching import sample_stream
from lbsearch.trial.flops import FlopCount, flop_count, peak_flops
from lbsearch.trial.readings import READ_AT_LEAST_EVERY_S  # one process reads at least this often, whatever log_every_steps says

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
SYNC_WARNING = "synchroniz"  # "called a synchronizing CUDA operation"


class SyncCounter:
    """Counts host synchronisations while it is entered; ``count`` is the running total."""

    def __init__(self, device: torch.device) -> None:
        self.cuda, self._n, self._log, self._saved = device.type == "cuda", 0, None, {}

    @property
    def how(self) -> str:
        return ("torch.cuda.set_sync_debug_mode('warn'): each flagged synchronising CUDA operation" if self.cuda else
                f"CPU: calls of torch.Tensor.{{{', '.join(HOST_READS)}}} (what synchronises on a GPU)")

    @property
    def count(self) -> int:
        if self._log:
            self._n += sum(SYNC_WARNING in str(w.message) for w in self._log)
            self._log.clear()
        return self._n

    def __enter__(self) -> SyncCounter:
        if self.cuda:
            self._catch = warnings.catch_warnings(record=True)
            self._log = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            for name in HOST_READS:
                self._saved[name] = original = getattr(torch.Tensor, name)
                setattr(torch.Tensor, name, self._counting(original))
        return self

    def _counting(self, original):
        def method(tensor, *args, **kwargs):
            self._n += 1
            return original(tensor, *args, **kwargs)
        return method

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            self.count  # noqa: B018 - takes the last warnings in
            self._catch.__exit__(*exc)
            self._log = None
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Between runs: no compiled graphs, accelerator state or cached blocks carried into the next."""
    torch._dynamo.reset()
    fresh_accelerate()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Work:
    """lbsearch's FLOPs and real tokens of given optimizer steps (1-based), the same on either side."""

    def __init__(self, exp: ExperimentConfig, data: PreparedData, count: FlopCount) -> None:
        train = load_arrays(data.path, "train")
        self.count, self.width = count, exp.data.max_length
        self.lengths = np.fromiter((min(len(x), self.width) for x in train.ids), dtype=np.int64, count=len(train.ids))
        self.stream = sample_stream(len(train.ids), exp.train.batch_size, make_plan(exp).steps, exp.seed)

    def __call__(self, steps: list[int]) -> tuple[float, int]:
        lengths = self.lengths[np.concatenate([self.stream[s - 1] for s in steps])]
        return float(self.count(lengths)), int(lengths.sum())


def spans_summary(spans: list[dict[str, Any]], peak: float | None, batch: int) -> dict[str, Any]:
    """Totals over the timed spans: samples/s, tokens/s (real tokens), TFLOP/s and MFU, and each span's."""
    seconds, flops, tokens = (sum(s[k] for s in spans) for k in ("seconds", "flops", "tokens"))
    steps = sum(s["steps"] for s in spans)
    out = {"steps_timed": steps, "seconds": seconds, "samples_per_s": steps * batch / seconds, "tokens_per_s": tokens / seconds,
           "tflops_per_s": flops / seconds / 1e12, "mfu": flops / seconds / peak if peak else None}
    out["span_mfu"] = [s["flops"] / s["seconds"] / peak for s in spans] if peak else None
    out["span_seconds"] = [s["seconds"] for s in spans]
    return out


# ----------------------------------------------------------------------------------------------
# lbsearch: lbsearch.trial.worker.train in this process, its Trial's step and evaluate timed


@contextlib.contextmanager
def _instrumented(counter: SyncCounter, device: torch.device, marks: list, per_step: dict[int, tuple[int, bool]]):
    """``Trial.step`` counts its host syncs and notes whether it was a read point (``Trial.readings.last_read``,
    where the worker defers its reads); ``Trial.evaluate`` is timed between two device syncs."""
    from lbsearch.trial import worker

    step0, eval0 = worker.Trial.step, worker.Trial.evaluate

    def step(self, n: int, *args, **kwargs) -> int:
        before = counter.count
        try:
            return step0(self, n, *args, **kwargs)
        finally:
            readings = getattr(self, "readings", None)
            per_step[n] = (counter.count - before, readings is not None and getattr(readings, "last_read", None) == n)

    def evaluate(self, n: int, *args, **kwargs) -> int:
        sync(device)
        t0 = time.perf_counter()
        try:
            return eval0(self, n, *args, **kwargs)
        finally:
            sync(device)
            marks.append({"step": n, "start": t0, "end": time.perf_counter(), "flop_count": repr(getattr(self, "count_flops", None))})

    worker.Trial.step, worker.Trial.evaluate = step, evaluate
    try:
        yield
    finally:
        worker.Trial.step, worker.Trial.evaluate = step0, eval0


def _host_syncs(per_step: dict[int, tuple[int, bool]], evals: set[int], after: int, seconds: float, how: str, log_every: int | None) -> dict[str, Any]:
    """Host syncs of the steps after the first evaluation, against the read points lbsearch schedules:
    every ``train.log_every_steps`` steps, each evaluation, the last step, and at most one per
    ``READ_AT_LEAST_EVERY_S`` of the window. Steps with syncs beyond that many mean per-step reads."""
    window = [s for s in sorted(per_step) if s > after]
    scheduled = {s for s in window if (log_every and s % log_every == 0) or s in evals} | {window[-1]}
    timed = int(seconds // READ_AT_LEAST_EVERY_S) + 1 if log_every else 0
    with_syncs = [s for s in window if per_step[s][0] > 0]
    reads = [s for s in window if per_step[s][1] or s in evals]
    others = [per_step[s][0] for s in window if s not in reads]
    return {"counted_by": how, "steps": len(window), "per_step": sum(per_step[s][0] for s in window) / max(len(window), 1),
            "log_every_steps": log_every, "steps_with_syncs": len(with_syncs), "scheduled_read_points_at_most": len(scheduled) + timed,
            "only_at_read_points": len(with_syncs) <= len(scheduled) + timed,
            "worker_read_points": len(reads), "syncs_at_other_steps": sum(others),
            "first_steps": [per_step.get(s, (None,))[0] for s in range(1, 6)]}


def lbsearch_run(exp: ExperimentConfig, data: PreparedData, count: FlopCount, peak: float | None) -> dict[str, Any]:
    """Train through lbsearch's trial loop; time the spans between its evaluations after the first."""
    from lbsearch.spec.protocol import parse_message
    from lbsearch.trial.worker import train

    device = torch.device("cuda" if torch.cuda.is_available() and not exp.launcher.cpu else "cpu")
    free_memory(device)
    marks: list[dict[str, Any]] = []
    per_step: dict[int, tuple[int, bool]] = {}
    out = io.StringIO()
    t0 = time.perf_counter()
    with SyncCounter(device) as counter, _instrumented(counter, device, marks, per_step), contextlib.redirect_stdout(out):
        result = train(worker_spec(exp, data, tracking=True), log=lambda *a: None)
    wall = time.perf_counter() - t0
    free_memory(device)
    if result.state != "complete":
        raise RuntimeError(f"lbsearch trial stopped: {result.state} ({result.reason})")
    spans, work = [], Work(exp, data, count)
    for a, b in zip(marks, marks[1:]):  # between the end of one evaluation and the start of the next
        steps = list(range(a["step"] + 1, b["step"] + 1))
        flops, tokens = work(steps)
        spans.append({"first_step": steps[0], "steps": len(steps), "seconds": b["start"] - a["end"], "flops": flops, "tokens": tokens})
    rows = [r for m in map(parse_message, out.getvalue().splitlines()) if m is not None and m[0] == "metrics" for r in m[1]]
    reported = {key: [v for k, v, _, _ in rows if k == key] for key in (TRAIN_MFU, TRAIN_TOKENS_PER_S)}
    summary = spans_summary(spans, peak, exp.train.batch_size)
    syncs = _host_syncs(per_step, {m["step"] for m in marks}, marks[0]["step"], summary["seconds"], counter.how, getattr(exp.train, "log_every_steps", None))
    return summary | {
        "spans": spans, "wall_s": wall, "first_step_s": result.first_step_s, "evaluations": len(marks),
        "eval_seconds": sum(m["end"] - m["start"] for m in marks), "flop_count": marks[0]["flop_count"], "host_syncs": syncs,
        "lbsearch_reported": {"mfu_per_interval": reported[TRAIN_MFU][1:], "tokens_per_s_per_interval": reported[TRAIN_TOKENS_PER_S][1:],
                              "note": f"the worker's own {TRAIN_MFU} over each evaluation interval after the first (its own clock)"},
        "validation_loss": (result.validation or {}).get("loss"), "skipped_steps": result.skipped_steps}


# ----------------------------------------------------------------------------------------------
# The bare loop: the same model class and config, nothing between the steps


def bare_model(exp: ExperimentConfig, data: PreparedData) -> torch.nn.Module:
    """The experiment's model built by transformers directly (random init, SDPA attention)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.for_model(exp.model.model_type, vocab_size=data.vocab_size, pad_token_id=data.pad_id, **exp.model.config)
    torch.manual_seed(exp.seed)
    if exp.task == "causal_lm":
        # GPT-2's 50256 is outside a trained tokenizer's vocabulary; full rows have no padding, and with a pad
        # id transformers looks for it in every batch (a host read per forward)
        config.bos_token_id = config.eos_token_id = config.pad_token_id = None
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    config.num_labels, config.problem_type = 1 if exp.task == "regression" else data.num_labels, {"regression": "regression"}.get(exp.task)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def _host_batches(exp: ExperimentConfig, data: PreparedData) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, np.ndarray]:
    """The whole training split as host tensors: token ids (and a padding mask for a classifier,
    every row padded to ``data.max_length``, as the benchmark's lbsearch runs pad), the targets, and
    which rows have no padding (a batch of only those needs no mask)."""
    from lbsearch.trial.training import training_targets

    train, width = load_arrays(data.path, "train"), exp.data.max_length
    ids = np.full((len(train.ids), width), data.pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(train.ids):
        ids[i, : len(s)], mask[i, : len(s)] = s[:width], 1
    full = mask.all(axis=1)
    if exp.task == "causal_lm":
        return {"input_ids": torch.from_numpy(ids)}, None, full  # full rows: causal attention needs no mask
    labels = data.labels or {}
    targets = training_targets(train.labels, exp.task, labels.get("shift", 0.0), labels.get("scale", 1.0))
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}, torch.as_tensor(targets, dtype=torch.float32 if exp.task == "regression" else None), full


def _loss(task: str, logits: torch.Tensor, inputs: dict[str, torch.Tensor], targets: torch.Tensor | None) -> torch.Tensor:
    if task == "causal_lm":
        ids = inputs["input_ids"]
        return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    if task == "regression":
        return torch.nn.functional.mse_loss(logits.float().squeeze(-1), targets)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


class BareLoop:
    """Fused AdamW, autocast, ``torch.compile(model)`` where asked, GradScaler under fp16, inputs copied
    from pinned memory without blocking, the loss summed on the device and read once at the end."""

    def __init__(self, exp: ExperimentConfig, data: PreparedData, device: torch.device, compile: bool) -> None:
        self.exp, self.device, self.task = exp, device, exp.task
        self.model = bare_model(exp, data).to(device).train()
        self.count = flop_count(self.model)
        self.step_fn = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=exp.optimizer.lr, weight_decay=exp.optimizer.weight_decay, fused=True)
        steps = make_plan(exp).steps
        warm = max(1, steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
        self.half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(exp.launcher.precision)
        self.scaler = torch.amp.GradScaler(device.type) if self.half is torch.float16 else None
        self.clip = exp.train.clip_norm or math.inf
        self.inputs, self.targets, self.full = _host_batches(exp, data)
        self.stream = sample_stream(len(self.inputs["input_ids"]), exp.train.batch_size, steps, exp.seed)
        self.loss_sum = torch.zeros((), device=device)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def step(self, n: int) -> None:
        unpadded = bool(self.full[self.stream[n - 1]].all())  # known on the host: no device read
        idx = torch.from_numpy(self.stream[n - 1])
        inputs = {k: self._to_device(v.index_select(0, idx)) for k, v in self.inputs.items() if not (k == "attention_mask" and unpadded)}
        targets = self._to_device(self.targets.index_select(0, idx)) if self.targets is not None else None
        with torch.autocast(self.device.type, dtype=self.half or torch.bfloat16, enabled=self.half is not None):
            loss = _loss(self.task, self.step_fn(**inputs).logits, inputs, targets)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum += loss.detach()


def bare_run(exp: ExperimentConfig, data: PreparedData, first: int, interval: int, intervals: int, warmup: int, peak: float | None) -> dict[str, Any]:
    """``warmup`` untimed steps, then ``intervals`` spans of ``interval`` steps starting at step ``first``
    (the steps lbsearch's spans cover)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not exp.launcher.cpu else "cpu")
    free_memory(device)
    t0 = time.perf_counter()
    loop = BareLoop(exp, data, device, exp.launcher.compile)
    spans, per_step, work = [], [], Work(exp, data, loop.count)
    with SyncCounter(device) as counter:
        for n in range(max(1, first - warmup), first):
            loop.step(n)
        for k in range(intervals):
            sync(device)
            start = time.perf_counter()
            steps = list(range(first + k * interval, first + (k + 1) * interval))
            for n in steps:
                before = counter.count
                loop.step(n)
                per_step.append(counter.count - before)
            sync(device)
            flops, tokens = work(steps)
            spans.append({"first_step": steps[0], "steps": len(steps), "seconds": time.perf_counter() - start, "flops": flops, "tokens": tokens})
    mean_loss = float(loop.loss_sum) / (first - max(1, first - warmup) + intervals * interval)
    out = spans_summary(spans, peak, exp.train.batch_size) | {
        "spans": spans, "wall_s": time.perf_counter() - t0, "warmup_steps": first - max(1, first - warmup), "mean_loss": mean_loss,
        "host_syncs": {"counted_by": counter.how, "per_step": sum(per_step) / len(per_step)}, "flop_count": repr(loop.count)}
    del loop
    free_memory(device)
    return out


def device_peak(exp: ExperimentConfig, data: PreparedData) -> tuple[float | None, str]:
    """The peak both sides are measured against: lbsearch's (a GPU's table value; a CPU's measured matmul rate)."""
    from pathlib import Path

    device = torch.device("cuda" if torch.cuda.is_available() and not exp.launcher.cpu else "cpu")
    return peak_flops(device, exp.launcher.precision, Path(data.path).parent)
