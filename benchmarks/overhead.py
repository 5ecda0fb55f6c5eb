"""Per-trial overhead: from Optuna ask to the first optimizer step, and from the last step to tell.

1. A real study (``lbsearch run``, short trials of fixed B) in a temporary folder. Per trial, the
   timeline comes from what lbsearch already records: Optuna's ``datetime_start`` (ask) and
   ``datetime_complete`` (tell), the MLflow run's start time, the trial's per-step metric
   timestamps, and the worker's ``first_step_s`` and ``wall_s`` (counted from the start of
   ``lbsearch.trial.worker.train``, after its imports). Goal: ask -> first step <= 5 s, on the median and
   on every trial, in both runs (``_stats.verdict``). Run twice: as
   shipped (the later trials forked from the standby process, ``lbsearch.orchestrator.standby``) and with
   ``--no-standby`` (every trial a new process).
2. Where the start-up time goes, in fresh processes: interpreter start, each import, Accelerate's
   launcher (``accelerate launch`` of an empty script), ``Accelerator()``, data from the cache, model
   build, optimizer + prepare, the first step; and ``python -X importtime`` self time per package.
3. A script trial (``kind: script``) beside a built-in trial, in the same run: the same tiny search
   (tiny random-init BERT, the same B, budget and evaluations) through lbsearch's own loop and through
   ``examples/accelerate/train.py``; per trial ask -> first step, last step -> tell and ask -> tell,
   from Optuna's and MLflow's timestamps. Then lbsearch's fixed cost of a script trial: a script that
   only calls ``lbsearch.api`` (ask -> tell) against the same script run by hand.

    python benchmarks/overhead.py                   # 6 trials + 3 start-up breakdowns + part 3: ~6 min on 2 cores
    python benchmarks/overhead.py --script-only     # part 3 only: ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _bench import RESULTS, ROOT, SPEC, experiment, machine, prepared, summary, table, worker_spec, write
from _stats import MET, judged

from lbsearch.spec import SPEC_JSON, TEST, TRAIN_LOSS
from lbsearch.study import RUN_ID

STUDY = """name: overhead
experiment: {spec}
n_trials: {n}
search_space:
  optimizer.lr: {{type: float, low: 1.0e-4, high: 1.0e-3, log: true}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
"""

# What a trial process does before its first step, stage by stage (argv[1]: a worker spec JSON).
STAGES = r"""
import json, sys, time
marks = [("interpreter start", time.time())]
def mark(name): marks.append((name, time.time()))
import numpy; mark("import numpy")
import torch; mark("import torch")
import transformers; mark("import transformers")
import accelerate; mark("import accelerate")
import lbsearch.trial.worker, lbsearch.trial.training; mark("import lbsearch.trial.worker (pydantic, yaml, lbsearch)")
from accelerate import Accelerator; from accelerate.utils import set_seed; from transformers import get_scheduler
from lbsearch.data.cache import load_arrays; from lbsearch.trial.model import build_model; mark("import Accelerator, get_scheduler, lbsearch.trial.model")
import transformers.models.bert.modeling_bert; mark("import modeling_bert (lazy: at model build)")
from lbsearch.spec.config import ExperimentConfig
spec = json.loads(open(sys.argv[1]).read()); exp = ExperimentConfig.model_validate(spec["experiment"])
accelerator = Accelerator(mixed_precision=exp.launcher.precision, cpu=True); mark("Accelerator()")
data = {s: load_arrays(spec["data_path"], s) for s in ("train", "validation", "test")}; mark("data from cache")
set_seed(exp.seed); model = build_model(exp.model, exp.task, spec["labels"]["names"], spec["vocab_size"], spec["pad_id"]); mark("model build (from_pretrained)")
optimizer = lbsearch.trial.training.make_optimizer(exp, model, exp.optimizer.lr)
model, optimizer = accelerator.prepare(model, optimizer); mark("optimizer + prepare")
n = exp.train.batch_size; mb = exp.launcher.max_micro_batch or n
for i in range(0, n, mb):
    batch = lbsearch.trial.batching.pad(data["train"].ids[i:i + mb], spec["pad_id"], "cpu")
    loss = torch.nn.functional.cross_entropy(model(**batch).logits.float(), torch.as_tensor(data["train"].labels[i:i + mb]))
    accelerator.backward(loss / (n // mb))
optimizer.step(); optimizer.zero_grad(); mark("first step")
print("@@marks " + json.dumps(marks), flush=True)
"""


def study_timelines(work: Path, spec: Path, n_trials: int, sets: list[str], name: str = "overhead") -> list[dict[str, float]]:
    """Run a study; per trial, seconds between the events lbsearch records."""
    from mlflow.tracking import MlflowClient

    from lbsearch.spec.session import Session, default_tracking_uri
    from lbsearch.study.storage import load_existing_study

    (work / "study.yaml").write_text(STUDY.format(spec=spec.resolve(), n=n_trials))
    cmd = [sys.executable, "-m", "lbsearch.cli", "run", str(work / "study.yaml"), "--mlruns", str(work / "mlruns"), f"--set=name={name}", *sets]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    study = load_existing_study(Session(root=work / "mlruns"), name)
    client = MlflowClient(tracking_uri=default_tracking_uri(work / "mlruns"))
    rows = []
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    for t, nxt in zip(trials, trials[1:] + [None]):
        run = client.get_run(t.user_attrs[RUN_ID])
        steps = sorted(client.get_metric_history(run.info.run_id, TRAIN_LOSS), key=lambda m: m.step)
        test = client.get_metric_history(run.info.run_id, TEST + "accuracy")
        ask, tell = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
        first, last = steps[0].timestamp / 1000, steps[-1].timestamp / 1000
        start = first - t.user_attrs["first_step_s"]  # lbsearch.trial.worker.train began (imports done)
        end = start + t.user_attrs["wall_s"]  # train() returned (final validation and test done)
        step_s = statistics.median(b.timestamp / 1000 - a.timestamp / 1000 for a, b in zip(steps, steps[1:])) if len(steps) > 1 else 0.0
        rows.append({
            "ask_to_first_step_s": first - ask,
            "ask_to_mlflow_run_s": run.info.start_time / 1000 - ask,
            "mlflow_run_to_train_start_s": start - run.info.start_time / 1000,
            "train_start_to_first_step_s": first - start,
            "median_step_s": step_s,
            "last_step_to_tell_s": tell - last,
            "final_eval_s": (test[0].timestamp / 1000 if test else end) - last,
            "train_end_to_tell_s": tell - end,
            **({"tell_to_next_ask_s": nxt.datetime_start.timestamp() - tell} if nxt else {}),
        })
    return rows


def stages(work: Path, spec_file: Path) -> list[tuple[str, float]]:
    """Seconds per start-up stage of a trial process, in a fresh interpreter."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", STAGES, str(spec_file)], cwd=work, capture_output=True, text=True)
    t_exit = time.time()
    line = next((l for l in proc.stdout.splitlines() if l.startswith("@@marks ")), None)
    if proc.returncode or line is None:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    marks = json.loads(line[len("@@marks "):])
    out = [("process start -> interpreter ready", marks[0][1] - t0)]
    out += [(name, t - prev) for (_, prev), (name, t) in zip(marks, marks[1:])]
    return out + [("exit", t_exit - marks[-1][1])]


def launcher(work: Path, exp: dict[str, Any]) -> dict[str, float]:
    """Starting an empty script the way a trial starts: ``accelerate launch`` (the CLI) and lbsearch's
    trial command (for one process: Accelerate's simple launcher prepared in the orchestrator)."""
    from lbsearch.orchestrator.launch import launch_command, trial_command

    noop = work / "noop.py"
    noop.write_text("import time; print('@@t', time.time(), flush=True)\n")
    spec = work / "unused.json"
    trial, env = trial_command(exp, spec, dict(os.environ))
    out = {}
    # both end in `-m lbsearch.trial.worker spec.json`: run the empty script instead
    for name, cmd, e in (("accelerate launch CLI", launch_command(exp, spec), None), ("lbsearch trial command", trial, env)):
        t0 = time.time()
        proc = subprocess.run(cmd[:-3] + [str(noop)], cwd=work, capture_output=True, text=True, env=e)
        t_exit = time.time()
        started = float(next(l for l in proc.stdout.splitlines() if l.startswith("@@t")).split()[1])
        out[f"{name}: start to script start_s"] = started - t0
        out[f"{name}: script end to exit_s"] = t_exit - started
    return out


def import_profile(work: Path, top: int) -> list[dict[str, Any]]:
    """``python -X importtime`` of the trial process's imports: self time summed per top-level package."""
    code = ("import lbsearch.trial.worker; from accelerate import Accelerator; from transformers import get_scheduler; "
            "import lbsearch.trial.model, lbsearch.data.cache; import transformers.models.bert.modeling_bert")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=work, capture_output=True, text=True)
    per: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            self_us, _, name = (p.strip() for p in line.removeprefix("import time:").split("|"))
            per[name.split(".")[0]] += int(self_us) / 1e6
    total = sum(per.values())
    return [{"package": k, "self_s": v, "share": v / total} for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]]


TINY = ROOT / "tests" / "specs"
KIND_STUDY = """name: {name}
experiment: {spec}
n_trials: {n}
search_space:
  optimizer.lr: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
"""
NOOP = """from lbsearch import api
trial = api.current()
trial.report({"loss": 0.5}, samples=trial.get("budget_samples", 960))
trial.finish()
"""


def _kind_rows(work: Path, name: str) -> list[dict[str, float]]:
    """Per trial of a finished study: seconds between ask, the first and last logged step, and tell."""
    from mlflow.tracking import MlflowClient

    from lbsearch.spec.session import Session, default_tracking_uri
    from lbsearch.study.storage import load_existing_study

    study = load_existing_study(Session(root=work / "mlruns"), name)
    client = MlflowClient(tracking_uri=default_tracking_uri(work / "mlruns"))
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        ask, tell = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
        steps = sorted(client.get_metric_history(t.user_attrs[RUN_ID], TRAIN_LOSS), key=lambda m: m.step)
        row = {"ask_to_tell_s": tell - ask}
        if steps:
            row |= {"ask_to_first_step_s": steps[0].timestamp / 1000 - ask, "last_step_to_tell_s": tell - steps[-1].timestamp / 1000,
                    "steps_s": (steps[-1].timestamp - steps[0].timestamp) / 1000}
        rows.append(row)
    return rows


def _run_study(work: Path, name: str, spec: Path, n: int, extra: str = "") -> list[dict[str, float]]:
    (work / f"{name}.yaml").write_text(KIND_STUDY.format(name=name, spec=spec, n=n) + extra)
    cmd = [sys.executable, "-m", "lbsearch.cli", "run", str(work / f"{name}.yaml"), "--mlruns", str(work / "mlruns"), "--no-standby"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return _kind_rows(work, name)


def script_vs_builtin(work: Path, n_trials: int) -> dict[str, Any]:
    """Part 3: the same tiny search as built-in trials and as script trials; the fixed cost of a script trial.
    Every trial a new process (``--no-standby``): a script trial is never forked from a standby process."""
    out: dict[str, Any] = {}
    for kind, spec in (("builtin", TINY / "tiny.yaml"), ("script", TINY / "tiny_script.yaml")):
        extra = "experiment_overrides: {metric.name: loss}\n" if kind == "builtin" else ""
        rows = _run_study(work, f"overhead-{kind}", spec, n_trials, extra)
        out[kind] = {k: summary([r[k] for r in rows if k in r]) for k in rows[0]}
    noop = work / "noop.py"
    noop.write_text(NOOP)
    (work / "noop.yaml").write_text(f"""kind: script
name: noop
script: {{command: {noop}, values: []}}
train: {{batch_size: 32, budget_samples: 960, eval_every_samples: 960}}
launcher: {{precision: "no", max_micro_batch: 16}}
metric: {{name: loss}}
""")
    out["noop_script"] = {k: summary([r[k] for r in _run_study(work, "overhead-noop", work / "noop.yaml", n_trials)])
                          for k in ("ask_to_tell_s",)}
    by_hand = []
    for _ in range(n_trials):
        t0 = time.time()
        subprocess.run([sys.executable, str(noop)], cwd=work, capture_output=True, text=True, check=True)
        by_hand.append(time.time() - t0)
    out["noop_by_hand_s"] = summary(by_hand)
    return out


def print_script_vs_builtin(res: dict[str, Any]) -> None:
    keys = ["ask_to_first_step_s", "steps_s", "last_step_to_tell_s", "ask_to_tell_s"]
    print(table(["per trial, median (tiny BERT, same search)", "built-in trial", "script trial (examples/accelerate)"],
                [[k, res["builtin"][k]["median"], res["script"][k]["median"]] for k in keys]), flush=True)
    print(f"a script that only calls lbsearch.api: ask -> tell {res['noop_script']['ask_to_tell_s']['median']:.2f} s; "
          f"the same script by hand {res['noop_by_hand_s']['median']:.2f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field, e.g. train.noise_scale=false")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process start-up breakdowns")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", type=int, default=320, help="samples per trial")
    ap.add_argument("--eval-samples", type=int, default=256, help="data.max_eval_samples (validation and test)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None, help="default results/overhead.json (results/overhead_script.json with --script-only)")
    ap.add_argument("--script-only", action="store_true", help="only part 3: script trials beside built-in trials")
    ap.add_argument("--script-trials", type=int, default=4, help="trials of each kind in part 3")
    args = ap.parse_args()
    if args.script_only:
        work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
        res = {"machine": machine(), "overhead.script_vs_builtin": script_vs_builtin(work, args.script_trials)}
        print_script_vs_builtin(res["overhead.script_vs_builtin"])
        write(res, args.out or RESULTS / "overhead_script.json")
        shutil.rmtree(work, ignore_errors=True)
        return 0
    args.out = args.out or RESULTS / "overhead.json"
    overrides = {"train.batch_size": args.batch_size, "train.budget_samples": args.budget,
                 "train.eval_every_samples": args.budget, "data.max_eval_samples": args.eval_samples}
    exp = experiment(args.spec, overrides, args.set)  # checks the overrides before the study starts
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    out: dict[str, Any] = {"machine": machine(), "overhead.experiment": exp.model_dump(mode="json")}
    o = "overhead"

    sets = [f"--set=experiment.{k}={v}" for k, v in overrides.items()] + [f"--set=experiment.{item}" for item in args.set or []]
    rows = study_timelines(work, args.spec, args.trials, sets)
    for key in rows[0] | rows[-1]:
        out[f"{o}.{key}"] = summary([r[key] for r in rows if key in r])
    # every trial a new process (`--no-standby`), as the first trial of a study always is
    launched = study_timelines(work, args.spec, args.trials, sets + ["--no-standby"], name="overhead-launched")
    for key in launched[0] | launched[-1]:
        out[f"{o}_no_standby.{key}"] = summary([r[key] for r in launched if key in r])
    # the goal, judged on the median and on every trial, with and without the standby process
    out[f"{o}.goal_ask_to_first_step_s"] = 5.0
    for variant in (o, f"{o}_no_standby"):
        out[f"{variant}.verdict"] = judged(out[f"{variant}.ask_to_first_step_s"]["runs"], 5.0, at_most=True)["verdict"]
    out[f"{o}.goal_met"] = out[f"{o}.verdict"] == MET and out[f"{o}_no_standby.verdict"] == MET
    keys = list(rows[0] | rows[-1])
    print(table([f"per trial (median of {len(rows)})", "s, as shipped", "s, --no-standby"],
                [[k, out[f"{o}.{k}"]["median"], out.get(f"{o}_no_standby.{k}", {}).get("median", "-")] for k in keys]), flush=True)

    data = prepared(exp, work / "mlruns")  # the study's cache: already there
    spec_file = work / SPEC_JSON
    spec_file.write_text(worker_spec(exp, data).model_dump_json())
    per_stage: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        for name, s in stages(work, spec_file):
            per_stage[name].append(s)
        for name, s in launcher(work, exp.model_dump(mode="json")).items():
            per_stage[name].append(s)
    out[f"{o}.startup_stages_s"] = {k: summary(v) for k, v in per_stage.items()}
    out[f"{o}.import_self_s_by_package"] = import_profile(work, args.top)
    print(table(["trial process start-up, fresh process (median)", "s"], [[k, statistics.median(v)] for k, v in per_stage.items()]))
    print(table(["imports: self time by package", "s", "share"],
                [[r["package"], r["self_s"], f"{100 * r['share']:.0f}%"] for r in out[f"{o}.import_self_s_by_package"]]))
    print(f"ask -> first step: {out[f'{o}.ask_to_first_step_s']['median']:.2f} s with the standby process (goal <= 5 s: {out[f'{o}.verdict']}), "
          f"{out[f'{o}_no_standby.ask_to_first_step_s']['median']:.2f} s without ({out[f'{o}_no_standby.verdict']}); "
          f"last step -> tell: {out[f'{o}.last_step_to_tell_s']['median']:.2f} s, of which final evaluation {out[f'{o}.final_eval_s']['median']:.2f} s")
    out[f"{o}.script_vs_builtin"] = res = script_vs_builtin(work, args.script_trials)
    print_script_vs_builtin(res)
    write(out, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
