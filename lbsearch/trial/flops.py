"""Model FLOPs utilisation (MFU): the FLOPs a training step needs, over the time it took and the
device's peak.

FLOPs are counted analytically, per step, from the tokens each sequence really has (padding is
waste, not model work): ``6 N T`` for the matmul parameters ``N`` (every ``Linear`` weight: forward
2 N, backward 4 N per token) plus ``12 L d T^2`` per sequence of T tokens for attention's two
``T x T`` products (query-key and attention-value, forward and backward) in ``L`` layers of width
``d``. A test checks the count against ``torch.utils.flop_counter.FlopCounterMode``.

The peak is a table for known GPUs (dense tensor-core rates) and, on a CPU, the rate of a large
matmul (sides up to 2048, smaller where the precision is emulated) measured once per machine, thread count
and precision and cached under ``mlruns/cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lbsearch.spec import TRAIN_MFU, TRAIN_TOKENS_PER_S

__all__ = ["GPU_PEAK_TFLOPS", "FlopCount", "flop_count", "step_flops", "speed", "peak_flops", "matmul_flops"]

# Dense (no sparsity) peak TFLOP/s by precision; "fp32" is the TF32 tensor-core rate where
# PyTorch allows TF32 matmuls, else the plain fp32 rate ("fp32_strict").
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0, "fp32_strict": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0, "fp32_strict": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0, "fp32_strict": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0, "fp32_strict": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0, "fp32_strict": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0, "fp32_strict": 30.3},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0, "fp32_strict": 31.2},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5, "fp32_strict": 31.2},
    "RTX 4090": {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6, "fp32_strict": 82.6},
    "V100": {"fp16": 125.0, "fp32": 15.7, "fp32_strict": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1, "fp32_strict": 8.1},
}
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


HEADS = {"pooler", "pre_classifier", "classifier", "score"}
"""Modules applied once per sequence (to the pooled or last token), not once per token."""


class FlopCount:
    """The training FLOPs of sequences of given lengths for one model (``flop_count(model)``)."""

    def __init__(self, matmul_params: int, head_params: int, layers: int, width: int) -> None:
        self.matmul_params, self.head_params, self.layers, self.width = matmul_params, head_params, layers, width

    def __call__(self, lengths: np.ndarray) -> float:
        lengths = np.asarray(lengths, dtype=np.float64)
        return (6.0 * self.matmul_params * lengths.sum() + 6.0 * self.head_params * len(lengths)
                + 12.0 * self.layers * self.width * np.square(lengths).sum())

    def __repr__(self) -> str:
        return (f"6 x {self.matmul_params:,} params per token + 6 x {self.head_params:,} per sequence + attention of "
                f"{self.layers} layers x width {self.width}")


def flop_count(model: torch.nn.Module) -> FlopCount:
    """Counts every ``Linear`` (and GPT-2's ``Conv1D``) weight, per token in the body and per
    sequence in the head (``HEADS``); layers and width from the model's config."""
    body = head = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D":
            if HEADS & set(name.split(".")):
                head += m.weight.numel()
            else:
                body += m.weight.numel()
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None) or 0
    width = getattr(config, "hidden_size", None) or 0
    return FlopCount(body, head, int(layers), int(width))


def step_flops(count: FlopCount, lengths: np.ndarray, micro_batches: list[np.ndarray]) -> tuple[float, int]:
    """FLOPs and real tokens of one rank's micro-batches (indices into ``lengths``)."""
    seqs = np.concatenate(micro_batches) if micro_batches else np.zeros(0, dtype=np.int64)
    return count(lengths[seqs]), int(lengths[seqs].sum())


def speed(flops: float, tokens: float, seconds: float, processes: int, peak: float | None, say=print) -> tuple[dict[str, float], float | None]:
    """The metrics of all ranks' ``flops`` and real ``tokens`` over ``seconds``: tokens/s, and MFU (FLOPs per process
    over the peak of one) where the peak is known; and the peak, raised to what ran if a process did more than it
    (the measured peak was low: MFU never exceeds 100%)."""
    out = {TRAIN_TOKENS_PER_S: tokens / max(seconds, 1e-9)}
    if peak:
        per_process = flops / max(seconds, 1e-9) / processes
        if per_process > peak:
            say(f"MFU: {per_process / 1e12:.3g} TFLOP/s per process ran, above the peak of {peak / 1e12:.3g}: the peak is raised to it")
            peak = per_process
        out[TRAIN_MFU] = per_process / peak
    return out, peak


CPU_MATMUL_SIDE = 2048
"""The largest side of the square matmul that measures a CPU's peak (``matmul_flops``; part of the cached peak's key)."""


def matmul_flops(dtype: torch.dtype, n: int = CPU_MATMUL_SIDE, seconds: float = 0.3, repeats: int = 3, device: str = "cpu") -> float:
    """The best FLOP/s of a square matmul in ``dtype`` on ``device`` over ``repeats`` bursts of ``seconds``
    (on a CPU at the current thread count): what its matmul units deliver to PyTorch.

    On a CPU the rate is counted per CPU-second this process got (``time.process_time``) times the
    thread count, not per second of the wall clock: while other jobs share the cores (a package
    install, a CPU burner, parallel tests), the burst gets a fraction of them and a wall-clock rate
    falls with it (to a third or less under a burner per core on a 2-core EPYC), where the rate per
    CPU-second stays what the cores deliver when they run it. On an idle machine the two agree.

    The side grows from 256 up to ``n`` while one product takes at most ``seconds / 2``: where the CPU
    emulates the precision (bf16 or fp16 without hardware support, ~1 GFLOP/s), a 2048-sided product
    would take 10 s and the measurement minutes; a smaller one measures the same emulated rate in about
    a second. Fast devices reach ``n``."""
    gen = torch.Generator().manual_seed(0)  # never the global RNG: measuring must not change what a trial trains on
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    spent = _spent if torch.device(device).type == "cpu" else (lambda t0, c0: time.perf_counter() - t0)
    size = min(256, n)
    while True:
        a, b = (torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up (thread pool, kernel selection)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        sync()
        if size >= n or 8 * spent(t0, c0) > seconds / 2:
            break
        size = min(2 * size, n)
    best = 0.0
    for _ in range(repeats):
        count, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
            if count % 8 == 0:
                sync()
        sync()
        best = max(best, 2 * size**3 * count / spent(t0, c0))
    return best


def _spent(t0: float, c0: float) -> float:
    """Seconds of the cores' time a CPU burst got since ``t0`` (wall clock) and ``c0`` (process CPU
    time): its CPU time over the thread count, never more than the wall clock's."""
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return min(wall, cpu / torch.get_num_threads()) if cpu > 0 else wall


def _gpu_peak(name: str, precision: str) -> float | None:
    key = "fp32" if precision == "no" and torch.backends.cuda.matmul.allow_tf32 else "fp32_strict" if precision == "no" else precision
    for gpu, rates in GPU_PEAK_TFLOPS.items():  # the more specific names come first
        if gpu in name and key in rates:
            return rates[key] * 1e12
    return None


def peak_flops(device: torch.device, precision: str, cache_dir: Path, *, recheck: bool = False) -> tuple[float | None, str]:
    """The peak FLOP/s of one device in the trial's precision and where it comes from. On a CPU it is
    measured once and cached; ``recheck`` measures again (one short burst) and keeps the larger value."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = _gpu_peak(name, precision)
        return peak, f"{name} table" if peak else f"{name}: not in lbsearch.trial.flops.GPU_PEAK_TFLOPS, MFU not measured"
    if device.type != "cpu":
        return None, f"{device.type}: no peak known, MFU not measured"
    threads = torch.get_num_threads()
    key = json.dumps([platform.processor(), _cpu_model(), threads, precision, torch.__version__, CPU_MATMUL_SIDE])
    cache = cache_dir / f"peak-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    cached = _read_peak(cache)
    if cached and not recheck:
        return cached, f"CPU matmul at {threads} threads, cached in {cache.name}"
    # A peak measured while something else ran is too low, and every MFU after it too high: the cached
    # value only ratchets up. The worker re-checks it after its training (a burst of matmuls right
    # before training slowed the steps after it by ~15% on a 2-core EPYC: docs/results.md).
    flops = matmul_flops(DTYPES[precision], repeats=1) if cached else matmul_flops(DTYPES[precision])
    if cached and cached >= flops:
        return cached, f"CPU matmul at {threads} threads, cached in {cache.name} (re-checked: {flops / 1e12:.3g} TFLOP/s)"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"flops": flops, "cpu": _cpu_model(), "threads": threads, "precision": precision}))
    os.replace(tmp, cache)
    return flops, f"CPU matmul at {threads} threads, measured" + (f" (raised from {cached / 1e12:.3g} TFLOP/s cached)" if cached else "")


def _read_peak(cache: Path) -> float | None:
    try:
        return float(json.loads(cache.read_text())["flops"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
