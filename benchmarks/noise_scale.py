"""Cost of the gradient-noise-scale estimator: the lbsearch trial loop with ``train.noise_scale`` on
(measuring every ``--every``-th step, the default, and every step) vs off, alternating
on, every-step, off, on, ... (same model, data and B).

Figures: the ratios of steady-state samples/s (on / off, medians), and, in the "on" runs, the
time spent inside the estimator's own calls (after the head micro-batches: one squared norm of the
gradients; per step: the EMA update) as a fraction of the training time: a direct figure that the
machine's noise does not blur. Goal: <= 5% of step time, i.e. on / off >= 0.95, judged on the median of
the pairwise ratios (each round's "on" run over its "off" run) and on every round (``_stats.verdict``),
for the default cadence and for every step.

Most of the cost is not in those calls but in the micro-batch layout of a measured step: its head
(a random subset) and the rest are length-sorted apart, which pads more than sorting the whole step.
The every-step runs show that cost in full; measuring every n-th step (``train.noise_scale_every``'s default, recorded in the JSON) divides it by n.

    python benchmarks/noise_scale.py        # 5 rounds of three ~8 s runs, MiniLM 2-layer, B=64 (16 x 4): ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _bench import RESULTS, SPEC, experiment, lbsearch_loop, machine, prepared, summary, table, timed, use_all_cores, write
from _stats import MET, judged, pairwise


def time_monitor_calls() -> dict[str, float]:
    from lbsearch.trial.diagnostics import GradientNoiseMonitor

    spent = {"after_backward": 0.0, "step": 0.0}

    for name in spent:
        setattr(GradientNoiseMonitor, name, timed(getattr(GradientNoiseMonitor, name), name, spent))
    return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--repeats", type=int, default=5, help="rounds of (on, every step, off)")
    ap.add_argument("--every", type=int, default=None, help="train.noise_scale_every of the 'on' runs (default: the config default)")
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
    every = args.every or experiment(args.spec, sets).train.noise_scale_every
    modes = {"on": {"train.noise_scale": True, "train.noise_scale_every": every},
             "every_step": {"train.noise_scale": True, "train.noise_scale_every": 1},
             "off": {"train.noise_scale": False}}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    fractions: dict[str, list[float]] = {"on": [], "every_step": []}
    b_simple: dict[str, list[float]] = {"on": [], "every_step": []}
    for r in range(args.repeats):
        for mode, extra in modes.items():
            before = dict(spent)
            run = lbsearch_loop(experiment(args.spec, sets | extra), data)
            rates[mode].append(run["samples_per_s"])
            line = f"round {r} {mode:10s}: {run['samples_per_s']:.1f} samples/s"
            if mode in fractions:
                inside = sum(spent.values()) - sum(before.values())
                fractions[mode].append(inside / run["result"].train_s)
                b_simple[mode].append(run["result"].b_simple if run["result"].b_simple is not None else float("nan"))
                line += f", estimator {100 * fractions[mode][-1]:.2f}% of training time, B_simple {b_simple[mode][-1]:.0f}"
            print(line, flush=True)
    med = {m: statistics.median(v) for m, v in rates.items()}
    ratio = med["on"] / med["off"]
    out = {
        "machine": machine() | {"threads": threads},
        "noise_scale.spec": str(args.spec.relative_to(Path.cwd())) if args.spec.is_relative_to(Path.cwd()) else str(args.spec),
        "noise_scale.batch_size": args.batch_size,
        "noise_scale.micro_batch": args.micro_batch,
        "noise_scale.budget_samples": args.budget,
        "noise_scale.every": every,
        "noise_scale.samples_per_s_on": summary(rates["on"]),
        "noise_scale.samples_per_s_every_step": summary(rates["every_step"]),
        "noise_scale.samples_per_s_off": summary(rates["off"]),
        "noise_scale.on_over_off": ratio,
        "noise_scale.every_step_over_off": med["every_step"] / med["off"],
        "noise_scale.cost_fraction_end_to_end": 1 - ratio,
        "noise_scale.cost_fraction_timed": summary(fractions["on"]),
        "noise_scale.cost_fraction_timed_every_step": summary(fractions["every_step"]),
        "noise_scale.b_simple_on": summary(b_simple["on"]),
        "noise_scale.b_simple_every_step": summary(b_simple["every_step"]),
        "noise_scale.goal_fraction": 0.05,
    }
    for mode in ("on", "every_step"):
        pairs = pairwise(rates[mode], rates["off"])
        out[f"noise_scale.{mode}_over_off_pairwise"] = pairs
        out[f"noise_scale.{mode}_verdict"] = judged(pairs["runs"], 1 - 0.05, at_most=False)["verdict"]
    out["noise_scale.goal_met"] = out["noise_scale.on_verdict"] == MET
    print(table(["", "samples/s (median)", "/ off", "estimator calls / training time"],
                [[f"on (every {every} steps)", med["on"], ratio, f"{100 * statistics.median(fractions['on']):.2f}%"],
                 ["on (every step)", med["every_step"], med["every_step"] / med["off"], f"{100 * statistics.median(fractions['every_step']):.2f}%"],
                 ["off", med["off"], 1.0, "-"]]))
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
