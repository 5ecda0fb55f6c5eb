"""Search efficiency: compute (training samples processed, summed over trials; tokens for a language model)
until a search first completes a trial within a tolerance of the best known metric, and the share of seeds
that get there, for lbsearch's default search (a study that names no sampler and no pruner: ``SamplerConfig()``
and ``PrunerConfig()``) beside lbsearch's other searches and Optuna's samplers and pruners as they
come (``_searches.py``), over several seeds. Goal: the default gets there in >= 90% of seeds, with <= 0.5x
random search's and <= 0.3x the grid's samples (medians over seeds).

A tabular benchmark, as HPOBench and NAS-Bench-101/201 do it:

1. The table: every configuration of a discrete space (by default train.batch_size x optimizer.lr
   x schedule.warmup_fraction, 4 x 6 x 2 = 48 configurations, of which a few are within 0.5 points
   of the best: a search has to find them; ``--param`` sets another space) of a fixed offline task (MiniLM
   2-layer on Rotten Tomatoes, ``experiments/rt_minilm.yaml`` with a small budget) is trained once, for
   real, by lbsearch's own trial loop (``lbsearch.trial.worker.train``, in this process), which records its
   learning curve: the validation metric at each evaluation, at the nominal sample count it reports to
   Optuna (multiples of ``eval_every``, so trials of any B line up), with the samples actually seen by
   then, and the final value (or the point of divergence). Cached in ``benchmarks/results/search_table.json``
   with the task settings, reused while they match (a field the spec gained since holds its default;
   ``--rebuild`` forces a rebuild). The table is written after each configuration: an interrupted build
   resumes where it stopped and never trains a configuration twice.
2. The replays: each search runs up to N trials (default: the grid size) per seed and stops at its first
   trial within tolerance. lbsearch's searches are built by its own ``make_sampler`` / ``make_pruner`` /
   ``suggest``, each trial's sampler seeded by (seed, trial number) as a study seeds it; Optuna's as they
   come use one sampler seeded by the seed and Optuna's default arguments. A trial reports the table's
   values step by step and asks ``should_prune()`` as the worker does (never at the last evaluation); its
   compute is the samples it saw up to where it stopped (the whole budget when not pruned). Each trial first tells the
   pruner where its lr warmup ends (``note_warmup`` with its plan from ``make_plan``), as the trial process does, so
   ``pruner.protect_warmup`` acts in the replay through the same code. A repeated
   configuration is paid for again, as a study would retrain it. A diverged configuration ends pruned
   where it diverged, with the reason ``diverged``, as the worker reports it (lbsearch's TPE and GP learn
   from it). TPE, GP and random search draw the lr and warmup from ranges, as ``studies/quickstart.yaml``
   declares them, snapped to the nearest tabulated value (``RANGES``); the ``*_alpha`` searches draw a base
   lr and alpha in [0, 1] instead, lr = base lr x (B / reference_batch_size)^alpha, snapped the same way;
   ``default_choices`` is the default search over the space declared as the table's choices (each dimension a list),
   where ``gp_ordinal`` never draws a configuration already tried.

Why it is honest: on the CPU lbsearch's training is deterministic (``lbsearch reproduce`` checks that
a re-run gives the same metrics), so the table is exactly what a live study would observe, and the
samplers and pruners are the real ones: only the training is looked up instead of re-run. Compute
is counted in samples, not seconds, so the machine's load does not enter the result.

Per run, samples-to-best counts every trial's samples up to and including the first COMPLETE trial
whose final value is within ``--tolerance`` of best_known (the best final value in the table); a run
that gets there within N trials is a success, otherwise its compute for all N trials is reported
(``samples_spent_when_missed``) and it counts as infinitely late in the median.

    python benchmarks/search_efficiency.py --set launcher.max_micro_batch=16 --seeds 20   # table 1 (MiniLM), as built
    # table 2: the tiny random-init BERT of the tests, scored by validation loss (~25 min to build)
    python benchmarks/search_efficiency.py --seeds 20 --spec tests/specs/tiny.yaml --set metric.name=loss \
        --table benchmarks/results/search_table_tiny.json --out benchmarks/results/search_efficiency_tiny.json
    # table 3: the tiny GPT-2 decoder on the speeches corpus, B x lr x warmup in tokens, validation loss (~15 min, 1 thread)
    python benchmarks/search_efficiency.py --seeds 20 --threads 1 --spec experiments/lm_tiny.yaml \
        --set train.budget_tokens=32768 --set train.eval_every_tokens=4096 --set data.eval_tokens=2048 --set train.noise_scale=false \
        --param train.batch_size=8,16,32,64 --param optimizer.lr=1.0e-3,2.0e-3,4.0e-3,8.0e-3,1.6e-2 --param schedule.warmup_tokens=0,8192 \
        --table benchmarks/results/search_table_lm.json --out benchmarks/results/search_efficiency_lm.json
    python benchmarks/search_efficiency.py --methods default,random,grid   # some searches only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from _bench import RESULTS, ROOT, SPEC, experiment, fresh_accelerate, machine, prepared, table, use_all_cores, worker_spec, write
from _promote import replay_promote
from _searches import DEFAULT_CHOICES, Search, alpha_space, goals, print_summary, pruner_of, sampler_of, searches, summarize, to_lr

from lbsearch.spec import DIVERGED_REASON, apply_params
from lbsearch.spec.config import CategoricalParam, ExperimentConfig, FloatParam, PrunerConfig, SamplerConfig
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.plan import make_plan
from lbsearch.spec.tasks import LM_TASKS
from lbsearch.study.pruner import note_warmup
from lbsearch.study.sampler import suggest

SEARCHES = searches((SamplerConfig(), PrunerConfig()))
"""The searches replayed (``_searches.py``); ``default``: a study that names no sampler and no pruner (``--study`` another)."""
SPACE = {"train.batch_size": [16, 32, 64, 128], "optimizer.lr": [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3],
         "schedule.warmup_fraction": [0.0, 0.3]}
Space = dict[str, CategoricalParam]
# How a user declares these dimensions (``studies/quickstart.yaml``): ranges, log for the lr. TPE and
# random search draw from the ranges; the draw is snapped to the nearest tabulated value (in log
# space for a log range). Each tabulated value owns an equal share of the range, so random search
# still picks them uniformly; TPE sees the order (a good lr has good neighbours).
RANGES = {"optimizer.lr": True, "schedule.warmup_fraction": False, "schedule.warmup_tokens": False}  # key -> log
Row = dict[str, Any]


def key(params: dict[str, Any], space: Space) -> str:
    return " ".join(f"{k}={params[k]!r}" for k in space)


# ----------------------------------------------------------------------------------------------
# The table: every configuration trained once by lbsearch's trial loop


def train_config(exp: ExperimentConfig, data) -> Row:
    """One configuration's learning curve, from ``lbsearch.trial.worker.train`` as a study's worker runs it.
    (Not ``_bench.lbsearch_loop``: that stops on a diverged run, which a search must see as the
    worker reports it: pruned at the step where it diverged.)"""
    from lbsearch.trial.worker import train

    fresh_accelerate()
    t0 = time.perf_counter()
    result = train(worker_spec(exp, data), log=lambda *a: None)
    name = exp.metric.name
    return {
        "state": result.state, "reason": result.reason, "samples": result.samples,
        "value": result.value, "wall_s": time.perf_counter() - t0,
        "evals": [{"nominal_samples": e["nominal_samples"], "samples": e["samples"], "value": e[name]} for e in result.evals],
    }


def configured(settings: dict[str, Any], params: dict[str, Any]) -> ExperimentConfig:
    """One cell's experiment: the table's recorded experiment (every field, so no default of today's code enters) with its params."""
    return ExperimentConfig.model_validate(apply_params(settings["experiment"], params))


def build_table(path: Path, built: dict[str, Any], space: Space, data) -> None:
    """Trains every configuration not yet in ``built["configs"]``, writing ``path`` after each one (a cell
    done is never recomputed: an interrupted build resumes), each row with the load average when it started."""
    rows: dict[str, Row] = built["configs"]
    for values in itertools.product(*(p.choices for p in space.values())):
        params = dict(zip(space, values))
        if key(params, space) in rows:
            continue
        load = list(os.getloadavg())
        row = train_config(configured(built["settings"], params), data) | {"params": params, "load_average_at_start": load, "threads": torch.get_num_threads()}
        rows[key(params, space)] = row
        built["build_s"] += row["wall_s"]
        write(built, path)
        curve = " ".join(f"{e['value']:.4f}" for e in row["evals"])
        print(f"  [{len(rows)}] {key(params, space)}: {row['reason'] or row['state']}, curve {curve}, {row['wall_s']:.1f} s, load {load[0]:.1f}", flush=True)


def same_settings(cached: Any, current: Any) -> bool:
    """The cached table's settings equal ``current`` on every field they record (a field added to the spec since the
    table was built is not in them: it holds its default, which the table's training had before it was a field)."""
    if isinstance(cached, dict) and isinstance(current, dict):
        return set(cached) <= set(current) and all(same_settings(v, current[k]) for k, v in cached.items())
    return cached == current


def load_or_build(path: Path, settings: dict[str, Any], rebuild: bool, space: Space) -> dict[str, Any]:
    """The table at ``path`` if it was built for ``settings``; a partial one (``partial: true``) is completed from its own
    recorded experiment."""
    settings = json.loads(json.dumps(settings))  # as it reads back from the file
    built = {"settings": settings, "build_s": 0.0, "threads": torch.get_num_threads(), "partial": True, "machine": machine(), "configs": {}}
    if path.is_file() and not rebuild:
        cached = json.loads(path.read_text())
        same = same_settings(cached.get("settings"), settings)
        if same and not cached.get("partial"):
            print(f"table: reusing {path} ({len(cached['configs'])} configurations)")
            return cached
        if same:
            built = cached
            print(f"table: resuming {path} ({len(cached['configs'])} configurations done)")
        else:
            print(f"table: {path} was built for other settings: rebuilding")
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    try:
        data = prepared(configured(built["settings"], {}), work)
        print(f"table: training {math.prod(len(p.choices) for p in space.values())} configurations", flush=True)
        build_table(path, built, space, data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    built["partial"] = False
    write(built, path)
    return built


# ----------------------------------------------------------------------------------------------
# The replays: Optuna's samplers and pruners, lbsearch's builders, the table's curves


def observe(trial: optuna.Trial, row: Row, spent: list[int]) -> float:
    """The worker's side of a trial, from the table: report each evaluation at its nominal samples and
    stop when pruned (never at the last evaluation) or diverged; the samples seen go to ``spent``."""
    complete = row["state"] == "complete"
    note_warmup(trial, row["plan"])  # as the trial process does once it has its plan: the pruner spares its warmup
    for i, e in enumerate(row["evals"]):
        trial.report(e["value"], step=e["nominal_samples"])
        if not (complete and i == len(row["evals"]) - 1) and trial.should_prune():
            spent.append(e["samples"])
            raise optuna.TrialPruned()
    spent.append(row["samples"])
    if not complete:  # diverged: the worker's trial ends pruned, with its reason (which lbsearch's TPE and GP learn from)
        trial.set_user_attr("reason", row["reason"] or DIVERGED_REASON)
        raise optuna.TrialPruned()
    return row["value"]


def with_plans(configs: dict[str, Row], settings: dict[str, Any]) -> None:
    """Each row's ``plan``: its configuration's ``make_plan``, as its trial derived it (``observe`` tells the pruner its warmup end)."""
    for r in configs.values():
        r["plan"] = make_plan(configured(settings, r["params"]))


def as_ranges(space: Space) -> dict[str, Any]:
    """The space as a user declares it: numeric dimensions of RANGES as float ranges in which each
    tabulated value owns an equal share (log: evenly log-spaced values, the range half a step beyond
    the outer ones; linear: two values, the range between them); any other dimension stays categorical."""
    out: dict[str, Any] = {}
    for k, p in space.items():
        v = sorted(p.choices)
        ratios = [b / a for a, b in zip(v, v[1:])] if len(v) > 1 and v[0] > 0 else []
        if k in RANGES and RANGES[k] and ratios and max(ratios) - min(ratios) < 1e-6 * max(ratios):
            half = math.sqrt(ratios[0])
            out[k] = FloatParam(type="float", low=v[0] / half, high=v[-1] * half, log=True)
        elif k in RANGES and not RANGES[k] and len(v) == 2:
            out[k] = FloatParam(type="float", low=v[0], high=v[-1])
        else:
            out[k] = p
    return out


def snap(params: dict[str, Any], space: Space) -> dict[str, Any]:
    """Each drawn value -> the nearest tabulated choice (log distance for log ranges)."""
    def dist(k: str, c: float, x: float) -> float:
        return abs(math.log(c) - math.log(x)) if RANGES.get(k) else abs(c - x)

    return {k: min(space[k].choices, key=lambda c: dist(k, c, v)) if k in RANGES and isinstance(v, float) else v for k, v in params.items()}


def draw(study: optuna.Study, number: int, search: Search, seed: int, searched: dict[str, Any], shared: list, configs: dict[str, Row],
         space: Space, base: ExperimentConfig) -> tuple[optuna.Trial, Row]:
    """Ask trial ``number`` (its sampler seeded by (seed, number); an enqueued trial keeps its params) and look its row up."""
    study.sampler = sampler_of(search, seed, number, searched, shared)
    trial = study.ask()
    params = suggest(trial, searched)
    return trial, configs[key(snap(to_lr(params, base) if search.alpha else params, space), space)]


def replay(search: Search, seed: int, configs: dict[str, Row], space: Space, base: ExperimentConfig, n_trials: int, target: float) -> dict[str, Any]:
    """One search of up to ``n_trials`` trials, stopped at its first trial within tolerance (the grid stops once its grid is done)."""
    grid = isinstance(search.sampler, SamplerConfig) and search.sampler.name == "grid"
    searched = space if grid or search.choices else as_ranges(space)
    searched = alpha_space(searched) if search.alpha else searched
    # a fixed name per seed: Optuna's Hyperband puts a trial in its bracket by a hash of the study name and trial number
    study = optuna.create_study(study_name=f"replay-{seed}", direction=base.metric.direction, pruner=pruner_of(search, base))
    spent: list[int] = []
    shared: list = []
    sign = 1 if base.metric.direction == "maximize" else -1
    first = None
    if isinstance(search.pruner, PrunerConfig) and search.pruner.name == "asha_promote":  # pauses and promotes (_promote.py)
        return replay_promote(search.pruner, base, n_trials, target, seed, lambda st, n: draw(st, n, search, seed, searched, shared, configs, space, base))
    for number in range(n_trials if not grid else min(n_trials, len(configs))):
        study.sampler = sampler_of(search, seed, number, searched, shared)
        trial = study.ask()
        params = suggest(trial, searched)
        row = configs[key(snap(to_lr(params, base) if search.alpha else params, space), space)]
        try:
            value = observe(trial, row, spent)
            study.tell(trial, value)
            if sign * (value - target) >= 0:
                first = number
                break
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    trials = [{"params": t.params, "state": t.state.name.lower(), "samples": n} for t, n in zip(study.trials, spent)]
    return {"seed": seed, "samples_to_best": None if first is None else sum(spent), "trials_to_best": None if first is None else first + 1,
            "samples_total": sum(spent), "pruned": sum(t["state"] != "complete" for t in trials), "trials": trials}


_JOB: tuple = ()


def _replay_one(task: tuple[str, int]) -> tuple[str, int, dict[str, Any]]:
    found, configs, space, base, n_trials, target = _JOB
    t0 = time.process_time()
    run = replay(found[task[0]], task[1], configs, space, base, n_trials, target)
    return task[0], task[1], run | {"cpu_s": time.process_time() - t0}


def replay_all(tasks: list[tuple[str, int]], jobs: int, job: tuple) -> dict[str, list[dict[str, Any]]]:
    """Every (search, seed) run, in ``jobs`` forked processes; runs listed by seed per search."""
    global _JOB
    _JOB = job
    done: dict[str, dict[int, dict[str, Any]]] = {m: {} for m, _ in tasks}
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for m, seed, run in pool.imap_unordered(_replay_one, tasks):
            done[m][seed] = run
            if len(done[m]) == sum(t[0] == m for t in tasks):
                print(f"  {m}: {sum(r['samples_to_best'] is not None for r in done[m].values())} of {len(done[m])} seeds found it, "
                      f"{sum(r['cpu_s'] for r in done[m].values()):.0f} CPU s", flush=True)
    return {m: [runs[s] for s in sorted(runs)] for m, runs in done.items()}


def print_table(configs: dict[str, Row], metric: str) -> None:
    print(table(["config", "state", f"final {metric}", "curve (per evaluation)", "samples", "wall s"],
                [[k, r["reason"] or r["state"], r["value"] if r["value"] is not None else "-",
                  " ".join(f"{e['value']:.3f}" for e in r["evals"]), r["samples"], r["wall_s"]] for k, r in configs.items()]))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--study", type=Path, default=None, help="the default search's sampler and pruner come from here (default: a study that names neither)")
    ap.add_argument("--methods", default="", help="comma-separated searches to replay (default: all of " + ", ".join(SEARCHES) + ")")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field")
    ap.add_argument("--param", action="append", metavar="KEY=V1,V2,...",
                    help="a dimension of the searched grid (repeatable; replaces the default space: " + "; ".join(f"{k}={','.join(map(str, v))}" for k, v in SPACE.items()) + ")")
    ap.add_argument("--budget", type=int, default=1600, help="train.budget_samples")
    ap.add_argument("--eval-every", type=int, default=400, help="train.eval_every_samples")
    ap.add_argument("--eval-samples", type=int, default=400, help="data.max_eval_samples (validation and test)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..S-1 per method")
    ap.add_argument("--jobs", type=int, default=1, help="processes replaying (search, seed) runs at once")
    ap.add_argument("--trials", type=int, default=0, help="trials per run (default: the grid size)")
    ap.add_argument("--pruner-warmup", type=int, default=None, metavar="SAMPLES",
                    help="the median pruner's n_warmup_samples for TPE (default: the study's)")
    ap.add_argument("--tolerance", type=float, default=0.005, help="within this of the best known final value")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the table (default: all cores)")
    ap.add_argument("--rebuild", action="store_true", help="retrain the table even if the cached one matches")
    ap.add_argument("--table", type=Path, default=RESULTS / "search_table.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency.json")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    started = machine()  # the load before the table and the replays
    threads = torch.set_num_threads(args.threads) or args.threads if args.threads else use_all_cores()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    dims = SPACE if not args.param else {k: [yaml.safe_load(v) for v in vs.split(",")] for k, vs in (p.split("=", 1) for p in args.param)}
    space: Space = {k: CategoricalParam(type="categorical", choices=v) for k, v in dims.items()}
    overrides = {"train.budget_samples": args.budget, "train.eval_every_samples": args.eval_every,
                 "data.max_eval_samples": args.eval_samples} | parse_set(args.set)
    base = experiment(args.spec, overrides)
    default = (load_study(args.study)[0].sampler, load_study(args.study)[0].pruner) if args.study else (SamplerConfig(), PrunerConfig())
    if args.pruner_warmup is not None:
        default = (default[0], default[1].model_copy(update={"n_warmup_samples": args.pruner_warmup}))
    found = searches(default)
    settings = {"experiment": base.model_dump(mode="json"), "space": {k: p.choices for k, p in space.items()}}
    built = load_or_build(args.table, settings, args.rebuild, space)
    configs: dict[str, Row] = built["configs"]
    with_plans(configs, built["settings"])
    sign = 1 if base.metric.direction == "maximize" else -1
    finals = [r["value"] for r in configs.values() if r["state"] == "complete"]
    if not finals:
        raise SystemExit(f"no configuration in {args.table} completed: nothing to search for")
    best = max(finals, key=lambda v: sign * v)
    target = best - sign * args.tolerance
    n_trials = args.trials or len(configs)
    print_table(configs, base.metric.name)
    hits = [k for k, r in configs.items() if r["state"] == "complete" and sign * (r["value"] - target) >= 0]
    print(f"best known {base.metric.name} {best:.4f}; target {target:.4f} reached by {len(hits)} of {len(configs)} configurations; "
          f"{n_trials} trials per run, seeds 0..{args.seeds - 1}")

    tokens = base.data.max_length if base.task in LM_TASKS else 1
    names = args.methods.split(",") if args.methods else list(found)
    runs = replay_all([(m, s) for m in names for s in range(args.seeds)], args.jobs, (found, configs, space, base, n_trials, target))
    sums = {m: summarize(r) for m, r in runs.items()}
    t = "search"
    out: dict[str, Any] = {
        "machine": started | {"threads": threads},
        f"{t}.spec": str(args.spec.resolve().relative_to(ROOT)) if args.spec.resolve().is_relative_to(ROOT) else str(args.spec),
        f"{t}.experiment": base.model_dump(mode="json"),
        f"{t}.space": settings["space"], f"{t}.grid_size": len(configs),
        f"{t}.budget_samples": base.train.budget_samples, f"{t}.eval_every_samples": base.train.eval_every_samples,
        f"{t}.tokens_per_sample": tokens if tokens > 1 else None,
        f"{t}.metric": base.metric.name, f"{t}.best_known": best, f"{t}.tolerance": args.tolerance, f"{t}.target": target,
        f"{t}.configs_reaching_target": hits, f"{t}.trials_per_run": n_trials, f"{t}.seeds": list(range(args.seeds)),
        f"{t}.searches": {m: found[m].note for m in names},
        f"{t}.default_sampler": default[0].model_dump(), f"{t}.default_pruner": default[1].model_dump(),
        f"{t}.table_file": str(args.table.resolve().relative_to(ROOT)) if args.table.resolve().is_relative_to(ROOT) else str(args.table),
        f"{t}.table_build_s": built["build_s"], f"{t}.table_threads": built["threads"], f"{t}.table_machine": built.get("machine"),
        f"{t}.table": {k: {"params": r["params"], "state": r["state"], "reason": r["reason"], "final": r["value"], "samples": r["samples"],
                           "curve": {e["nominal_samples"]: e["value"] for e in r["evals"]}} for k, r in configs.items()},
    }
    for m in names:
        out |= {f"{t}.{m}.{k}": v for k, v in sums[m].items()}
        out[f"{t}.{m}.runs"] = runs[m]
    out |= {k: v for name in ("default", DEFAULT_CHOICES) if name in sums for k, v in goals(sums, t, name).items()}
    print_summary(sums, out, t, tokens)
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
