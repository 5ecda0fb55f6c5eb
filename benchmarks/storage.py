"""Optuna storage cost per trial (ask, 5 reports, should_prune, tell): PostgreSQL vs the embedded
journal file, alternating trial by trial; and trials/hour of a tiny study with 1, 2 and 3 workers
sharing a PostgreSQL study.

    python benchmarks/storage.py [--trials 40] [--skip-workers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from _bench import ROOT, machine, write

from lbsearch.study import open_storage

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/{}"


def _db(action: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute(f'{action} DATABASE "{name}"' + (" WITH (FORCE)" if action == "DROP" else ""))
    conn.close()


def storage_overhead(n: int) -> dict[str, float]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"lbsearch_bench_{uuid.uuid4().hex[:8]}"
    _db("CREATE", name)
    tmp = Path(tempfile.mkdtemp())
    try:
        studies = {
            "journal": optuna.create_study(study_name="s", storage=open_storage(f"journal://{tmp / 'optuna.journal'}")),
            "postgres": optuna.create_study(study_name="s", storage=open_storage(PG.format(name))),
        }
        times: dict[str, list[float]] = {k: [] for k in studies}
        for i in range(n):
            for kind, study in studies.items():  # alternate A B A B
                t0 = time.perf_counter()
                trial = study.ask()
                x = trial.suggest_float("x", 0, 1)
                for step in range(1, 6):
                    trial.report(x * step, step=step * 100)
                    trial.should_prune()
                study.tell(trial, x)
                times[kind].append(time.perf_counter() - t0)
        out = {f"storage.{k}_ms_per_trial": 1000 * statistics.median(v[3:]) for k, v in times.items()}
        out["storage.postgres_over_journal"] = out["storage.postgres_ms_per_trial"] / out["storage.journal_ms_per_trial"]
        return out
    finally:
        _db("DROP", name)


def trials_per_hour(workers: int, n_trials: int) -> float:
    name = f"lbsearch_bench_{uuid.uuid4().hex[:8]}"
    _db("CREATE", name)
    work = Path(tempfile.mkdtemp())
    try:
        cmd = [sys.executable, "-m", "lbsearch.cli", "run", str(ROOT / "tests" / "specs" / "tiny_study.yaml"), "--storage", PG.format(name),
               f"--set=n_trials={n_trials}", "--set=experiment.train.budget_samples=320", "--set=experiment.train.eval_every_samples=160",
               "--set=pruner.name=none"]
        t0 = time.time()
        procs = [subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        wall = time.time() - t0
        assert codes == [0] * workers, codes
        return n_trials / wall * 3600
    finally:
        _db("DROP", name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--study-trials", type=int, default=6)
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "storage.json")
    args = ap.parse_args()
    out = {"machine": machine(), "storage.trials": args.trials} | storage_overhead(args.trials)
    print(json.dumps(out, indent=1), flush=True)
    if not args.skip_workers:
        out["workers.study"] = {"spec": "tests/specs/tiny_study.yaml", "trials": args.study_trials, "samples_per_trial": 320,
                                "model": "tiny random-init BERT"}  # the workers share this machine's cores (machine.cpus)
        for k in (1, 2, 3):
            out[f"workers.{k}.trials_per_hour"] = trials_per_hour(k, args.study_trials)
            print(f"{k} worker(s): {out[f'workers.{k}.trials_per_hour']:.0f} trials/hour", flush=True)
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
