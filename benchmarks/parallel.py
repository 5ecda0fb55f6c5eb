"""The quickstart study one trial at a time, then two at a time (``lbsearch run --parallel 2``), on this
machine, one after the other, each in its own state folder; ``--pairs K`` repeats the pair K times
(serial, parallel, serial, parallel, ...) for the spread of the ratio.

Printed and saved: each study's wall time, the ratio parallel / serial per pair (goal <= 0.75), the
best trial's validation and test accuracy of each, the core sets and thread counts the parallel trials
ran with (their MLflow tags), and ``lbsearch reproduce`` of the parallel study's best trial (run with
the thread count that trial ran with, which it logged).

    python benchmarks/parallel.py                  # the quickstart: ~25 min on 2 cores without bf16 units
    python benchmarks/parallel.py --n-trials 4 --set experiment.train.budget_samples=640   # a quick check
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _bench import RESULTS, ROOT, machine, run_study_cli, table, write
from _stats import judged

from lbsearch.study import RUN_ID
from lbsearch.tracking import CPUS, THREADS

LB = [sys.executable, "-m", "lbsearch.cli"]
GOAL = 0.75


def run_study(name: str, sets: list[str], root: Path, parallel: int) -> dict[str, Any]:
    args = [f"--set=name={name}"] + [f"--set={s}" for s in sets] + ["--parallel", str(parallel)]  # named, also for 1: the serial baseline
    wall, rows, best = run_study_cli(ROOT / "studies" / "quickstart.yaml", name, root, args, timeout=5400)
    return {"wall_s": wall, "parallel": parallel, "trials": len(rows), "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
            "best_trial": best.get("trial"), "best_validation": best.get("value"), "best_test": best.get("test"),
            "placement": _placement(root, rows), "sets": sets}


def _placement(root: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trial's MLflow start and end, cores and threads (the tags its trial process set)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    out = []
    for r in rows:
        if r.get(RUN_ID):
            run = client.get_run(r[RUN_ID])
            out.append({"trial": r["trial"], "start_ms": run.info.start_time, "end_ms": run.info.end_time,
                        "cpus": run.data.tags.get(CPUS), "threads": run.data.tags.get(THREADS)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study override for both runs")
    ap.add_argument("--n-trials", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "parallel.json")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": machine(), "pairs": []}
    work = Path(tempfile.mkdtemp(prefix="lbsearch-parallel-"))
    sets = [f"n_trials={args.n_trials}", *args.set]
    for k in range(args.pairs):
        pair = {}
        for label, n in (("serial", 1), ("parallel", 2)):
            pair[label] = run_study(f"quickstart-{label}-{k}", sets, work / f"{label}-{k}", n)
            print(f"pair {k} {label}: {pair[label]['wall_s']:.0f} s, {pair[label]['states']}, best trial {pair[label]['best_trial']} "
                  f"validation {pair[label]['best_validation']:.4f} test {pair[label]['best_test']:.4f}", flush=True)
        pair["ratio_parallel_over_serial"] = pair["parallel"]["wall_s"] / pair["serial"]["wall_s"]
        out["pairs"].append(pair)
    last = args.pairs - 1
    rep = subprocess.run(LB + ["reproduce", f"quickstart-parallel-{last}", "--mlruns", str(work / f"parallel-{last}")],
                         capture_output=True, text=True, timeout=3600)
    out["reproduce_parallel"] = {"exit_code": rep.returncode, "identical": "metrics identical" in rep.stdout, "tail": rep.stdout.strip().splitlines()[-4:]}
    out["goal"] = judged([p["ratio_parallel_over_serial"] for p in out["pairs"]], GOAL, at_most=True)
    rows = [[f"{k} {label}", p[label]["wall_s"], p[label]["best_validation"], p[label]["best_test"]]
            for k, p in enumerate(out["pairs"]) for label in ("serial", "parallel")]
    print("\n" + table(["study", "wall s", "best validation", "best test"], rows))
    ratios = ", ".join(f"{p['ratio_parallel_over_serial']:.3f}" for p in out["pairs"])
    print(f"wall time parallel / serial: {ratios} "
          f"(goal <= {GOAL}: {out['goal']['verdict']}); reproduce of the parallel study's best trial: "
          f"{'identical' if out['reproduce_parallel']['identical'] else 'NOT identical'}")
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
