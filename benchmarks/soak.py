"""Soak: several `lbsearch run` workers on one study while random workers are SIGKILLed.

Bounded in count and time. At the end every trial must be accounted for: the requested number of
counted (complete / pruned) trials, every killed trial failed as "worker died" and re-run exactly
once, one MLflow run per Optuna trial, none left RUNNING.

    python benchmarks/soak.py --trials 20 --workers 3 --kills 4
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "specs" / "tiny_study.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lbsearch-soak-"))
    cmd = [sys.executable, "-m", "lbsearch.cli", "run", str(SPEC), f"--set=n_trials={args.trials}",
           "--set=max_retries=10", "--set=experiment.train.budget_samples=320", "--set=experiment.train.eval_every_samples=160"]
    logs = []

    def start() -> subprocess.Popen:
        log = open(work / f"worker-{len(logs)}.log", "w")
        logs.append(log)
        return subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)

    t0 = time.time()
    workers = [start() for _ in range(args.workers)]
    kills = 0
    next_kill = time.time() + rng.uniform(8, 20)
    while any(p.poll() is None for p in workers) and time.time() - t0 < args.max_seconds:
        time.sleep(0.5)
        if kills < args.kills and time.time() >= next_kill:
            alive = [p for p in workers if p.poll() is None]
            if alive:
                victim = rng.choice(alive)
                victim.kill()
                victim.wait()
                kills += 1
                print(f"[soak] t={time.time() - t0:.0f}s SIGKILL worker pid {victim.pid} ({kills}/{args.kills})", flush=True)
                workers.append(start())  # a replacement, as a job scheduler would start
            next_kill = time.time() + rng.uniform(8, 20)
    for p in workers:
        if p.poll() is None:
            p.kill()
    final = subprocess.run(cmd, cwd=work, capture_output=True, text=True)  # one last pass picks up any leftovers
    wall = time.time() - t0

    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna.journal")))
    trials = optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    states = Counter(t.state.name for t in trials)
    died = [t for t in trials if t.user_attrs.get("reason") == "worker died"]
    retry_of = Counter(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    child = Counter(r.data.tags.get("lbsearch.trial") for r in runs if r.data.tags.get("lbsearch.role") == "trial")
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
        "soak.mlflow_runs_running": sum(r.info.status == "RUNNING" for r in runs if r.data.tags.get("lbsearch.role") == "trial"),
        "soak.optuna_running": states.get("RUNNING", 0),
        "soak.final_pass_rc": final.returncode,
    }
    print(json.dumps(figures, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    ok = (counted == args.trials and figures["soak.lost"] == 0 and figures["soak.duplicated"] == 0
          and figures["soak.mlflow_runs_running"] == 0 and figures["soak.optuna_running"] == 0
          and figures["soak.killed_trials_retried_once"] == len(died))
    print("[soak] OK" if ok else "[soak] FAILED", f"(state in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
