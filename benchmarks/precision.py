"""Mixed precision on this machine: bf16 vs fp32 (``launcher.precision`` bf16 vs no).

Three measurements, each alternating fp32, bf16, fp32, ...:
1. a matmul of MiniLM's feed-forward shape, GFLOP/s;
2. the lbsearch trial loop (``lbsearch.trial.worker.train`` in this process), steady-state samples/s
   (steps after the first evaluation point; evaluation excluded). Goal: bf16 >= 1.5x fp32;
3. a profile of one training step (bare loop, same micro-batches) in each precision: the
   operators taking the most time, so the figure says where a slow bf16 step goes.

On a CPU without AVX512-BF16 / AMX (``machine.cpu_fast_bf16`` false) bf16 matmuls take a slow path
and the goal cannot be met: ``precision: auto`` picks fp32 there.

    python benchmarks/precision.py                  # MiniLM cut to 2 layers, 3 repeats: ~5 min on 2 cores without bf16 units
    python benchmarks/precision.py --layers 6       # all 6 layers: ~15 min there
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _bench import RESULTS, SPEC, bare_model, bare_step, device_of, experiment, lbsearch_loop, machine, packing_offset, prepared, step_batches, summary, table, use_all_cores, write
from _stats import MET, judged, pairwise

from lbsearch.data.cache import PreparedData
from lbsearch.spec.config import ExperimentConfig

NAMES = {"no": "fp32", "bf16": "bf16"}


def matmul_gflops(dtype: torch.dtype, m: int = 256, k: int = 384, n: int = 1536, seconds: float = 0.5) -> float:
    """GFLOP/s of an (m, k) @ (k, n) product: MiniLM's feed-forward layer on 4 x 64 tokens."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / elapsed / 1e9


def profile_step(exp: ExperimentConfig, data: PreparedData, top: int) -> dict[str, Any]:
    """One optimizer step (after one warm-up step) under torch.profiler: its time and top operators by self
    time (on a GPU, by their time on the GPU)."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device_of(exp).type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    model = bare_model(exp, data)
    step = bare_step(exp, data, model)
    first, second = itertools.islice(step_batches(exp, data, packing_offset(exp, data, model)), 2)  # laid out as a trial lays them out
    step(first)
    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * gpu) as prof:
        step(second)
        sync()
    wall = time.perf_counter() - t0

    def self_us(e) -> float:
        return e.self_device_time_total if gpu else e.self_cpu_time_total

    events = sorted(prof.key_averages(), key=self_us, reverse=True)
    total = sum(self_us(e) for e in events) or 1.0
    ops = [{"op": e.key, "calls": e.count, "self_s": self_us(e) / 1e6, "share": self_us(e) / total} for e in events[:top]]
    matmul = sum(self_us(e) for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / total
    return {"step_s": wall, "samples": exp.train.batch_size, "matmul_share": matmul, "top_ops": ops, "timed_on": "gpu" if gpu else "cpu"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field, e.g. train.noise_scale=false")
    ap.add_argument("--layers", type=int, default=2, help="MiniLM layers kept (2: the quickstart model; 6: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", type=int, default=320, help="samples per run (bf16 may run ~20x slower than fp32 here)")
    ap.add_argument("--warmup-samples", type=int, default=64, help="samples left out of the timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=10, help="operators listed per profile")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/precision_<layers>l.json")
    args = ap.parse_args()
    threads = use_all_cores()
    base = {"model.num_layers": args.layers, "train.batch_size": args.batch_size, "train.budget_samples": args.budget,
            "train.eval_every_samples": args.warmup_samples, "data.max_eval_samples": 32}
    exps = {p: experiment(args.spec, base | {"launcher.precision": p}, args.set) for p in NAMES}
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    data = prepared(exps["no"], work)
    out: dict[str, Any] = {"machine": machine() | {"torch.threads": threads}}
    pre = "precision"

    gflops: dict[str, list[float]] = {p: [] for p in NAMES}
    for _ in range(args.repeats):
        for p, dtype in (("no", torch.float32), ("bf16", torch.bfloat16)):
            gflops[p].append(matmul_gflops(dtype))
    for p, name in NAMES.items():
        out[f"{pre}.matmul_gflops.{name}"] = summary(gflops[p])
    out[f"{pre}.matmul_bf16_over_fp32"] = statistics.median(gflops["bf16"]) / statistics.median(gflops["no"])
    print(f"matmul 256x384 @ 384x1536: fp32 {statistics.median(gflops['no']):.1f} GFLOP/s, bf16 {statistics.median(gflops['bf16']):.2f} GFLOP/s", flush=True)

    kinds = ("samples_per_s", "samples_per_s_median_step")
    figures = {(p, kind): [] for p in NAMES for kind in kinds}
    for r in range(args.repeats):
        for p, exp in exps.items():  # alternate fp32, bf16, fp32, ...
            res = lbsearch_loop(exp, data)
            for kind in kinds:
                figures[p, kind].append(res[kind])
            print(f"repeat {r} {NAMES[p]}: {res['samples_per_s']:.1f} samples/s ({res['samples_per_s_median_step']:.1f} from the median step)", flush=True)
    out |= {f"{pre}.layers": args.layers, f"{pre}.batch_size": args.batch_size, f"{pre}.budget_samples": args.budget,
            f"{pre}.timed_after_samples": args.warmup_samples, f"{pre}.experiment_fp32": exps["no"].model_dump(mode="json")}
    rows = []
    for p, name in NAMES.items():
        row = [name]
        for kind, suffix in zip(kinds, ("", "_median_step")):
            out[f"{pre}.{name}.{kind}"] = summary(figures[p, kind])
            ratio = statistics.median(figures[p, kind]) / statistics.median(figures["no", kind])
            if p == "bf16":
                out[f"{pre}.bf16_over_fp32{suffix}"] = ratio
            row += [statistics.median(figures[p, kind]), ratio]
        rows.append(row + [" ".join(f"{x:.1f}" for x in figures[p, kinds[0]])])
    out[f"{pre}.goal_bf16_over_fp32"] = 1.5
    for kind, suffix in zip(kinds, ("", "_median_step")):  # each repeat's bf16 run over the fp32 run beside it
        pairs = pairwise(figures["bf16", kind], figures["no", kind])
        out[f"{pre}.bf16_over_fp32_pairwise{suffix}"] = pairs
        out[f"{pre}.verdict{suffix}"] = judged(pairs["runs"], 1.5, at_most=False)["verdict"]
    out[f"{pre}.goal_met"] = out[f"{pre}.verdict"] == MET
    print(table(["precision", "samples/s", "ratio vs fp32", "from median step", "ratio vs fp32", "runs"], rows))
    print(f"bf16 over fp32: {out[f'{pre}.bf16_over_fp32_pairwise']['median']:.3f} pairwise median (goal >= 1.5: {out[f'{pre}.verdict']})", flush=True)

    for p, exp in exps.items():
        prof = profile_step(exp, data, args.top)
        out[f"{pre}.profile.{NAMES[p]}"] = prof
        print(f"\none {NAMES[p]} step of {prof['samples']} samples: {prof['step_s']:.2f} s (profiled), "
              f"{100 * prof['matmul_share']:.0f}% in matmuls (mm, addmm, bmm); top operators by self time")
        print(table(["operator", "calls", "self s", "share"], [[o["op"], o["calls"], o["self_s"], f"{100 * o['share']:.1f}%"] for o in prof["top_ops"]]))
    out[f"{pre}.profile.step_s_bf16_over_fp32"] = out[f"{pre}.profile.bf16"]["step_s"] / out[f"{pre}.profile.fp32"]["step_s"]
    write(out, args.out or RESULTS / f"precision_{args.layers}l.json")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
