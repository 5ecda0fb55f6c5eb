"""The quickstart study with the speed levers off, then on: same 12 trials, same seed, one after
the other on this machine, each in its own state folder.

"off" is the study without what was built to speed it up: the training step without the levers of
``benchmarks/mfu.py`` (AdamW's per-operation implementation, micro-batch 16, micro-batches padded
instead of packed), and every trial started as a new process (``lbsearch run --no-standby``); "on"
is what the shipped quickstart runs. ``--off-standby`` keeps the standby process in the "off" run,
to measure the step levers alone. Printed and saved: the study's wall time, the ratio on / off, the best trial's
validation and test accuracy, the mean MFU of the trials and the outcome of ``lbsearch reproduce``
on the "on" study. One pair of studies: its verdict against the goal (on / off <= 0.67) is for one run;
``benchmarks/verdicts.py`` judges it against the spread of repeated runs of the same configuration.

    python benchmarks/quickstart_speed.py                       # ~10 min with bf16 units on 2 cores
    python benchmarks/quickstart_speed.py --on launcher.compile=true
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _bench import RESULTS, ROOT, machine, run_study_cli, table, write
from _stats import verdict

OFF = ["experiment.optimizer.fused=false", "experiment.launcher.max_micro_batch=16", "experiment.launcher.pack=false"]


def run_study(name: str, sets: list[str], root: Path, flags: list[str]) -> dict[str, Any]:
    args = [f"--set=name={name}"] + [f"--set={s}" for s in sets] + flags
    wall, rows, best = run_study_cli(ROOT / "studies" / "quickstart.yaml", name, root, args)
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
    return {"wall_s": wall, "trials": len(rows), "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
            "best_trial": best.get("trial"), "best_validation": best.get("value"), "best_test": best.get("test"),
            "best_params": {k: v for k, v in best.items() if "." in k}, "mean_mfu": statistics.mean(mfu) if mfu else None, "sets": sets,
            "flags": flags}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--on", action="append", default=[], metavar="KEY=VALUE", help="extra study override for the 'on' run")
    ap.add_argument("--both", action="append", default=[], metavar="KEY=VALUE", help="override for both runs (a quick check of the script)")
    ap.add_argument("--off-standby", action="store_true", help="keep the standby process in the 'off' run (the step levers alone)")
    ap.add_argument("--n-trials", type=int, default=12)
    ap.add_argument("--out", type=Path, default=RESULTS / "quickstart_speed.json")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": machine()}
    work = Path(tempfile.mkdtemp(prefix="lbsearch-qs-"))
    trials = [f"n_trials={args.n_trials}", *args.both]
    off_flags = [] if args.off_standby else ["--no-standby"]
    for label, sets, flags in (("off", OFF + trials, off_flags), ("on", args.on + trials, [])):
        out[label] = run_study(f"quickstart-{label}", sets, work / label, flags)
        print(f"{label}: {out[label]['wall_s']:.0f} s, {out[label]['states']}, best trial {out[label]['best_trial']} "
              f"validation {out[label]['best_validation']:.4f} test {out[label]['best_test']:.4f}", flush=True)
    rep = subprocess.run([sys.executable, "-m", "lbsearch.cli", "reproduce", "quickstart-on", "--mlruns", str(work / "on")],
                         capture_output=True, text=True, timeout=1800)
    out["reproduce_on"] = {"exit_code": rep.returncode, "identical": "metrics identical" in rep.stdout, "tail": rep.stdout.strip().splitlines()[-3:]}
    out["wall_ratio_on_over_off"] = out["on"]["wall_s"] / out["off"]["wall_s"]
    out["goal_wall_ratio_on_over_off"] = 0.67
    out["verdict"] = verdict([out["wall_ratio_on_over_off"]], 0.67, at_most=True)  # one pair: its spread is not measured here
    rows = [[k, out[k]["wall_s"], out[k]["best_validation"], out[k]["best_test"], f"{out[k]['mean_mfu']:.1%}" if out[k]["mean_mfu"] else "-"]
            for k in ("off", "on")]
    print("\n" + table(["levers", "wall s", "best validation", "best test", "mean MFU"], rows))
    print(f"wall time on / off: {out['wall_ratio_on_over_off']:.3f} (goal <= 0.67: {out['verdict']}); reproduce of the 'on' study's best trial: "
          f"{'identical' if out['reproduce_on']['identical'] else 'NOT identical'}")
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
