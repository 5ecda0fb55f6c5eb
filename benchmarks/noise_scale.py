"""Cost of the gradient-noise-scale estimator: the lbsearch trial loop with ``train.noise_scale`` on
vs off, alternating on, off, on, ... (same model, data, B and micro-batches).

Two figures: the ratio of steady-state samples/s (on / off, medians), and, in the "on" runs, the
time spent inside the estimator's own calls (per micro-batch: the squared norm of the gradient
increment; per step: the EMA update) as a fraction of the training time: a direct figure that the
machine's noise does not blur. Goal: <= 5% of step time.

    python benchmarks/noise_scale.py        # 3 pairs of ~25 s runs, MiniLM 2-layer, B=64 (16 x 4): ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _bench import RESULTS, SPEC, experiment, lbsearch_loop, machine, prepared, summary, table, timed, use_all_cores, write


def time_monitor_calls() -> dict[str, float]:
    from lbsearch.diagnostics import GradientNoiseMonitor

    spent = {"after_backward": 0.0, "step": 0.0}

    for name in spent:
        setattr(GradientNoiseMonitor, name, timed(getattr(GradientNoiseMonitor, name), name, spent))
    return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--repeats", type=int, default=3, help="on/off pairs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--budget", type=int, default=2560)
    ap.add_argument("--eval-every", type=int, default=640)
    ap.add_argument("--out", type=Path, default=RESULTS / "noise_scale.json")
    args = ap.parse_args()
    threads = use_all_cores()
    sets = {"train.batch_size": args.batch_size, "launcher.max_micro_batch": args.micro_batch, "train.budget_samples": args.budget,
            "train.eval_every_samples": args.eval_every, "data.max_eval_samples": 128}
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    data = prepared(experiment(args.spec, sets), work)
    spent = time_monitor_calls()
    rates: dict[bool, list[float]] = {True: [], False: []}
    fractions: list[float] = []
    for r in range(args.repeats):
        for on in (True, False):
            before = dict(spent)
            run = lbsearch_loop(experiment(args.spec, sets | {"train.noise_scale": on}), data)
            rates[on].append(run["samples_per_s"])
            if on:
                inside = sum(spent.values()) - sum(before.values())
                fractions.append(inside / run["result"]["train_s"])
            print(f"repeat {r} noise_scale {'on ' if on else 'off'}: {run['samples_per_s']:.1f} samples/s"
                  + (f", estimator {100 * fractions[-1]:.2f}% of training time, B_simple {run['result'].get('b_simple', float('nan')):.0f}" if on else ""), flush=True)
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    out = {
        "machine": machine() | {"threads": threads},
        "noise_scale.spec": str(args.spec.relative_to(Path.cwd())) if args.spec.is_relative_to(Path.cwd()) else str(args.spec),
        "noise_scale.batch_size": args.batch_size,
        "noise_scale.micro_batch": args.micro_batch,
        "noise_scale.samples_per_s_on": summary(rates[True]),
        "noise_scale.samples_per_s_off": summary(rates[False]),
        "noise_scale.on_over_off": ratio,
        "noise_scale.cost_fraction_end_to_end": 1 - ratio,
        "noise_scale.cost_fraction_timed": summary(fractions),
        "noise_scale.goal_fraction": 0.05,
    }
    print(table(["", "samples/s (median)", "estimator time / training time"],
                [["on", statistics.median(rates[True]), f"{100 * statistics.median(fractions):.2f}%"],
                 ["off", statistics.median(rates[False]), "-"], ["on / off", ratio, ""]]))
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
