"""Samples/s of one trial with 1 vs 2 processes (same B, same data), alternating A B A B.

On a 2-core CPU the figure documents the overhead of a 2-rank (gloo) trial; no speed-up is
expected there. On a GPU machine, run it with --gpu to compare 1 vs 2 GPUs.

    python benchmarks/processes.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _bench import ROOT, machine, write
from _stats import pairwise
from mlflow.tracking import MlflowClient

from lbsearch.spec import TRAIN_SAMPLES_PER_S


def one(work: Path, spec: Path, procs: int, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "lbsearch.cli", "train", str(spec), f"--set=launcher.processes={procs}", *sets]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = next(e for e in client.search_experiments() if e.name.startswith("train-"))
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    hist = client.get_metric_history(run.info.run_id, TRAIN_SAMPLES_PER_S)
    return statistics.median(m.value for m in hist)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "experiments" / "rt_minilm.yaml")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", type=int, default=1600)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "processes.json")
    args = ap.parse_args()
    sets = [f"--set=train.batch_size={args.batch_size}", f"--set=train.budget_samples={args.budget}",
            f"--set=train.eval_every_samples={args.budget // 2}", "--set=data.max_eval_samples=256"]
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    figures: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.repeats):
        for procs in (1, 2):
            sps = one(work, args.spec, procs, sets)
            figures[procs].append(sps)
            print(f"repeat {r} processes {procs}: {sps:.1f} samples/s", flush=True)
    out = {
        "machine": machine(),
        "processes.spec": str(args.spec.relative_to(ROOT)) if args.spec.is_relative_to(ROOT) else str(args.spec),
        "processes.batch_size": args.batch_size,
        "processes.samples_per_s_1": figures[1],
        "processes.samples_per_s_2": figures[2],
        "processes.median_1": statistics.median(figures[1]),
        "processes.median_2": statistics.median(figures[2]),
        "processes.ratio_2_over_1": statistics.median(figures[2]) / statistics.median(figures[1]),
        "processes.ratio_2_over_1_pairwise": pairwise(figures[2], figures[1]),  # each repeat's 2-process run over its 1-process run
    }
    print(json.dumps(out, indent=1))
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
