"""Branching from checkpoints end to end (``lbsearch branch``): a tiny causal decoder (2 layers, random init) on a
slice of the speeches corpus keeps checkpoints at two branch points; its branch study runs k = 1 and k = 2 from
each, and writes the CBS report to its parent MLflow run. The k = 1 branch of the reference's seed is the
reference's own continuation, bit for bit: the same training losses step by step; a branch reproduces exactly."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from conftest import cli, journal_study, mlflow_client, run_cli, settled
from optuna.trial import TrialState

from lbsearch.science import CBS_HTML, CBS_JSON
from lbsearch.science.cbs_report import CBS_FIGURES
from lbsearch.spec import BRANCH_POINTS, BRANCH_TAGS, CBS_CBS, EVAL, FOLDER, INFO, REPORTS, TRAIN_LOSS, TRAIN_LR, TRIALS, checkpoint_name
from lbsearch.study import RUN_ID
from lbsearch.tracking import ROLE
from lbsearch.tracking.tags import STUDY

L, B = 32, 8
STEPS = 16
EXPERIMENT = settled({
    "name": "cbs-ref", "task": "causal_lm", "seed": 0,
    "data": {"source": "speeches", "max_length": L, "tokenizer_vocab": 512, "max_train_samples": 200, "max_eval_samples": 16},
    "model": {"source": "random", "model_type": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": L}},
    "optimizer": {"lr": 3e-3, "decay_embeddings": False},
    "schedule": {"name": "constant", "warmup_tokens": 2 * B * L},  # warmup over before the first branch point
    "train": {"batch_size": B, "budget_tokens": STEPS * B * L, "eval_every_tokens": B * L, "log_every_steps": 1},
    "launcher": {"precision": "no", "max_micro_batch": 4},  # accumulation 2: B_simple is measured
    "branching": {"keep_at": [0.1875, 0.5]},  # steps 3 and 8
})
DELTA = 4 * B * L  # 4 steps at k = 1, 2 at k = 2


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.fixture(scope="module")
def branched(tmp_path_factory, env) -> Path:
    """The reference study (one trial) and its branch study, run once for the module."""
    root = tmp_path_factory.mktemp("branch")
    (root / "ref.yaml").write_text(yaml.safe_dump({"name": "cbs-ref", "experiment": EXPERIMENT, "n_trials": 1, "parallel": 1, "pruner": {"name": "none"}}))
    run_cli("run", "ref.yaml", cwd=root, check=True, env=env)
    proc = run_cli("branch", "cbs-ref", "--trial", "0", "--k", "1,2", "--delta", str(DELTA), "--seeds", "1", "--eps", "0.05", "--rule", "sqrt",
                   "--b-crit", "600", "--parallel", "1", cwd=root, check=True, env=env)  # serial: the baseline of the --parallel test
    (root / "branch.out").write_text(proc.stdout)
    study = journal_study(root / "mlruns", "cbs-ref-branch-0")
    (k2,) = [t.number for t in study.trials if t.params["train.batch_size"] == 2 * B and t.params["branching.source.at_samples"] == 8 * B]
    proc = run_cli("reproduce", "cbs-ref-branch-0", "--trial", str(k2), cwd=root, env=env)
    (root / "reproduce.out").write_text(f"{proc.returncode}\n{proc.stdout}")
    return root


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_reference_keeps_its_branch_points(branched):
    (folder,) = (branched / "mlruns" / TRIALS / "cbs-ref").glob("0000-*")
    kept = sorted(p.name for p in (folder / BRANCH_POINTS).iterdir())
    assert kept == [checkpoint_name(3), checkpoint_name(8)]
    assert json.loads((folder / BRANCH_POINTS / checkpoint_name(3) / INFO).read_text())["samples"] == 3 * B
    assert not (folder / FOLDER).exists() or not list((folder / FOLDER).iterdir())  # a finished trial's own are gone


def test_k1_branch_is_the_reference_continued_bit_for_bit(branched):
    client = mlflow_client(branched / "mlruns")
    study = journal_study(branched / "mlruns", "cbs-ref-branch-0")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4  # 2 points x k in {1, 2} x 1 seed
    ref_run = journal_study(branched / "mlruns", "cbs-ref").trials[0].user_attrs[RUN_ID]
    ref = _history(client, ref_run, TRAIN_LOSS)  # MLflow step: tokens seen
    for t in trials:
        if t.params["train.batch_size"] != B:
            continue
        start = t.params["branching.source.at_samples"]
        mine = _history(client, t.user_attrs[RUN_ID], TRAIN_LOSS)
        assert sorted(mine) == [B * L * i for i in range(1, 5)]
        assert [mine[s] for s in sorted(mine)] == [ref[start * L + s] for s in sorted(mine)]  # exact floats: the same weights, data and RNG


def test_k2_branch_loads_the_checkpoint_and_runs_at_2B_with_sqrt2_lr(branched):
    client = mlflow_client(branched / "mlruns")
    study = journal_study(branched / "mlruns", "cbs-ref-branch-0")
    (t,) = [t for t in study.trials if t.params["train.batch_size"] == 2 * B and t.params["branching.source.at_samples"] == 3 * B]
    run = client.get_run(t.user_attrs[RUN_ID])
    assert run.data.params["plan.batch_size"] == str(2 * B) and run.data.params["plan.steps"] == "2"
    assert float(run.data.params["plan.lr"]) == pytest.approx(3e-3 * math.sqrt(2))
    tags = run.data.tags
    assert tags[BRANCH_TAGS["k"]] == "2" and tags[BRANCH_TAGS["rule"]] == "sqrt" and tags[BRANCH_TAGS["reference"]] == "cbs-ref#0"
    assert tags[BRANCH_TAGS["point_tokens"]] == str(3 * B * L)
    lr = _history(client, run.info.run_id, TRAIN_LR)
    assert list(lr.values()) == pytest.approx([3e-3 * math.sqrt(2)] * 2)  # a constant schedule at the rule's lr, both steps
    ref_run = journal_study(branched / "mlruns", "cbs-ref").trials[0].user_attrs[RUN_ID]
    ref_loss = _history(client, ref_run, EVAL + "loss")[3 * B * L]  # the checkpoint's weights, evaluated
    first = _history(client, run.info.run_id, TRAIN_LOSS)[2 * B * L]
    assert first < math.log(512) and abs(first - ref_loss) < 0.5  # it starts from the trained weights, not from a random init
    # and it trains: 2 steps of accumulation 4 from a checkpoint taken after 6 micro-batches of the reference's accumulation 2
    assert _history(client, run.info.run_id, EVAL + "loss")[DELTA] != ref_loss


def test_cbs_report_written_and_logged(branched):
    out = (branched / "branch.out").read_text()
    assert "[cbs cbs-ref-branch-0] ε 0.05 (set)" in out
    assert f"t {3 * B * L:,}: CBS" in out and f"t {8 * B * L:,}: CBS" in out
    folder = branched / "mlruns" / REPORTS / "cbs-ref-branch-0" / "cbs"
    facts = json.loads((folder / CBS_JSON).read_text())
    assert [p["point"] for p in facts["points"]] == [3 * B * L, 8 * B * L]
    assert all(p["cbs"] in (B * L, 2 * B * L) for p in facts["points"]) and facts["b_crit"] == 600
    client = mlflow_client(branched / "mlruns")
    exp = client.get_experiment_by_name("cbs-ref")  # the reference study's experiment: the branch study nests under the reference trial
    assert client.get_experiment_by_name("cbs-ref-branch-0") is None
    (parent,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(ROLE) == "parent" and r.data.tags.get(STUDY) == "cbs-ref-branch-0"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "cbs_report")}
    assert {f"cbs_report/{CBS_HTML}", *(f"cbs_report/{p}" for p in CBS_FIGURES), f"cbs_report/{CBS_JSON}"} <= names
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, CBS_CBS)) == [3 * B * L, 8 * B * L]
    assert parent.data.tags[BRANCH_TAGS["reference"]] == "cbs-ref#0"
    ref_run = journal_study(branched / "mlruns", "cbs-ref").trials[0].user_attrs[RUN_ID]
    assert client.get_run(ref_run).data.tags[BRANCH_TAGS["study"]] == "cbs-ref-branch-0"  # the reference points to its branches
    assert parent.data.tags["mlflow.parentRunId"] == ref_run and parent.info.experiment_id == client.get_run(ref_run).info.experiment_id
    branches = journal_study(branched / "mlruns", "cbs-ref-branch-0").get_trials()
    assert {client.get_run(t.user_attrs[RUN_ID]).data.tags["mlflow.parentRunId"] for t in branches} == {parent.info.run_id}


def test_a_branch_reproduces_exactly(branched):
    code, out = (branched / "reproduce.out").read_text().split("\n", 1)
    assert code == "0" and "reproduced: metrics identical" in out, out[-2000:]
    assert "branched from cbs-ref#0 at 2,048 tokens" in out  # from the reference's kept checkpoint again


def test_branches_run_parallel_on_placed_workers_and_the_report_is_written_once(branched, env):
    """``--parallel 2``: two workers (one core each) share the same 4 branches under the study lock, each runs its
    own; the CBS report is written once, by the command after both are done, with the serial study's losses."""
    proc = run_cli("branch", "cbs-ref", "--trial", "0", "--k", "1,2", "--delta", str(DELTA), "--seeds", "1", "--eps", "0.05", "--rule", "sqrt",
                   "--name", "cbs-par", "--parallel", "2", cwd=branched, check=True, env=env)
    out = proc.stdout
    assert all(f"[worker {i}] [trial" in out for i in (0, 1)), out[-3000:]
    assert out.count("[cbs cbs-par] ε 0.05 (set)") == 1 and "[worker 0] [cbs" not in out and "[worker 1] [cbs" not in out
    par, serial = (journal_study(branched / "mlruns", name).get_trials() for name in ("cbs-par", "cbs-ref-branch-0"))
    assert sorted(t.state.name for t in par) == ["COMPLETE"] * 4
    key = lambda t: (t.params["branching.source.at_samples"], t.params["train.batch_size"])  # noqa: E731
    losses = {key(t): t.user_attrs["validation_loss"] for t in serial}
    assert {key(t): t.user_attrs["validation_loss"] for t in par} == pytest.approx(losses, rel=1e-4)  # one thread each, not bit for bit
    assert (branched / "mlruns" / REPORTS / "cbs-par" / "cbs" / CBS_JSON).is_file()


@pytest.mark.parametrize("args,field", [(["--k", "2,4"], "--k"), (["--k", "1,2", "--delta", "100"], "--delta"),
                                        (["--k", "1,2", "--delta", str(DELTA), "--rule", "cubic"], "--rule"),
                                        (["--trial", "7"], "--trial")])
def test_bad_branch_request_is_one_line_naming_the_option(branched, args, field):
    argv = ["branch", "cbs-ref", "--trial", "0", "--delta", str(DELTA), *args] if "--trial" not in args else ["branch", "cbs-ref", *args]
    proc = cli(*argv, cwd=branched)  # refused before anything runs: in this process
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and f"{field}:" in proc.stderr, proc.stderr
