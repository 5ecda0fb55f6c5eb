"""``lbsearch`` command line. Heavy imports happen inside the commands, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from lbsearch.cli.branch import add_branch, cmd_branch
from lbsearch.spec import CONFIG_JSON, GPU_TOLERANCE, METRIC_ATTR, REPORTS, SpecError, TrackingOutage
from lbsearch.study import ROW_STATES, RUN_ID

UI_HOST = "127.0.0.1"
"""``lbsearch ui``'s default bind address (``--host``): this machine only, on purpose (`tests/cli/test_security.py`; `tests/cli/test_ui_browser.py` opens it).
Another address exposes the UI and its artifacts to the network."""

EPILOG = f"""examples:
  lbsearch run studies/quickstart.yaml             create or resume a study
  lbsearch status quickstart                       table of trials
  lbsearch best quickstart                         best params, metric, MLflow run, reproduce command
  lbsearch reproduce quickstart [--trial N]        re-run a trial from its resolved config; compare
  lbsearch report batch_scaling                    batch-scaling report: B_crit, lr exponent, noise scale
  lbsearch branch lm_ref --trial 0 --delta 8192     the critical batch size over training, by branching from checkpoints
  lbsearch train experiments/rt_minilm.yaml --set train.batch_size=256
  lbsearch predict quickstart "a warm, funny film"   classify texts with the best trial's kept model
  lbsearch compress quickstart                     int8 and pruned variants of the kept model: accuracy, size, latency
  lbsearch ui                                      MLflow UI on {UI_HOST} over mlruns/
  lbsearch join mlruns/trials --machine-rank 1     on node 1: the ranks of node 0's multi-machine trials
state lives under --mlruns (default ./mlruns, or $LBSEARCH_MLRUNS)."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlruns", default=os.environ.get("LBSEARCH_MLRUNS", "mlruns"), help="state folder (default: ./mlruns)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: a journal file under --mlruns)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<mlruns>/mlflow.db)")


SPARSITIES = (0.3, 0.5, 0.7)
"""``lbsearch compress``'s default magnitude-pruning sparsities."""
REPEATS = 50
"""``lbsearch compress``'s default number of timed predict calls of one text per variant."""
UI_PORT = 5000
"""``lbsearch ui``'s default port (``--port``)."""
NO_STANDBY = ("start every trial as a new process (default: where more than one trial is left, one-process trials are forked "
              "from a standby process that has done the imports once; docs/how_a_trial_runs.md)")


PARALLEL = ("run up to N trials at once on this host, each on its own devices: launcher.processes GPUs, or a disjoint set of CPU "
            "cores with as many threads (default: the study's `parallel`; docs/scale_out.md)")


RAY = ("place each trial on the Ray cluster at ADDRESS (`auto`, HOST:6379, ray://HOST:10001) by the GPUs and CPUs it needs: "
       "the study field `executor: {kind: ray}` (docs/scale_out.md; pip install lbsearch[ray])")


def _placement(p: argparse.ArgumentParser) -> None:
    """Where ``run``'s trials go: several at once on this host, and/or on a Ray cluster."""
    p.add_argument("--parallel", type=int, default=None, metavar="N", help=PARALLEL)
    p.add_argument("--ray", default=None, metavar="ADDRESS", help=RAY)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lbsearch", description="Large-batch hyperparameter search: Optuna studies of "
                                 "accelerate-launched trials, tracked in MLflow.", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="create or resume a study and run its trials")
    p.add_argument("study", type=Path, help="study YAML (studies/*.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. n_trials=20 or experiment.train.budget_samples=4000")
    p.add_argument("--max-trials", type=int, default=None, help="run at most this many trials in this process, then stop")
    p.add_argument("--no-standby", dest="standby", action="store_false", help=NO_STANDBY)
    _placement(p)
    _common(p)

    p = sub.add_parser("status", help="table of a study's trials")
    p.add_argument("study", help="study name")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    _common(p)

    p = sub.add_parser("best", help="best trial: params, metric, MLflow run, reproduce command (multi-objective: the Pareto front)")
    p.add_argument("study", help="study name")
    p.add_argument("--pick", default=None, metavar="OBJECTIVE",
                   help="multi-objective: the front trial that is best on this objective (default: the first), e.g. samples_to_target")
    p.add_argument("--json", action="store_true", help="print JSON (the picked trial and, multi-objective, the front)")
    _common(p)

    p = sub.add_parser("reproduce", help="re-run a trial from its saved resolved config and compare metrics")
    p.add_argument("study", help="study name")
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    p.add_argument("--tolerance", type=float, default=None, help=f"allowed |difference| (default: 0 on CPU, {GPU_TOLERANCE} on GPU)")
    _common(p)

    p = sub.add_parser("report", help="batch-scaling report (HTML + PNGs, also logged to the study's parent MLflow run)")
    p.add_argument("study", help="study name")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default: <mlruns>/{REPORTS}/STUDY)")
    p.add_argument("--targets", type=lambda v: [float(x) for x in v.split(",")], default=None,
                   help="language models: the validation-loss targets, comma-separated, e.g. 6.0,5.5,5.0 (default: chosen from the curves)")
    _common(p)

    p = sub.add_parser("train", help="one training run of an experiment, no search")
    p.add_argument("experiment", type=Path, help=f"experiment YAML (experiments/*.yaml) or a trial's {CONFIG_JSON}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. train.batch_size=256")
    _common(p)

    _model_parsers(sub)

    p = sub.add_parser("join", help="on machine ranks >= 1: start this node's ranks of each multi-machine trial (docs/scale_out.md)")
    p.add_argument("folder", type=Path, help="the trials folder of the node-0 run, on a shared filesystem (e.g. mlruns/trials)")
    p.add_argument("--machine-rank", type=int, default=None, help="this node's rank (default: $SLURM_NODEID, else $NODE_RANK)")
    p.add_argument("--trials", type=int, default=None, help="stop after joining this many trials (default: until Ctrl-C)")
    p = sub.add_parser("ui", help=f"MLflow UI over the state folder (binds {UI_HOST})")
    p.add_argument("--host", default=UI_HOST, help="bind address (default %(default)s; anything else exposes the UI)")
    p.add_argument("--port", type=int, default=UI_PORT, help="port (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default %(default)s: one person's viewer starts fastest)")
    _common(p)
    return add_branch(ap, sub, _common)  # lbsearch.cli.branch


def _model_parsers(sub) -> None:
    """The commands that use a study's kept model: ``predict`` (it or a compressed variant) and ``compress``."""
    p = sub.add_parser("predict", help="classify texts with a study's kept model (label names, probabilities)")
    p.add_argument("study", help="study name")
    p.add_argument("text", metavar="FILE_OR_TEXT", help="a text, or a file with one text a line")
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    p.add_argument("--model", default=None, metavar="VERSION", help="a compressed variant instead: its version or alias in <study>-compressed (e.g. int8)")
    _common(p)

    p = sub.add_parser("compress", help="int8-quantize and prune a study's kept best model; evaluate, measure and register each variant",
                       description="The study's kept best model, dynamically quantized to int8 and magnitude-pruned at each sparsity: each "
                       "variant evaluated on validation and test as trials evaluate, measured on this machine (weight bytes, non-zero "
                       "parameters, predict latency and throughput) and registered as a version of <study>-compressed in MLflow, its "
                       "alias its name (int8, prune50, prune50-ft20); then the table with its Pareto front (docs/compress.md).")
    p.add_argument("study", help="study name")
    p.add_argument("--sparsity", type=float, nargs="+", default=list(SPARSITIES), metavar="S",
                   help=f"magnitude-pruning sparsities: the share of all nn.Linear weights set to zero, ranked globally (default: {' '.join(map(str, SPARSITIES))})")
    p.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="also fine-tune each pruned model N steps with its zeros held (the trial's optimizer, lr and B; 0: none; default %(default)s)")
    p.add_argument("--repeats", type=int, default=REPEATS, metavar="N", help="timed predict calls of one text per variant (default %(default)s)")
    p.add_argument("--table", action="store_true", help="only print the measured variants: metric, size, latency, the Pareto front")
    p.add_argument("--verify", default=None, metavar="VERSION", help="re-evaluate a registered variant (version or alias) from its folder; "
                   "exit 0 when its logged metrics are reproduced exactly")
    _common(p)


def _session(args):
    from lbsearch.spec import Session

    return Session(root=Path(args.mlruns).resolve(), storage=args.storage, tracking_uri=args.tracking_uri)


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


class _named:
    """Errors found while loading data or models name the spec file they came from."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if isinstance(err, SpecError) and err.file is None:
            raise SpecError(self.path, err.field, err.message) from None
        return False


def cmd_run(args) -> int:
    from lbsearch.orchestrator import find_teacher, require_ray, run_study
    from lbsearch.spec import load_study, parse_set

    cfg, exp_raw = load_study(args.study, parse_set(args.set))
    if args.ray:
        cfg.executor = cfg.executor.model_copy(update={"kind": "ray", "address": args.ray})  # its per-process CPUs and GPUs kept
    if cfg.executor.kind == "ray":
        require_ray(args.study)  # exit 2 before anything starts
    with _named(args.study):
        find_teacher(_session(args), cfg.experiment, "experiment.distill")  # a teacher that cannot be used: exit 2 before anything is created
    if (args.parallel or cfg.parallel) != 1:
        return _run_parallel(args, cfg, exp_raw, args.parallel or cfg.parallel)
    with _named(args.study):
        return run_study(_session(args), cfg, exp_raw, spec_file=args.study.resolve(), max_trials=args.max_trials,
                         use_standby=args.standby)


def _run_parallel(args, cfg, exp_raw, n: int) -> int:
    """``run --parallel N`` (or the study's ``parallel``): N placed workers of this study (``lbsearch.orchestrator.parallel``)."""
    from lbsearch.orchestrator import run_parallel, without_option
    from lbsearch.spec import experiment_model

    if n < 1:
        raise SpecError(args.study, "--parallel", f"must be at least 1, got {n}")
    if "launcher.processes" in cfg.search_space and cfg.executor.kind == "local":  # Ray places trials of any size
        raise SpecError(args.study, "--parallel", "places trials of one size: `launcher.processes` must not be searched with it")
    launcher = experiment_model(exp_raw).model_validate(exp_raw).launcher.model_dump()
    argv = without_option(args.argv, "--parallel")  # each worker runs its trials one at a time
    return run_parallel([*argv, "--parallel", "1"], n, launcher, str(args.study), local=cfg.executor.kind == "local")


def cmd_train(args) -> int:
    from lbsearch.spec import load_experiment, parse_set

    exp = load_experiment(args.experiment, parse_set(args.set))
    from lbsearch.cli.commands import train_once

    with _named(args.experiment):
        return train_once(_session(args), exp, spec_file=args.experiment.resolve())


def cmd_status(args) -> int:
    """The trials table; its rows and columns are ``lbsearch.study.views`` (``trial_rows``, ``status_columns``), then the budget used."""
    from lbsearch.study import best_trial, budget_line, budget_used, load_existing_study, status_columns, trial_rows, value_columns
    from lbsearch.terminal import print_table

    study = load_existing_study(_session(args), args.study)
    rows = trial_rows(study)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    for r in rows:
        r["mfu"] = None if r["mfu"] is None else f"{r['mfu']:.1%}"
    cols, values = status_columns(study), value_columns(study)
    best = best_trial(study)
    mark = lambda r, c: f"{r[c]:.4g}*" if best and r["trial"] == best.number and values and c == values[0] else r.get(c)  # noqa: E731
    counts = {s: sum(r["state"] == s for r in rows) for s in ROW_STATES}
    caption = " · ".join(f"{k} {v}" for k, v in counts.items() if v) + (f" · best trial {best.number} (*)" if best else "")
    print_table(cols, [[mark(r, c) for c in cols] for r in rows], title=f"study {args.study}", caption=caption)
    if used := budget_used(study):
        print(budget_line(*used))
    return 0


def cmd_best(args) -> int:
    from lbsearch.spec import trial_model_dir
    from lbsearch.study import best_value, is_multi, load_existing_study, objectives, pareto, pick, trial_rows

    study = load_existing_study(_session(args), args.study)
    try:
        best = pick(study, args.pick)
    except ValueError as err:
        raise SpecError(None, "--pick", str(err)) from None
    if best is None:
        print(f"study {args.study}: no complete trial yet", file=sys.stderr)
        return 1
    metric = study.user_attrs.get(METRIC_ATTR, "value")
    front = {t.number for t in pareto(study)} if is_multi(study) else set()
    if args.json:
        rows = {r["trial"]: r for r in trial_rows(study)}
        print(json.dumps({"picked": rows[best.number], "front": [rows[n] for n in sorted(front)]}, indent=1, default=str))
        return 0
    if front:
        names = objectives(study)
        print(f"study {args.study}: Pareto front of {len(front)} trials over {', '.join(names)}")
        _print_rows([r for r in trial_rows(study) if r["trial"] in front], ["trial", *names, "test"], best.number)
        print(f"picked (best {args.pick or names[0]} on the front):")
    print(f"study      {args.study}")
    print(f"trial      {best.number}")
    print(f"validation {metric} {best_value(study, best):.4f}")
    if f"test_{metric}" in best.user_attrs:
        print(f"test       {metric} {best.user_attrs[f'test_{metric}']:.4f}")
    for k, v in best.params.items():
        print(f"param      {k} = {v}")
    print(f"mlflow run {best.user_attrs.get(RUN_ID, '-')}")
    print(f"reproduce  lbsearch reproduce {args.study} --trial {best.number}")
    folder = trial_model_dir(Path(args.mlruns), args.study, best.number)
    if folder.is_dir():
        print(f"model      {folder} (lbsearch predict {args.study} TEXT)")
    return 0


def _print_rows(rows: list[dict], cols: list[str], mark: int | None = None) -> None:
    from lbsearch.study import FACTS  # the row keys that are facts, not params (lbsearch.study.views)

    params = sorted({k for r in rows for k in r} - {"trial", "state", "reason", "value", RUN_ID, *FACTS, *cols})
    cols = cols + params

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    table = [[fmt(r.get(c)) + ("*" if c == "trial" and r["trial"] == mark else "") for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_reproduce(args) -> int:
    from lbsearch.cli.commands import reproduce

    return reproduce(_session(args), args.study, number=args.trial, tolerance=args.tolerance)


def cmd_predict(args) -> int:
    from lbsearch.cli.commands import predict

    return predict(_session(args), args.study, args.text, number=args.trial, model=args.model)


def cmd_compress(args) -> int:
    from lbsearch.cli.compress import compress, compress_table, verify_variant

    if args.verify:
        return verify_variant(_session(args), args.study, args.verify)
    if args.table:
        return compress_table(_session(args), args.study)
    return compress(_session(args), args.study, args.sparsity, args.finetune_steps, args.repeats)


def cmd_report(args) -> int:
    from lbsearch.orchestrator import report

    return report(_session(args), args.study, args.out, args.targets)


def cmd_join(args) -> int:
    from lbsearch.orchestrator import join

    return join(args.folder, args.machine_rank, args.trials)


def cmd_ui(args) -> int:
    import logging

    from lbsearch.spec import default_tracking_uri
    from lbsearch.tracking import experiment_links

    root = Path(args.mlruns)
    uri = args.tracking_uri or default_tracking_uri(root)
    base = f"http://{args.host}:{args.port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", (root / "artifacts").resolve().as_uri()]
    # MLflow's GenAI job runner is a process lbsearch never uses; the user's setting wins
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    print(f"MLflow UI on {base} over {uri}", flush=True)
    print("studies, each opening in the model-training view (in the UI, the GenAI / Model training switch at the top left "
          "picks the view; the browser remembers it):", flush=True)
    print("\n".join(experiment_links(uri, base)), flush=True)
    os.execv(sys.executable, cmd)
    return 0


COMMANDS = {"run": cmd_run, "status": cmd_status, "best": cmd_best, "reproduce": cmd_reproduce, "report": cmd_report, "train": cmd_train, "predict": cmd_predict,
            "compress": cmd_compress, "ui": cmd_ui, "join": cmd_join, "branch": lambda args: cmd_branch(args, _session(args))}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _sigterm_as_interrupt()
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on stdout
    import warnings

    # lbsearch drives heartbeats itself (ask/tell, not Study.optimize): Optuna's notes about it are noise
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
    warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental.*")
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(f"lbsearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lbsearch: interrupted", file=sys.stderr)
        return 130
    except TrackingOutage as err:  # MLflow down past the outage limit: the study stops, resumable
        print(f"lbsearch: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
