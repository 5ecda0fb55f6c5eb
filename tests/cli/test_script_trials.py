"""Your own training code as the trial (``kind: script``): the same search through lbsearch's own loop
and through the plain-Accelerate example script; scripts that ignore the API or crash; a script by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, runs_of, start_cli, tree, wait_for
from optuna.trial import TrialState

from lbsearch.orchestrator import CONFIG_JSON, LABELS_JSON, REPRODUCE_SH, TRIAL_LOG, VERSIONS_JSON
from lbsearch.science import REPORT_HTML
from lbsearch.spec import CONFIG_ATTR, EVAL, INTERRUPTED, PARAMS_ENV, PARAMS_JSON, PROGRESS_SAMPLES, REPORTS, RESULT_JSON, TEST, TRIALS, VAL
from lbsearch.spec.load import load_study
from lbsearch.spec.session import Session
from lbsearch.study import RUN_ID
from lbsearch.study.storage import open_study
from lbsearch.tracking import BEST_TRIAL_TAG, OOM_RETRIES, REASON, REPRODUCED, ROLE, STATE, TRIAL

EXAMPLE = Path(__file__).parents[2] / "examples" / "accelerate" / "train.py"
ENQUEUED = [{"train.batch_size": 32, "optimizer.lr": 3e-3},   # complete
            {"train.batch_size": 32, "optimizer.lr": 1e-7},   # pruned at the first evaluation (320 samples)
            {"train.batch_size": 16, "optimizer.lr": 1e-7}]   # B = 16: pruned at 320 samples too (20 steps)
TWINS = {"builtin": ("tiny_twin_study.yaml", "tiny-twin-study"), "script": ("tiny_script_study.yaml", "tiny-script-study")}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same 3-trial search (same enqueued params, same pruner) through both kinds of trial."""
    out = {}
    for kind, (spec, name) in TWINS.items():
        cwd = tmp_path_factory.mktemp(kind)
        cfg, _ = load_study(SPECS / spec)
        study = open_study(Session(root=cwd / "mlruns"), cfg)
        for params in ENQUEUED:
            study.enqueue_trial(params)
        proc = run_cli("run", str(SPECS / spec), cwd=cwd, check=True)
        out[kind] = (cwd, cwd / "mlruns", name, proc)
    return out


def _trials(twin):
    _, root, name, _ = twin
    return journal_study(root, name).get_trials()


def test_same_trials_and_pruning_at_the_same_sample_counts(twins):
    built, script = _trials(twins["builtin"]), _trials(twins["script"])
    assert len(built) == len(script) == 3
    assert [t.state for t in built] == [t.state for t in script] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert [list(t.intermediate_values) for t in built] == [list(t.intermediate_values) for t in script]
    assert list(script[1].intermediate_values) == [320] and script[1].user_attrs["reason"] == "pruned"
    assert list(script[0].intermediate_values) == [320, 640, 960] and list(script[2].intermediate_values) == [320]
    assert [t.user_attrs["samples"] for t in built] == [t.user_attrs["samples"] for t in script] == [960, 320, 320]


def _shape(twin) -> dict:
    """What the MLflow tree looks like, without the values: runs, nesting, tags, params, artifacts, evaluations."""
    _, root, name, _ = twin
    client = mlflow_client(root)
    runs = runs_of(root, name)
    (parent,) = [r for r in runs if r.data.tags.get(ROLE) == "parent"]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags[TRIAL]))
    keep = ("lbsearch.", "plan.", BEST_TRIAL_TAG, "mlflow.parentRunId")
    return {
        "runs": len(runs),
        "parent_tags": sorted(k for k in parent.data.tags if k.startswith(keep)),
        "parent_artifacts": sorted(a.path for a in client.list_artifacts(parent.info.run_id)),
        "children": [{
            "status": c.info.status,
            "tags": {k: v for k, v in c.data.tags.items() if k.startswith((STATE, REASON, "plan."))},
            "plan_params": {k: v for k, v in c.data.params.items() if k.startswith("plan.")},
            # labels.json is the label mapping of lbsearch's own data; a script loads its own data
            "artifacts": sorted(a.path for a in client.list_artifacts(c.info.run_id) if a.path != LABELS_JSON),
            "eval_loss_steps": [m.step for m in client.get_metric_history(c.info.run_id, EVAL + "loss")],
            "samples": [m.value for m in client.get_metric_history(c.info.run_id, PROGRESS_SAMPLES)][-1:],
            "final": sorted(k for k in c.data.metrics if k in (VAL + "loss", VAL + "accuracy", TEST + "loss", TEST + "accuracy")),
        } for c in children],
    }


def test_the_same_mlflow_tree_shape(twins):
    built, script = _shape(twins["builtin"]), _shape(twins["script"])
    assert built == script
    assert script["runs"] == 4 and [c["status"] for c in script["children"]] == ["FINISHED"] * 3
    assert [c["tags"].get(REASON) for c in script["children"]] == [None, "pruned", "pruned"]
    assert script["children"][0]["eval_loss_steps"] == [320, 640, 960] and script["children"][2]["eval_loss_steps"] == [320]  # samples seen (B = 16: 20 steps)
    assert {CONFIG_JSON, REPRODUCE_SH, VERSIONS_JSON, TRIAL_LOG} <= set(script["children"][0]["artifacts"])


@pytest.mark.parametrize("kind", list(TWINS))
def test_reproduce_is_exact_for_both(twins, kind):
    cwd, root, name, _ = twins[kind]
    proc = run_cli("reproduce", name, "--trial", "0", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproduced: metrics identical" in proc.stdout
    rep = [r for r in runs_of(root, name, "reproduce")]
    assert rep and rep[-1].data.tags[REPRODUCED] == "yes"


def _study(tmp_path: Path, script: str, *, params_as: str = "flags", extra: str = "", n_trials: int = 2,
           values: str = "lr, batch_size") -> Path:
    """A study over a small script that imports no torch (fast), searched over lr."""
    (tmp_path / "train.py").write_text(script)
    (tmp_path / "study.yaml").write_text(f"""name: s
experiment:
  kind: script
  name: s
  script: {{command: train.py, params_as: {params_as}, values: [{values}]{extra}}}
  optimizer: {{lr_scaling: none}}
  train: {{batch_size: 16, budget_samples: 64, eval_every_samples: 16}}
  launcher: {{processes: 1, precision: "no", max_micro_batch: 16}}
  metric: {{name: score}}
n_trials: {n_trials}
parallel: 1
search_space:
  optimizer.lr: {{type: float, low: 1.0e-3, high: 1.0, log: true}}
sampler: {{name: random, seed: 0}}
pruner: {{name: median, n_startup_trials: 0}}
""")
    return tmp_path / "study.yaml"


IGNORES_API = {
    "last-json-line-flags": ("flags", "", "import argparse, json\np = argparse.ArgumentParser(); p.add_argument('--lr', type=float); "
                             "p.add_argument('--batch_size', type=int); a = p.parse_args()\n"
                             "print('training...')\nprint(json.dumps({'score': a.lr * a.batch_size, 'other': 1}))\nprint('bye')\n"),
    "metrics-file-env": ("env", ", metrics_file: out/metrics.json",
                         "import json, os, pathlib\nlr = float(os.environ['LBSEARCH_LR'])\npathlib.Path('out').mkdir()\n"
                         "pathlib.Path('out/metrics.json').write_text(json.dumps({'score': lr * 16}))\n"),
    "last-json-line-json-file": ("json", "", f"import json, os\nv = json.load(open({PARAMS_JSON!r}))\n"
                                 "print(json.dumps({'score': v['lr'] * v['batch_size']}))\n"),
}


@pytest.mark.parametrize("case", list(IGNORES_API))
def test_a_script_that_ignores_the_api_runs_and_is_never_pruned(tmp_path, case):
    params_as, extra, script = IGNORES_API[case]
    spec = _study(tmp_path, script, params_as=params_as, extra=extra, n_trials=3)
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "s").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, proc.stdout
    for t in trials:
        assert t.value == pytest.approx(t.params["optimizer.lr"] * 16)
        assert t.intermediate_values == {}
        assert t.user_attrs["samples"] == 64
    run = mlflow_client(tmp_path / "mlruns").get_run(trials[0].user_attrs[RUN_ID])
    assert run.info.status == "FINISHED" and run.data.metrics[VAL + "score"] == pytest.approx(trials[0].value)
    assert run.data.tags["plan.micro_batch"] == "16" and run.data.params["plan.batch_size"] == "16"


def test_a_crashing_script_fails_its_trial_and_the_study_goes_on(tmp_path):
    script = ("import argparse, json\np = argparse.ArgumentParser(); p.add_argument('--lr', type=float); p.add_argument('--batch_size')\n"
              "a = p.parse_args()\nif a.lr > 0.1:\n    raise ValueError(f'lr {a.lr} is too large for this script')\n"
              "print(json.dumps({'score': a.lr}))\n")
    spec = _study(tmp_path, script, n_trials=2)
    cfg, _ = load_study(spec)
    study = open_study(Session(root=tmp_path / "mlruns"), cfg)
    study.enqueue_trial({"optimizer.lr": 0.5})
    study.enqueue_trial({"optimizer.lr": 0.01})
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "s").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], proc.stdout
    assert trials[0].user_attrs["reason"] == "ValueError: lr 0.5 is too large for this script"
    assert "[trial 0] failed (ValueError: lr 0.5 is too large" in proc.stdout and "[study s] done" in proc.stdout
    client = mlflow_client(tmp_path / "mlruns")
    run = client.get_run(trials[0].user_attrs[RUN_ID])
    assert run.info.status == "FAILED" and run.data.tags[REASON].startswith("ValueError")
    assert "Traceback" in Path(client.download_artifacts(run.info.run_id, TRIAL_LOG, str(tmp_path))).read_text()


def test_the_example_script_by_hand_behaves_as_without_lbsearch(tmp_path):
    """``python train.py`` outside lbsearch: no protocol lines, no files, the script's own output; twice the same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBSEARCH")} | {"HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(EXAMPLE), "--model", "tiny", "--max_train_samples", "400", "--max_eval_samples", "64",
            "--budget_samples", "128", "--eval_every_samples", "64", "--max_length", "32"]
    runs = [subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "@@lbsearch" not in proc.stdout + proc.stderr and "lbsearch trial" not in proc.stdout
    final = [json.loads(p.stdout.strip().splitlines()[-1]) for p in runs]
    assert final[0] == final[1] and set(final[0]) == {"accuracy", "loss", "test_accuracy"}
    assert [l.split(":")[0] for l in runs[0].stdout.splitlines() if l.startswith("samples ")] == ["samples 64", "samples 128"]
    assert tree(tmp_path) == {}


RANKS = """import json, sys
from accelerate import Accelerator
from lbsearch import api

trial = api.current(defaults={"lr": 0.5, "batch_size": 16})
acc = Accelerator()
score = 1.0 if trial.get("lr") > 0.01 else 0.1
for step in range(1, 5):
    trial.report({"score": score}, samples=step * trial.get("batch_size"))
    if trial.should_stop():  # rank 0 holds the Optuna trial; every rank must take its decision
        # one write of the whole line: two ranks printing at once (print writes the text and its newline apart under
        # PYTHONUNBUFFERED) could otherwise run their lines together
        sys.stdout.write(f"rank {acc.process_index} stopped at step {step}: {trial.stop_reason}\\n")
        sys.stdout.flush()
        break
trial.finish()
"""


def test_every_rank_gets_the_same_stop_decision(tmp_path):
    spec = _study(tmp_path, RANKS, params_as="json", n_trials=2)
    spec.write_text(spec.read_text().replace("processes: 1, precision: \"no\", max_micro_batch: 16}", "processes: 2, precision: \"no\", max_micro_batch: 8}")
                    .replace("n_startup_trials: 0", "n_startup_trials: 1"))
    cfg, _ = load_study(spec)
    study = open_study(Session(root=tmp_path / "mlruns"), cfg)
    study.enqueue_trial({"optimizer.lr": 0.5})
    study.enqueue_trial({"optimizer.lr": 0.001})
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "s").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED], proc.stdout
    assert list(trials[1].intermediate_values) == [16]
    assert "[trial 1] rank 0 stopped at step 1: pruned" in proc.stdout and "[trial 1] rank 1 stopped at step 1: pruned" in proc.stdout
    run = mlflow_client(tmp_path / "mlruns").get_run(trials[1].user_attrs[RUN_ID])
    assert run.data.params["plan.processes"] == "2" and run.data.tags["plan.micro_batch"] == "8"


OOM = f"""import json, os, sys
v = json.load(open(os.environ[{PARAMS_ENV!r}]))

class OutOfMemoryError(RuntimeError):  # what torch raises, without importing torch here
    pass

print(f"micro-batch {{v['micro_batch']}} x accumulation {{v['accumulation']}}")
if v["micro_batch"] > 4:
    raise OutOfMemoryError(f"CUDA out of memory at micro-batch {{v['micro_batch']}}")
print(json.dumps({{"score": v["micro_batch"] * v["accumulation"]}}))
"""


def test_a_script_out_of_memory_is_retried_with_a_smaller_micro_batch(tmp_path):
    spec = _study(tmp_path, OOM, params_as="json", n_trials=1, values="micro_batch, accumulation")
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    (trial,) = journal_study(tmp_path / "mlruns", "s").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == 16, proc.stdout  # B unchanged: 4 x 4
    assert "out of memory at micro-batch 16: retrying with micro-batch 8 x accumulation 2" in proc.stdout
    run = mlflow_client(tmp_path / "mlruns").get_run(trial.user_attrs[RUN_ID])
    assert run.data.tags[OOM_RETRIES] == "2" and run.data.tags["plan.micro_batch"] == "4"
    assert json.loads(trial.user_attrs[CONFIG_ATTR])["launcher"]["max_micro_batch"] == 4  # reproduce runs what ran


LADDER = """from lbsearch import api
trial = api.current()
B = trial.get("batch_size")
for step in range(1, trial.get("steps") + 1):
    trial.log({api.TRAIN_LOSS: 1.0 / step}, samples=step * B)
    if step * B % 32 == 0:
        trial.report({"score": step * B / 64 + trial.get("lr") / 10}, samples=step * B)
        if trial.should_stop():
            break
trial.finish()
"""


def test_status_best_and_report_of_a_script_study(tmp_path):
    spec = _study(tmp_path, LADDER, params_as="json", n_trials=4, values="lr, batch_size, steps")
    spec.write_text(spec.read_text().replace("metric: {name: score}", "metric: {name: score, target: 0.5}")
                    .replace("eval_every_samples: 16", "eval_every_samples: 32").replace("n_trials: 4", "n_trials: 4\nbatch_ladder: [16, 32]")
                    .replace("pruner: {name: median, n_startup_trials: 0}", "pruner: {name: none}"))
    run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "s").get_trials()
    assert [t.params["train.batch_size"] for t in trials] == [16, 32, 16, 32]
    assert all(t.state == TrialState.COMPLETE and "samples_to_target" in t.user_attrs for t in trials)
    status = cli("status", "s", cwd=tmp_path, check=True).stdout
    assert status.count("complete") >= 4
    assert "lbsearch reproduce s --trial" in cli("best", "s", cwd=tmp_path, check=True).stdout
    report = cli("report", "s", cwd=tmp_path, check=True).stdout
    assert "4 trials over batch sizes [16, 32]" in report and (tmp_path / "mlruns" / REPORTS / "s" / REPORT_HTML).is_file()


SLOW = """import time
from lbsearch import api
trial = api.current()
for step in range(1, 1000):
    time.sleep(0.2)
    trial.log({api.TRAIN_LOSS: 1.0}, samples=step * 16)
    print(f"step {step}", flush=True)
    if trial.should_stop():
        print(f"stopping: {trial.stop_reason}", flush=True)
        break
trial.finish()
"""


def test_ctrl_c_stops_a_script_trial_within_seconds(tmp_path):
    spec = _study(tmp_path, SLOW, params_as="json", n_trials=1)
    proc = start_cli(tmp_path, "run", str(spec))
    wait_for(proc, "[trial 0] step 3")
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 130 and time.time() - t0 < 10, rest
    (left,) = (tmp_path / "mlruns" / TRIALS / "s").glob(f"0000-*/{RESULT_JSON}")  # the script heard SIGTERM through lbsearch.api
    assert json.loads(left.read_text())["reason"] == INTERRUPTED
    (trial,) = journal_study(tmp_path / "mlruns", "s").get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == INTERRUPTED
    assert mlflow_client(tmp_path / "mlruns").get_run(trial.user_attrs[RUN_ID]).info.status == "KILLED"
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(tmp_path / "train.py"))]


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False
