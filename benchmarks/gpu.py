"""GPU check: a BERT-base-size model trained as lbsearch trains it, on one GPU (about 8 minutes on an H100).

A random-init BERT-base (12 layers, hidden 768, 110M parameters; no download: the MiniLM tokenizer and
the Rotten Tomatoes data installed offline) on the tomatometer regression data (4 reviews a text), every
batch padded to sequence length 128. In this process, through the trial loop (``lbsearch.trial.worker.train``,
as ``benchmarks/mfu.py`` runs it):

- fp32, bf16 and fp16, eager: samples/s, tokens/s and MFU (``train/mfu``: 6 x params x tokens over time and the
  GPU's peak, ``lbsearch.trial.flops``) over the evaluation intervals after the first (tokens/s and MFU count real
  tokens; ``tokens_per_s_padded`` counts the 128 positions each sequence takes on the device);
- bf16 with ``launcher.compile`` (inductor): the same, and the first step's time (where compiling is paid);
- fp16 with an injected overflow (``LBSEARCH_INJECT_OVERFLOW_AT``): the GradScaler skips those steps, the
  trial counts them (``skipped_steps``) and completes, not pruned as diverged;

then a four-trial study end to end through the CLI (``lbsearch run``, ``lbsearch status``). Writes
``benchmarks/results/gpu.json``. Without a GPU it says so and exits 0.

    python benchmarks/gpu.py [--steps 120] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _bench import RESULTS, ROOT, experiment, lbsearch_loop, machine, prepared, table, write

SPEC = ROOT / "experiments" / "rt_tomatometer.yaml"
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "max_position_embeddings": 512}
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"launcher.precision": "no"},
    "bf16": {"launcher.precision": "bf16"},
    "fp16": {"launcher.precision": "fp16"},
    "bf16+compile": {"launcher.precision": "bf16", "launcher.compile": True},
}


def overrides(args) -> dict[str, Any]:
    """BERT-base from scratch, every batch padded to 128 tokens, one micro-batch per step."""
    b = args.batch_size
    return {"model.source": "random", "model.num_layers": None, "model.pooling": "cls", "model.freeze_embeddings": False,
            "model.config": BERT_BASE, "data.max_length": 128, "data.max_eval_samples": 256, "train.batch_size": b,
            "train.budget_samples": args.steps * b, "train.eval_every_samples": args.eval_every_steps * b,
            "launcher.max_micro_batch": b, "launcher.pad_to_multiple_of": 128, "optimizer.lr": 1e-4,
            "train.divergence_factor": 1e6}  # a speed run: a loss spike of a model from scratch must not stop it


def run_variant(name: str, args, work: Path, extra: dict[str, Any]) -> dict[str, Any]:
    exp = experiment(SPEC, overrides(args) | VARIANTS.get(name, {}) | extra)
    t0 = time.time()
    res = lbsearch_loop(exp, prepared(exp, work))
    result = res.pop("result")
    row = {k: res[k] for k in ("samples_per_s", "tokens_per_s", "mfu")} | {"first_step_s": result.first_step_s,
           "skipped_steps": result.skipped_steps, "state": result.state, "wall_s": time.time() - t0, "losses": res["losses"]}
    row["tokens_per_s_padded"] = row["samples_per_s"] * 128  # every sequence is 128 long on the device
    print(f"{name}: {row['samples_per_s']:.0f} samples/s, {row['tokens_per_s']:.0f} tokens/s, MFU {row['mfu'] or 0:.1%}, "
          f"first step {row['first_step_s']:.1f} s", flush=True)
    return row


def overflow(args, work: Path) -> dict[str, Any]:
    """fp16 with infinite gradients injected at steps 3 and 5: skipped, counted, and the trial completes."""
    os.environ["LBSEARCH_INJECT_OVERFLOW_AT"] = "3,5"
    try:
        exp = experiment(SPEC, overrides(args) | VARIANTS["fp16"] | {"train.budget_samples": 20 * args.batch_size,
                                                                       "train.eval_every_samples": 10 * args.batch_size})
        res = lbsearch_loop(exp, prepared(exp, work))["result"]
    finally:
        os.environ.pop("LBSEARCH_INJECT_OVERFLOW_AT")
    out = {"injected_at": [3, 5], "state": res.state, "reason": res.reason, "skipped_steps": res.skipped_steps}
    print(f"fp16 overflow: {out}", flush=True)
    return out


def study(args, work: Path) -> dict[str, Any]:
    """Four trials through the CLI (separate trial processes, Optuna, MLflow), then ``status --json``."""
    sets = overrides(args) | {"train.budget_samples": 30 * args.batch_size,
                                                         "train.eval_every_samples": 10 * args.batch_size, "launcher.precision": "bf16"}
    spec = work / "gpu_study.yaml"
    spec.write_text(json.dumps({"name": "gpu-check", "experiment": str(SPEC), "experiment_overrides": sets, "n_trials": 4,
                                "search_space": {"optimizer.lr": {"type": "float", "low": 3e-5, "high": 3e-4, "log": True}},
                                "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "none"}}))
    cli = [sys.executable, "-m", "lbsearch.cli"]
    t0 = time.time()
    run = subprocess.run([*cli, "run", str(spec), "--mlruns", str(work / "mlruns")], capture_output=True, text=True, cwd=work)
    wall = time.time() - t0
    status = subprocess.run([*cli, "status", "gpu-check", "--json", "--mlruns", str(work / "mlruns")], capture_output=True, text=True, cwd=work)
    rows = json.loads(status.stdout) if status.returncode == 0 else []
    out = {"exit_code": run.returncode, "wall_s": wall, "trials": rows, "tail": run.stdout[-1500:] + run.stderr[-1500:]}
    print(f"study: exit {run.returncode}, {len(rows)} trials in {wall:.0f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps per speed run")
    ap.add_argument("--eval-every-steps", type=int, default=20, help="timing starts after the first evaluation")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no GPU here (torch.cuda.is_available() is False): nothing measured, nothing written")
        return 0
    out: dict[str, Any] = {"machine": machine(), "setup": overrides(args), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="lbsearch-gpu-") as tmp:
        work = Path(tmp)
        for name in VARIANTS:  # written after each stage: a run cut short keeps what it measured
            out["variants"][name] = run_variant(name, args, work, {})
            write(out, args.out)
        out["fp16_overflow"] = overflow(args, work)
        write(out, args.out)
        out["study"] = study(args, work)
    rows = [[n, v["samples_per_s"], v["tokens_per_s_padded"], v["mfu"] or 0.0, v["first_step_s"]] for n, v in out["variants"].items()]
    print(table(["variant", "samples/s", "tokens/s (len 128)", "MFU", "first step s"], rows))
    write(out, args.out)
    ok = out["fp16_overflow"]["state"] == "complete" and out["study"]["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
