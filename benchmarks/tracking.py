"""Tracking cost: a trial's wall time with MLflow logging on vs off, alternating on, off, on, ...

- on:  ``lbsearch.cli.commands.train_once``, i.e. ``lbsearch train``: an MLflow run with every config field
       as a param, artifacts, the datasets, per-step metrics forwarded from the trial process, tags,
       stdout.log, and MLflow's system-metrics monitor sampling every 10 s (``--no-system-metrics``: without it);
- off: the same trial process (``lbsearch.orchestrator.launch.run_trial_process``, same worker spec) with no
       MLflow run: the worker's reporter is off (``mlflow: null``) and nothing is logged.

Both run from this process against one SQLite tracking store created beforehand (a study creates
it once). The time spent inside the Tracker's MLflow calls during the "on" runs is also summed per
call, a direct figure that the machine's noise does not blur, and so is the work of the
system-metrics thread (sampling, logging, its run-status check). Goal: on / off <= 1.02, judged on the
median of the pairwise ratios (each "on" trial over the "off" trial after it) and on every pair
(``_stats.verdict``).

    python benchmarks/tracking.py                   # 5 pairs of ~30 s trials: ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from _bench import RESULTS, SPEC, experiment, machine, summary, table, timed, worker_spec, write
from _stats import MET, judged, pairwise

from lbsearch.spec import TRIALS, data_cache_dir


def time_tracker_calls() -> dict[str, float]:
    """Wrap the Tracker's methods (and the git lookup for its tags): seconds spent, summed per name."""
    import lbsearch.cli.commands
    from lbsearch.tracking.tracker import Tracker

    spent: dict[str, float] = defaultdict(float)

    for name in ("__init__", "experiment", "child_run", "artifacts", "datasets", "tags", "metric_rows", "end"):
        setattr(Tracker, name, timed(getattr(Tracker, name), f"Tracker.{name}", spent))
    lbsearch.cli.commands.git_commit = timed(lbsearch.cli.commands.git_commit, "git_commit", spent)
    return spent


def time_monitor_calls() -> dict[str, float]:
    """Wrap the work of MLflow's system-metrics thread: sampling, logging, and the run-status check it
    makes every interval. That thread runs beside the trial, so this is CPU time it takes, not wall time."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking.client import MlflowClient

    spent: dict[str, float] = defaultdict(float)
    for name in ("collect_metrics", "publish_metrics", "finish"):
        setattr(SystemMetricsMonitor, name, timed(getattr(SystemMetricsMonitor, name), f"SystemMetricsMonitor.{name}", spent))
    MlflowClient.get_run = timed(MlflowClient.get_run, "MlflowClient.get_run (the monitor's status check)", spent)
    return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field, e.g. train.noise_scale=false")
    ap.add_argument("--repeats", type=int, default=5, help="on/off pairs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", type=int, default=1600, help="samples per trial")
    ap.add_argument("--evals", type=int, default=4, help="evaluations per trial")
    ap.add_argument("--eval-samples", type=int, default=256, help="data.max_eval_samples (validation and test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "tracking.json")
    ap.add_argument("--no-system-metrics", action="store_true", help="tracked runs without MLflow's system-metrics monitor")
    args = ap.parse_args()
    if args.no_system_metrics:
        os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"  # lbsearch.tracking.tracker honours MLflow's switch
    from lbsearch.cli.commands import train_once
    from lbsearch.data.cache import prepare_data
    from lbsearch.orchestrator.launch import run_trial_process
    from lbsearch.orchestrator.runner import resolved
    from lbsearch.spec.session import Session
    from lbsearch.tracking.tracker import SYSTEM_METRICS_INTERVAL, tracker_for

    exp = experiment(args.spec, {"train.batch_size": args.batch_size, "train.budget_samples": args.budget,
                                 "train.eval_every_samples": args.budget // args.evals, "data.max_eval_samples": args.eval_samples}, args.set)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # as the CLI does: no "creating tables" lines
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    session = Session(root=work / "mlruns", out=lambda line: None)
    tracker_for(session).experiment(f"train-{exp.name}")  # the store exists before the first timed trial, as in a study
    data = prepare_data(resolved(exp), data_cache_dir(session.root))
    spent, monitor = time_tracker_calls(), time_monitor_calls()

    def on() -> None:
        if train_once(session, exp) != 0:
            raise SystemExit("tracked trial failed")

    def off() -> None:
        result = run_trial_process(worker_spec(resolved(exp), data), session.root / TRIALS / "off" / uuid.uuid4().hex[:8])
        if result.state != "complete":
            raise SystemExit(f"untracked trial failed: {result.reason}")

    walls: dict[str, list[float]] = {"on": [], "off": []}
    calls: list[dict[str, float]] = []
    monitor_calls: list[dict[str, float]] = []
    for r in range(args.repeats):
        for name, run in (("on", on), ("off", off)):  # alternate on, off, on, off
            before, before_monitor = dict(spent), dict(monitor)
            t0 = time.perf_counter()
            run()
            walls[name].append(time.perf_counter() - t0)
            if name == "on":
                calls.append({k: v - before.get(k, 0.0) for k, v in spent.items()})
                monitor_calls.append({k: v - before_monitor.get(k, 0.0) for k, v in monitor.items()})
            print(f"repeat {r} tracking {name:3s}: {walls[name][-1]:.2f} s", flush=True)
    t = "tracking"
    on_s, off_s = statistics.median(walls["on"]), statistics.median(walls["off"])
    in_calls = [sum(c.values()) for c in calls]
    out: dict[str, Any] = {
        "machine": machine(),
        f"{t}.batch_size": args.batch_size, f"{t}.budget_samples": args.budget, f"{t}.evals": args.evals,
        f"{t}.experiment": exp.model_dump(mode="json"),
        f"{t}.system_metrics": not args.no_system_metrics,
        f"{t}.system_metrics_interval_s": float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or SYSTEM_METRICS_INTERVAL),
        f"{t}.on_wall_s": summary(walls["on"]), f"{t}.off_wall_s": summary(walls["off"]),
        f"{t}.on_over_off": on_s / off_s,
        f"{t}.on_over_off_pairwise_median": statistics.median(a / b for a, b in zip(walls["on"], walls["off"])),
        f"{t}.on_over_off_pairwise": pairwise(walls["on"], walls["off"]),
        f"{t}.mlflow_calls_s": summary(in_calls),
        f"{t}.mlflow_calls_s_by_call": {k: statistics.median(c.get(k, 0.0) for c in calls) for k in calls[0]},
        f"{t}.mlflow_calls_share_of_on_wall": statistics.median(c / w for c, w in zip(in_calls, walls["on"])),
        f"{t}.system_metrics_thread_s": summary([sum(c.values()) for c in monitor_calls]),
        f"{t}.system_metrics_thread_s_by_call": {k: statistics.median(c.get(k, 0.0) for c in monitor_calls) for k in (monitor_calls[0] if monitor_calls else {})},
        f"{t}.system_metrics_thread_share_of_on_wall": statistics.median(sum(c.values()) / w for c, w in zip(monitor_calls, walls["on"])),
        f"{t}.goal_on_over_off": 1.02,
    }
    out[f"{t}.verdict"] = judged(out[f"{t}.on_over_off_pairwise"]["runs"], 1.02, at_most=True)["verdict"]
    out[f"{t}.goal_met"] = out[f"{t}.verdict"] == MET
    print(table(["tracking", "trial wall s (median)", "runs"], [[k, statistics.median(v), " ".join(f"{x:.1f}" for x in v)] for k, v in walls.items()]))
    print(table(["MLflow call (on runs, median per trial)", "s"], [[k, v] for k, v in out[f"{t}.mlflow_calls_s_by_call"].items()]))
    print(table(["system-metrics thread (on runs, median per trial)", "s"], [[k, v] for k, v in out[f"{t}.system_metrics_thread_s_by_call"].items()]))
    print(f"on / off: pairwise median {out[f'{t}.on_over_off_pairwise_median']:.3f} (goal <= 1.02: {out[f'{t}.verdict']}; ratio of medians {on_s / off_s:.3f}); "
          f"system-metrics thread: {100 * out[f'{t}.system_metrics_thread_share_of_on_wall']:.2f}% of the wall time in CPU; time inside MLflow calls: {statistics.median(in_calls):.2f} s per trial "
          f"= {100 * out[f'{t}.mlflow_calls_share_of_on_wall']:.1f}% of its wall time")
    write(out, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
