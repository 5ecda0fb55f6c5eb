"""Model FLOPs utilisation of lbsearch's training step, and what raises it.

Runs the trial loop (``lbsearch.trial.worker.train`` in this process, as a trial runs it) on the
Rotten Tomatoes experiment at each ``--layers`` (2: the shipped experiment; 6: the whole MiniLM,
as the quickstart study trains it), alternating the variants within each repeat:

- ``fp32``, ``bf16``, ``bf16+compile`` (``launcher.compile``: inductor, lengths padded to 16), as
  the experiment ships (packed micro-batches of up to ``launcher.max_micro_batch``, fused AdamW);
- ``bf16 levers off``: the same step without those levers (padded micro-batches of 16, AdamW per
  operation): the "before" of this benchmark's MFU;
- with ``--levers``, single changes to bf16 measured one at a time: micro-batches padded instead of
  packed (``launcher.pack``: ``lbsearch.trial.packing``), smaller micro-batches (``launcher.max_micro_batch``
  16 and 32), lengths padded to 16 without compile, AdamW's per-operation implementation instead of
  the fused kernel (``optimizer.fused``), and dropout off (a measurement of dropout's cost only: it
  changes the model's regularisation).

For each: steady-state samples/s, tokens/s (real tokens, padding excluded) and MFU (``train/mfu``:
analytic model FLOPs over time and this CPU's matmul peak, ``lbsearch.trial.flops``, measured once at the
start as the best of three and given to every variant as ``launcher.peak_tflops``) over the
evaluation intervals after the first; the first step's time (where compilation is paid). The
losses of eager and compiled bf16 runs are compared step by step (same seed, same batches,
dropout off), with the eager fp32 run as the measure of what bf16 itself changes. A
profile of one bf16 step at the largest layer count lists where the non-matmul time goes.

    python benchmarks/mfu.py                        # 2 and 6 layers, 2 repeats
    python benchmarks/mfu.py --layers 6 --levers    # what each lever pays at 6 layers
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _bench import RESULTS, SPEC, experiment, lbsearch_loop, machine, prepared, table, use_all_cores, write

from lbsearch.spec.load import parse_set
from lbsearch.trial.flops import matmul_flops

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"launcher.precision": "no"},
    "bf16": {"launcher.precision": "bf16"},
    "bf16+compile": {"launcher.precision": "bf16", "launcher.compile": True},
    # the step without this benchmark's levers: padded micro-batches of 16, AdamW per operation
    "bf16 levers off": {"launcher.precision": "bf16", "launcher.pack": False, "launcher.max_micro_batch": 16, "optimizer.fused": False},
}
BF16_SPACING = 2.0**-7  # the relative spacing of bf16 numbers (7 stored mantissa bits)
LEVERS: dict[str, dict[str, Any]] = {
    "bf16 padded": {"launcher.precision": "bf16", "launcher.pack": False},
    "bf16 micro-batch 16": {"launcher.precision": "bf16", "launcher.max_micro_batch": 16},
    "bf16 micro-batch 32": {"launcher.precision": "bf16", "launcher.max_micro_batch": 32},
    "bf16 pad to 16": {"launcher.precision": "bf16", "launcher.pad_to_multiple_of": 16},
    "bf16 unfused AdamW": {"launcher.precision": "bf16", "optimizer.fused": False},
    "bf16 no dropout": {"launcher.precision": "bf16", "model.config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
}


def run_variants(args, layers: int, variants: dict[str, dict[str, Any]], work: Path, peaks: dict[str, float]) -> dict[str, Any]:
    base = {"model.num_layers": layers, "train.batch_size": args.batch_size, "train.budget_samples": args.steps * args.batch_size,
            "train.eval_every_samples": args.eval_every_steps * args.batch_size, "data.max_eval_samples": 32}
    # on a CPU every variant divides by the same peak, measured once at the start (a trial would measure
    # its own); on a GPU each trial takes its peak from lbsearch.trial.flops.GPU_PEAK_TFLOPS, as in a study
    peak = {p: {} if torch.cuda.is_available() else {"launcher.peak_tflops": peaks["bf16" if p == "bf16" else "fp32"] / 1e12}
            for p in ("no", "bf16")}
    exps = {name: experiment(args.spec, base | o | peak[o["launcher.precision"]], args.set) for name, o in variants.items()}
    data = prepared(exps["bf16"] if "bf16" in exps else next(iter(exps.values())), work)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in exps}
    for r in range(args.repeats):
        for name, exp in exps.items():
            res = lbsearch_loop(exp, data)
            res["first_step_s"] = res.pop("result").first_step_s
            runs[name].append(res)
            print(f"{layers} layers, repeat {r}, {name}: {res['samples_per_s']:.1f} samples/s, {res['tokens_per_s']:.0f} tokens/s, "
                  f"MFU {res['mfu']:.1%}, first step {res['first_step_s']:.1f} s", flush=True)
    out: dict[str, Any] = {"experiment": exps[next(iter(exps))].model_dump(mode="json")}
    for name, rs in runs.items():
        out[name] = {k: statistics.median(x[k] for x in rs) for k in ("samples_per_s", "tokens_per_s", "mfu", "first_step_s")}
        out[name]["runs"] = [{k: v for k, v in x.items() if k != "losses"} for x in rs]
        out[name]["losses"] = rs[0]["losses"]
    return out


NO_DROPOUT = {"model.config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def _max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b))


def compare_losses(args, work: Path) -> dict[str, Any]:
    """Eager vs compiled bf16 losses step by step at 2 layers, dropout off (compiled dropout draws its
    masks from another random stream, so with dropout on the curves differ by design).

    Within bf16 tolerance: at every step the compiled loss is within one bf16 spacing of the eager
    one (2^-7 relative, 7.8e-3), or within what bf16 itself does to the curve where that is more
    (the same run eager in fp32 is the reference)."""
    base = {"model.num_layers": 2, "train.batch_size": args.batch_size, "train.budget_samples": args.steps * args.batch_size,
            "train.eval_every_samples": args.eval_every_steps * args.batch_size, "data.max_eval_samples": 32}
    user = parse_set(args.set)  # the user's model.config (e.g. a random-init architecture) keeps its fields
    no_dropout = {"model.config": user.get("model.config", {}) | NO_DROPOUT["model.config"]}
    runs = {}
    for name, extra in (("eager", {"launcher.precision": "bf16"}), ("compiled", {"launcher.precision": "bf16", "launcher.compile": True}),
                        ("fp32 eager", {"launcher.precision": "no"})):
        exp = experiment(args.spec, base | user | no_dropout | extra)
        runs[name] = lbsearch_loop(exp, prepared(exp, work))["losses"]
    compiled, bf16 = _max_rel(runs["eager"], runs["compiled"]), _max_rel(runs["fp32 eager"], runs["eager"])
    early = _max_rel(runs["eager"][:30], runs["compiled"][:30])
    return {"steps": len(runs["eager"]), "max_relative_diff": compiled, "bf16_vs_fp32_max_relative_diff": bf16,
            "first_30_steps_max_relative_diff": early, "tolerance": max(BF16_SPACING, bf16),
            "within_bf16_tolerance": compiled <= max(BF16_SPACING, bf16), "losses": runs}


def profile(args, layers: int, work: Path) -> dict[str, Any]:
    from precision import profile_step

    exp = experiment(args.spec, {"model.num_layers": layers, "train.batch_size": args.batch_size, "launcher.precision": "bf16"}, args.set)
    prof = profile_step(exp, prepared(exp, work), args.top)
    print(f"\none bf16 step at {layers} layers: {prof['step_s']:.2f} s, {prof['matmul_share']:.0%} in matmuls; the rest, by operator:")
    print(table(["operator", "calls", "self s", "share"], [[o["op"], o["calls"], o["self_s"], f"{o['share']:.1%}"] for o in prof["top_ops"]]))
    return prof


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per run (the loss comparison covers them all)")
    ap.add_argument("--eval-every-steps", type=int, default=10, help="timing starts after the first evaluation")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--levers", action="store_true", help="also measure each single lever on bf16")
    ap.add_argument("--no-compile", action="store_true", help="leave out bf16+compile")
    ap.add_argument("--losses-only", action="store_true", help="only the compiled-vs-eager loss check")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=RESULTS / "mfu.json")
    args = ap.parse_args()
    threads = use_all_cores()
    out: dict[str, Any] = {"machine": machine() | {"torch.threads": threads}}
    dev, n = ("cuda", 8192) if torch.cuda.is_available() else ("cpu", 2048)
    peaks = {k: max(matmul_flops(dt, n, device=dev) for _ in range(3)) for k, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    out["matmul_peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
    where = out["machine"]["device"] if dev == "cuda" else f"{threads} threads"
    print(f"matmul peak (square, sides up to {n}, {where}): fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s", flush=True)
    variants = {k: v for k, v in VARIANTS.items() if not (args.no_compile and "compile" in k)} | (LEVERS if args.levers else {})
    work = Path(tempfile.mkdtemp(prefix="lbsearch-mfu-"))
    if args.losses_only:
        args.layers = []
    rows = []
    for layers in args.layers:
        res = out[f"layers_{layers}"] = run_variants(args, layers, variants, work, peaks)
        res["bf16_over_fp32"] = res["bf16"]["samples_per_s"] / res["fp32"]["samples_per_s"]
        write(out, args.out)  # after each model size: a run cut short keeps what it measured
        for name in variants:
            v = res[name]
            rows.append([layers, name, v["samples_per_s"], v["samples_per_s"] / res["fp32"]["samples_per_s"], v["tokens_per_s"],
                         f"{v['mfu']:.1%}", v["first_step_s"]])
    if rows:
        print("\n" + table(["layers", "variant", "samples/s", "vs fp32", "tokens/s", "MFU", "first step s"], rows))
    for layers in args.layers:
        print(f"{layers} layers: bf16 / fp32 = {out[f'layers_{layers}']['bf16_over_fp32']:.2f}")
    if not args.no_compile:
        check = out["compiled_vs_eager_losses"] = compare_losses(args, work)
        print(f"compiled vs eager bf16 losses (2 layers, dropout off) over {check['steps']} steps: max relative difference "
              f"{check['max_relative_diff']:.2e} (bf16 vs fp32 eager: {check['bf16_vs_fp32_max_relative_diff']:.2e}; first 30 "
              f"steps {check['first_30_steps_max_relative_diff']:.2e}): {'within' if check['within_bf16_tolerance'] else 'NOT within'} "
              f"bf16 tolerance ({check['tolerance']:.2e})")
    if args.layers:
        out["profile_bf16"] = profile(args, max(args.layers), work)
    write(out, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
