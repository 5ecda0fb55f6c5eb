"""Soak: several `lbsearch run` workers on one study while random workers are SIGKILLed.

Bounded in count and time. At the end every trial must be accounted for: the requested number of
counted (complete / pruned) trials, every killed trial failed as "worker died" and re-run exactly
once, one MLflow run per Optuna trial, none left RUNNING.

    python benchmarks/soak.py --trials 20 --workers 3 --kills 4

With ``--resume-figure EVERY`` it runs the soak twice with the same kills' seed, the machine dying
each time (the worker and its trial process SIGKILLed together), first without checkpoints and then
with ``train.checkpoint_every_samples: EVERY``, and prints how many samples the re-runs of the
killed trials trained again (a killed trial's reach is the last ``progress/samples`` in its MLflow
run; the soak evaluates every step so that it is exact):

    python benchmarks/soak.py --resume-figure 320 --trials 6 --workers 2 --kills 3 --kill-gap 30 45
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from _bench import ROOT, machine, write
from mlflow.tracking import MlflowClient

from lbsearch.spec import PROGRESS_SAMPLES, RETRY_OF_ATTR, WORKER_DIED
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import ROLE, TRIAL

SPEC = ROOT / "tests" / "specs" / "tiny_study.yaml"


RESUME_SETS = ["--set=search_space.train.batch_size.choices=[32]", "--set=experiment.train.budget_samples=1920",
               "--set=experiment.train.eval_every_samples=32", "--set=pruner.name=none"]
"""The resume figure's trials: B = 32, 60 steps, an evaluation (and a metric flush) every step, no pruning."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--kill-gap", type=float, nargs=2, default=(8.0, 20.0), metavar=("LOW", "HIGH"), help="seconds between kills, drawn uniformly")
    ap.add_argument("--resume-figure", type=int, default=None, metavar="EVERY",
                    help="soak without and with checkpoints every EVERY samples; samples re-trained after kills")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.resume_figure is None:
        figures, ok = soak(args, ["--set=experiment.train.budget_samples=320", "--set=experiment.train.eval_every_samples=160"])
        _save(args.out or ROOT / "benchmarks" / "results" / "soak.json", figures)
        return 0 if ok else 1
    before, ok1 = soak(args, RESUME_SETS, kill_tree=True)
    after, ok2 = soak(args, RESUME_SETS + [f"--set=experiment.train.checkpoint_every_samples={args.resume_figure}"], kill_tree=True)
    figure = {"soak.parameters": {"trials": args.trials, "workers": args.workers, "kills": args.kills, "seed": args.seed, "kill_gap_s": args.kill_gap,
                                  "sets": RESUME_SETS, "checkpoint_every_samples": args.resume_figure, "spec": str(SPEC.relative_to(ROOT))},
              "before": before, "after": after}
    print("samples re-trained after kills (the machine dies: worker and trial SIGKILLed)")
    for name, f in (("before: no checkpoints", before), (f"after: checkpoint every {args.resume_figure} samples", after)):
        print(f"  {name:40s} {f['soak.samples_retrained']:6d} samples re-trained over {f['soak.killed_trials_failed_worker_died']} killed "
              f"trials ({f['soak.samples_trained']} trained in all, {f['soak.counted_trials']} trials counted)")
    _save(args.out or ROOT / "benchmarks" / "results" / "soak_resume.json", figure)
    return 0 if ok1 and ok2 else 1


def _save(path: Path, figures: dict) -> None:
    """The figures with the machine they ran on (versions, CPU, load, date) and the command."""
    write({"machine": machine()} | figures, path)


def _kill(victim: subprocess.Popen, tree: bool) -> None:
    """SIGKILL a worker; with ``tree`` its trial processes too, at once, as when the machine dies."""
    import psutil

    children = psutil.Process(victim.pid).children(recursive=True) if tree else []
    victim.kill()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    victim.wait()


def soak(args, sets: list[str], kill_tree: bool = False) -> tuple[dict, bool]:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lbsearch-soak-"))
    cmd = [sys.executable, "-m", "lbsearch.cli", "run", str(SPEC), f"--set=n_trials={args.trials}", "--set=max_retries=10", *sets]
    logs = []

    def start() -> subprocess.Popen:
        log = open(work / f"worker-{len(logs)}.log", "w")
        logs.append(log)
        return subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)

    t0 = time.time()
    workers = [start() for _ in range(args.workers)]
    kills = 0
    next_kill = time.time() + rng.uniform(*args.kill_gap)
    while any(p.poll() is None for p in workers) and time.time() - t0 < args.max_seconds:
        time.sleep(0.5)
        if kills < args.kills and time.time() >= next_kill:
            alive = [p for p in workers if p.poll() is None]
            if alive:
                victim = rng.choice(alive)
                _kill(victim, kill_tree)
                kills += 1
                print(f"[soak] t={time.time() - t0:.0f}s SIGKILL worker pid {victim.pid} ({kills}/{args.kills})", flush=True)
                workers.append(start())  # a replacement, as a job scheduler would start
            next_kill = time.time() + rng.uniform(*args.kill_gap)
    for p in workers:
        if p.poll() is None:
            p.kill()
    final = subprocess.run(cmd, cwd=work, capture_output=True, text=True)  # one last pass picks up any leftovers
    wall = time.time() - t0

    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna.journal")))
    trials = optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    states = Counter(t.state.name for t in trials)
    died = [t for t in trials if t.user_attrs.get("reason") == WORKER_DIED]
    retry_of = Counter(t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    child = Counter(r.data.tags.get(TRIAL) for r in runs if r.data.tags.get(ROLE) == "trial")
    counted = states["COMPLETE"] + states["PRUNED"]
    figures = {
        "soak.requested_trials": args.trials,
        "soak.workers": args.workers,
        "soak.sigkills": kills,
        "soak.wall_s": round(wall, 1),
        "soak.optuna_trials": len(trials),
        "soak.states": dict(states),
        "soak.counted_trials": counted,
        "soak.killed_trials_failed_worker_died": len(died),
        "soak.killed_trials_retried_once": sum(retry_of[t.number] == 1 for t in died),
        "soak.lost": args.trials - counted if counted < args.trials else 0,
        "soak.duplicated": sum(v - 1 for v in child.values() if v > 1) + sum(1 for v in retry_of.values() if v > 1),
        "soak.trials_without_mlflow_run": sum(1 for t in trials if child[str(t.number)] == 0),
        "soak.mlflow_runs_running": sum(r.info.status == "RUNNING" for r in runs if r.data.tags.get(ROLE) == "trial"),
        "soak.optuna_running": states.get("RUNNING", 0),
        "soak.final_pass_rc": final.returncode,
    } | _retrained(client, trials)
    print(json.dumps(figures, indent=1))
    ok = (counted == args.trials and figures["soak.lost"] == 0 and figures["soak.duplicated"] == 0
          and figures["soak.mlflow_runs_running"] == 0 and figures["soak.optuna_running"] == 0
          and figures["soak.killed_trials_retried_once"] == len(died))
    print("[soak] OK" if ok else "[soak] FAILED", f"(state in {work})")
    return figures, ok


def _retrained(client: MlflowClient, trials: list) -> dict:
    """Samples that re-runs trained again: per killed trial, how far it got (its last logged
    ``progress/samples``) less where its re-run resumed (0 without a checkpoint)."""
    retry = {t.user_attrs[RETRY_OF_ATTR]: t for t in trials if RETRY_OF_ATTR in t.user_attrs}
    per_kill = []
    for t in trials:
        if t.user_attrs.get("reason") != WORKER_DIED or RUN_ID not in t.user_attrs:
            continue
        reached = max((m.value for m in client.get_metric_history(t.user_attrs[RUN_ID], PROGRESS_SAMPLES)), default=0)
        resumed = retry[t.number].user_attrs.get(RESUMED_FROM["samples"], 0) if t.number in retry else 0
        per_kill.append({"trial": t.number, "reached": int(reached), "resumed_from": resumed, "retrained": max(0, int(reached) - resumed)})
    return {"soak.samples_retrained": sum(k["retrained"] for k in per_kill), "soak.samples_reached_by_killed": sum(k["reached"] for k in per_kill),
            "soak.retrained_per_kill": per_kill,
            "soak.samples_trained": sum(k["reached"] for k in per_kill) + sum(int(t.user_attrs.get("samples", 0)) - int(t.user_attrs.get(
                RESUMED_FROM["samples"], 0)) for t in trials if t.state.name != "FAIL")}


if __name__ == "__main__":
    sys.exit(main())
