"""The quickstart's best model, compressed by ``lbsearch compress`` in one run on this machine: int8 dynamic
quantization (weight bytes, predict latency and throughput, test accuracy vs the original) and global
magnitude pruning at 3 sparsities (test accuracy each, without and with a short fine-tune); each variant then
re-evaluated from its saved folder in a fresh process (``lbsearch compress --verify``), which must reproduce
its logged metrics exactly.

The model: by default the quickstart's best trial as recorded in ``benchmarks/results/quickstart_speed.json``
(its params, enqueued) trained again as a one-trial study ``quickstart`` under a temporary state folder:
one trial instead of twelve on a shared machine. ``--mlruns DIR`` uses a folder where
``lbsearch run studies/quickstart.yaml`` has run instead (its best trial's kept model).

    PYTHONPATH=. python benchmarks/compress.py [--mlruns DIR] [--finetune-steps 50] [--out benchmarks/results/compress_<machine>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _bench import RESULTS, ROOT, machine, run_study_cli, write
from transformers import AutoTokenizer

from lbsearch.cli.compress import INT8, ORIGINAL, variant_name
from lbsearch.cli.main import REPEATS, SPARSITIES
from lbsearch.data import load_arrays
from lbsearch.spec import KEPT_FILE, SIZE_WEIGHT_BYTES, SPEED_LATENCY_MS_MEDIAN, SPEED_THROUGHPUT_PER_S, TEST, Session, data_cache_dir, load_study, parse_set, trial_model_dir
from lbsearch.study import open_study
from lbsearch.tracking import compressed_name, tracker_for, variant_dir, variant_rows
from lbsearch.trial import load_model
from lbsearch.trial.model import predictions

STUDY = ROOT / "studies" / "quickstart.yaml"
RECORD = RESULTS / "quickstart_speed.json"
LB = [sys.executable, "-m", "lbsearch.cli"]


def best_study(root: Path) -> dict:
    """A one-trial ``quickstart`` study of the recorded best params (``RECORD``'s ``on`` run) under ``root``."""
    record = json.loads(RECORD.read_text())["on"]
    cfg, _ = load_study(STUDY, parse_set(["n_trials=1"]))
    open_study(Session(root=root), cfg).enqueue_trial(record["best_params"])
    wall, rows, best = run_study_cli(STUDY, "quickstart", root, ["--set", "n_trials=1"])
    return {"how": f"the recorded best params of {RECORD.relative_to(ROOT)} (trial {record['best_trial']}: validation "
                   f"{record['best_validation']:.4f}, test {record['best_test']:.4f} there) trained again as a one-trial study",
            "params": record["best_params"], "train_wall_s": wall, "trial_validation": best.get("value"), "trial_test": best.get("test")}


def reused(root: Path) -> dict:
    """What the study under ``root`` is: the recorded best params retrained (one trial of them), or a search of its own."""
    record = json.loads(RECORD.read_text())["on"]
    rows = json.loads(subprocess.run(LB + ["status", "quickstart", "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)
    best = json.loads(subprocess.run(LB + ["best", "quickstart", "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)["picked"]
    params = {k: best[k] for k in record["best_params"] if k in best}
    same = len(rows) == 1 and all(params.get(k) == v for k, v in record["best_params"].items() if k in best)
    how = (f"the recorded best params of {RECORD.relative_to(ROOT)} (trial {record['best_trial']}: validation {record['best_validation']:.4f}, "
           f"test {record['best_test']:.4f} there) trained again as a one-trial study" if same else
           f"the best of the {len(rows)} trials of the quickstart study under {root}")
    return {"how": how, "params": params, "trial_validation": best.get("value"), "trial_test": best.get("test"),
            "train_wall_s": best.get("seconds")}


def paired(root: Path, trial: int, variants: list[str], rounds: int) -> dict:
    """Latency and throughput of ``predict`` with the models loaded side by side in this process, the calls
    interleaved (round i times each variant on text i, the order rotated each round), so that a change of
    the machine's load falls on every variant alike; per variant the median and 10th-90th percentiles,
    and the median over rounds of each variant's time over the original's."""
    folders = {v: trial_model_dir(root, "quickstart", trial) if v == ORIGINAL else variant_dir(root, "quickstart", trial, v) for v in variants}
    models = {v: load_model(f) for v, f in folders.items()}
    tok = AutoTokenizer.from_pretrained(folders[ORIGINAL])
    info = json.loads((folders[ORIGINAL] / KEPT_FILE).read_text())
    cache = next(p for p in data_cache_dir(root).glob("data-*") if (p / "test.npz").is_file())
    texts = tok.batch_decode([list(x) for x in load_arrays(cache, "test").ids[: max(rounds, 32)]], skip_special_tokens=True)
    out: dict = {"threads": torch.get_num_threads(), "rounds": rounds, "load_average_before": list(os.getloadavg())}
    for label, batch, n in (("one_text_ms", 1, rounds), ("batch32_ms", 32, max(5, rounds // 5))):
        times: dict[str, list[float]] = {v: [] for v in variants}
        for v in variants:  # warm-up
            predictions(tok, models[v], info, texts[:batch])
        for i in range(n):
            order = variants[i % len(variants):] + variants[: i % len(variants)]
            for v in order:
                t0 = time.perf_counter()
                predictions(tok, models[v], info, texts[i % len(texts): i % len(texts) + 1] if batch == 1 else texts[:32], batch_size=32)
                times[v].append((time.perf_counter() - t0) * 1e3)
        out[label] = {v: {"median": statistics.median(t), "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
                          "ratio_to_original_median": statistics.median(a / b for a, b in zip(t, times[ORIGINAL]))}
                      for v, t in times.items()}
    out["load_average_after"] = list(os.getloadavg())
    return out


def verify(root: Path, variants: list[str]) -> dict[str, bool]:
    """Each variant re-evaluated from its folder in a process of its own: True where every logged metric is reproduced."""
    out = {}
    for v in variants:
        proc = subprocess.run(LB + ["compress", "quickstart", "--verify", v, "--mlruns", str(root)], capture_output=True, text=True, timeout=1800)
        out[v] = proc.returncode == 0 and proc.stdout.rstrip().endswith("identical")
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlruns", type=Path, default=None, help="a state folder holding a finished quickstart study (default: train one)")
    ap.add_argument("--sparsity", nargs="+", default=[str(s) for s in SPARSITIES])
    ap.add_argument("--finetune-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--verify", nargs="*", default=None, metavar="VARIANT",
                    help="the variants re-evaluated in a fresh process (default: every registered one)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/compress_<cpu family>.json")
    ap.add_argument("--paired", type=int, default=100, metavar="ROUNDS", help="interleaved latency rounds of the original, int8 and the middle --sparsity, not fine-tuned (0: none)")
    ap.add_argument("--paired-only", action="store_true", help="with --mlruns: only the interleaved latency of the variants already there")
    args = ap.parse_args()
    middle = variant_name(float(sorted(args.sparsity, key=float)[len(args.sparsity) // 2]))  # prune50 for the default sparsities
    out: dict = {"machine": machine()}
    root = args.mlruns.resolve() if args.mlruns else Path(tempfile.mkdtemp(prefix="compress-bench-")) / "mlruns"
    family = out["machine"]["cpu"].split("family ")[-1].split(",")[0] if "family" in out["machine"]["cpu"] else "cpu"
    if args.paired_only:
        best = json.loads(subprocess.run(LB + ["best", "quickstart", "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)
        out["model"] = reused(root)
        out["paired_latency"] = paired(root, best["picked"]["trial"], [ORIGINAL, INT8, middle], args.paired)
        write(out, args.out or RESULTS / f"compress_epyc_family{family}_paired.json")
        return
    out["model"] = best_study(root) if args.mlruns is None else reused(root)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    proc = subprocess.run(LB + ["compress", "quickstart", "--mlruns", str(root), "--sparsity", *args.sparsity, "--finetune-steps",
                                str(args.finetune_steps), "--repeats", str(args.repeats)], capture_output=True, text=True, timeout=7200)
    print(proc.stdout, proc.stderr[-2000:], flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"lbsearch compress failed ({proc.returncode})")
    out["compress"] = {"wall_s": time.perf_counter() - t0, "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
                       "finetune_steps": args.finetune_steps, "repeats": args.repeats, "output": proc.stdout.splitlines()}
    session = Session(root=root)
    best = json.loads(subprocess.run(LB + ["best", "quickstart", "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)
    rows = variant_rows(tracker_for(session), "quickstart", best["picked"]["trial"])
    original = next(r for r in rows if r["variant"] == ORIGINAL)
    for r in rows:
        r["vs_original"] = {"test_accuracy_points": 100 * (r[TEST + "accuracy"] - original[TEST + "accuracy"]),
                            "weight_bytes_ratio": r[SIZE_WEIGHT_BYTES] / original[SIZE_WEIGHT_BYTES],
                            "latency_ratio": r[SPEED_LATENCY_MS_MEDIAN] / original[SPEED_LATENCY_MS_MEDIAN],
                            "throughput_ratio": r[SPEED_THROUGHPUT_PER_S] / original[SPEED_THROUGHPUT_PER_S]}
    out["registered_model"] = compressed_name("quickstart")
    out["variants"] = rows
    out["verified_in_fresh_process"] = verify(root, args.verify if args.verify is not None else [r["variant"] for r in rows if r["version"]])
    if args.paired:
        out["paired_latency"] = paired(root, best["picked"]["trial"], [ORIGINAL, INT8, middle], args.paired)
    write(out, args.out or RESULTS / f"compress_epyc_family{family}.json")


if __name__ == "__main__":
    main()
