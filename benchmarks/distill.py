"""Distillation on the quickstart: its best model (all 6 MiniLM-L6 layers) as the teacher, a student of the first
``--layers`` pretrained layers searched twice with the same budget (the same number of trials, the same sampler and
seed, the same B, lr, warmup and clipping ranges, 3,000 samples a trial): once distilled from the teacher
(``studies/distill.yaml``: the temperature and weight searched too) and once on the labels alone (the quickstart's
own study, cut to the student's layers). Each study's best trial (by validation accuracy) is compared on the test split.

Goal (issue 34): a student at <= half the teacher's layers within 1.5 points of the teacher's test accuracy, and ahead
of the student trained without it.

    python benchmarks/distill.py                                 # the quickstart first (~5 min with bf16 units), then 2 x 3 student trials
    python benchmarks/distill.py --teacher-root /tmp/x/mlruns    # a finished `lbsearch run studies/quickstart.yaml --mlruns /tmp/x/mlruns`
    python benchmarks/distill.py --teacher-root /tmp/x/mlruns --arms plain      # the plain student alone (it needs no teacher), ...
    python benchmarks/distill.py --teacher-root /tmp/x/mlruns --arms distilled  # ... then the distilled one, and the comparison
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _bench import RESULTS, ROOT, machine, run_study_cli, table, write

LB = [sys.executable, "-m", "lbsearch.cli"]
GOAL_POINTS = 1.5
STUDIES = ROOT / "studies"


def _machine_label() -> str:
    """The CPU's vendor line, family and vector width, e.g. ``epyc_family26_avx512``."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.split(":", 1)[0].strip() == key), "")  # noqa: E731
    name = field("model name").lower().replace("amd ", "").split()[0] if field("model name") else platform.machine()
    return f"{name}_family{field('cpu family')}_{torch.backends.cpu.get_cpu_capability().lower()}"


def _read(name: str, root: Path) -> tuple[list[dict], dict]:
    """A finished study's ``status --json`` rows and ``best --json``'s picked trial."""
    rows = json.loads(subprocess.run(LB + ["status", name, "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)
    best = json.loads(subprocess.run(LB + ["best", name, "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)["picked"]
    return rows, best


def _summary(wall: float | None, rows: list[dict], best: dict, layers: int) -> dict[str, Any]:
    return {"layers": layers, "wall_s": wall, "trials": len(rows), "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
            "best_trial": best.get("trial"), "best_params": best.get("params"), "best_validation_accuracy": best.get("value"),
            "best_test_accuracy": best.get("test"), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-root", type=Path, help="an mlruns folder where the quickstart study has run (default: run it here first)")
    ap.add_argument("--layers", type=int, default=2, help="the student's layers (the first pretrained ones)")
    ap.add_argument("--n-trials", type=int, default=3, help="trials of each student study (the same budget for both)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for both student studies")
    ap.add_argument("--arms", default="distilled,plain", help="the student studies to run now; the others are read from --teacher-root, "
                    "where an earlier run of this script ran them (default: both)")
    ap.add_argument("--suffix", default="", help="after the student studies' names (distill-2l, plain-2l): a fresh pair in the same mlruns")
    ap.add_argument("--note", default=None, help="a line kept in the JSON: how the studies read from --teacher-root were run")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/distill_<machine>.json, e.g. distill_epyc_family26_avx512.json")
    args = ap.parse_args()
    args.out = args.out or RESULTS / f"distill_{_machine_label()}.json"
    out: dict[str, Any] = {"machine": machine(), "goal": f"student layers <= teacher's / 2, test accuracy >= teacher's - {GOAL_POINTS} points "
                           "and > the student trained without the teacher"}
    root = args.teacher_root or Path(tempfile.mkdtemp(prefix="lbsearch-distill-")) / "mlruns"
    if args.teacher_root is None:
        wall, rows, best = run_study_cli(STUDIES / "quickstart.yaml", "quickstart", root, [], timeout=7200)
        out["teacher"] = _summary(wall, rows, best, 6)
    common = [f"n_trials={args.n_trials}", f"experiment.model.num_layers={args.layers}", *args.set]
    arms = {"distilled": ("distill.yaml", f"distill-{args.layers}l{args.suffix}"), "plain": ("quickstart.yaml", f"plain-{args.layers}l{args.suffix}")}
    for label in [a for a in args.arms.split(",") if a]:  # run these now; the others (and a teacher found in --teacher-root) are read below
        study, name = arms[label]
        wall, rows, best = run_study_cli(STUDIES / study, name, root, [f"--set=name={name}"] + [f"--set={s}" for s in common], timeout=7200)
        out[label] = _summary(wall, rows, best, args.layers) | {"study": f"studies/{study}", "sets": common}
        print(f"{label} student ({args.layers} layers): {out[label]['states']} in {wall:.0f} s, best trial {best.get('trial')} "
              f"validation {best.get('value'):.4f} test {best.get('test'):.4f}", flush=True)
    if "teacher" not in out:
        out["teacher"] = _summary(None, *_read("quickstart", root), 6)
    for label, (study, name) in arms.items():
        if label not in out:
            out[label] = _summary(None, *_read(name, root), args.layers) | {"study": f"studies/{study}", "sets": common, "read_from": str(root)}
    out["mlruns"] = str(root)
    if args.note:
        out["note"] = args.note
    t, d, p = (out[k]["best_test_accuracy"] for k in ("teacher", "distilled", "plain"))
    checks = {"half_the_layers": args.layers <= 6 / 2, "within_1.5_points_of_teacher": (t - d) * 100 <= GOAL_POINTS, "ahead_of_plain_student": d > p}
    out["gap_to_teacher_points"], out["gain_over_plain_points"] = (t - d) * 100, (d - p) * 100
    out["checks"], out["verdict"] = checks, "met" if all(checks.values()) else "not met"
    print("\n" + table(["model", "layers", "best validation", "test"],
                       [[k, out[k]["layers"], out[k]["best_validation_accuracy"], out[k]["best_test_accuracy"]] for k in ("teacher", "distilled", "plain")]))
    print(f"distilled student vs teacher: {-out['gap_to_teacher_points']:+.2f} points; vs the plain student: {out['gain_over_plain_points']:+.2f} points; "
          f"goal: {out['verdict']} ({', '.join(k for k, ok in checks.items() if not ok) or 'all checks pass'})")
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
