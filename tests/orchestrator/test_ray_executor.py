"""Trials placed on a Ray cluster (``lbsearch.orchestrator.ray_executor``): a real multi-node cluster on this host
(``ray.cluster_utils.Cluster``: a head without resources and two nodes of 2 CPUs and 2 declared "GPUs" each, which
CPU training ignores), real ``lbsearch run --ray`` drivers, the Optuna journal and MLflow store they leave.

- trials of 1 and 2 GPUs run at once, and no two running trials hold the same GPU of the same node;
- a trial of two machines runs its ranks on two nodes and trains as the same trial on one machine;
- a node removed mid-trial fails the trial as ``worker died``; the retry resumes from its checkpoint on the node left;
- nothing is left RUNNING in Optuna or MLflow; without Ray, ``--ray`` is a one-line error (exit 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, start_cli, wait_for
from optuna.trial import TrialState

from lbsearch.orchestrator import RAY_INSTALL
from lbsearch.orchestrator.ray_executor import _unplaceable
from lbsearch.spec import EVAL, RETRY_OF_ATTR, SPEC_JSON, TRAIN_LOSS, TRIALS, WORKER_DIED, ExecutorConfig, bundles
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import RAY_GPUS, RAY_NODES, REASON, RESUMED_FROM_STEP, THREADS

ray_cluster = pytest.importorskip("ray.cluster_utils", reason="Ray is an optional extra: pip install lbsearch[ray] (scripts/install.sh installs it)")

NODE = {"num_cpus": 2, "num_gpus": 2, "object_store_memory": 80 * 1024**2}
# CPU training on nodes that declare GPUs: each process holds one GPU and one CPU (its 1 thread; a 2-process trial fits a node)
GPU = ["--set=executor.gpus_per_process=1", "--set=executor.cpus_per_process=1"]


@pytest.fixture(scope="module")
def cluster():
    c = ray_cluster.Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "object_store_memory": 80 * 1024**2})
    try:
        for _ in range(2):
            c.add_node(**NODE)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


def _study(tmp: Path, name: str, space: str, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\nexperiment: {SPECS / 'tiny.yaml'}\nn_trials: 2\nsearch_space:\n{space}\nsampler: {{name: grid}}\n"
                    f"pruner: {{name: none}}\nsave_model: none\nparallel: 1\n{extra}")  # one driver, unless --parallel says more
    return path


def _runs(root: Path, study: str) -> list:
    trials = journal_study(root, study).get_trials()
    client = mlflow_client(root)
    return trials, [client.get_run(t.user_attrs[RUN_ID]) for t in trials]


def _nothing_running(root: Path, study: str) -> None:
    trials, _ = _runs(root, study)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def test_bundles_one_per_machine_and_a_cluster_too_small_is_said():
    ray_ex = ExecutorConfig(kind="ray", address="auto", cpus_per_process=1)
    assert bundles({"processes": 2}, ray_ex) == [{"CPU": 2, "GPU": 2}]
    assert bundles({"processes": 4, "num_machines": 2, "cpu": True}, ray_ex) == [{"CPU": 2}, {"CPU": 2}]
    assert bundles({"processes": 2, "num_machines": 2}, ExecutorConfig(kind="ray", cpus_per_process=4, gpus_per_process=0.5)) == [{"CPU": 4, "GPU": 0.5}] * 2
    with pytest.raises(ValueError, match="must be divisible"):
        bundles({"processes": 3, "num_machines": 2}, ray_ex)
    nodes = [{"Alive": True, "Resources": {"CPU": 2, "GPU": 2}}, {"Alive": False, "Resources": {"CPU": 8, "GPU": 8}}]
    assert _unplaceable(nodes, [{"CPU": 1, "GPU": 1}]) is None
    assert _unplaceable(nodes, [{"CPU": 1, "GPU": 1}] * 2) == ("the Ray cluster cannot hold this trial: it needs 2 node(s) with 1 CPU, 1 GPU each, "
                                                              "1 node(s) have that")
    with pytest.raises(ValueError, match="`address` is for `kind: ray`"):
        ExecutorConfig(address="auto")


def test_without_ray_run_ray_is_a_one_line_error(tmp_path):
    """``sys.modules['ray'] = None``: Ray not importable, as where the extra is not installed."""
    code = "import sys; sys.modules['ray'] = None; from lbsearch.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "run", str(SPECS / "tiny_study.yaml"), "--ray", "auto"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"lbsearch: error: {SPECS / 'tiny_study.yaml'}: executor: {RAY_INSTALL}"]
    assert not (tmp_path / "mlruns").exists()


def test_an_address_where_no_ray_cluster_answers_is_a_one_line_error(tmp_path):
    """Ray itself would retry such an address forever; nothing is written."""
    proc = cli("run", str(SPECS / "tiny_study.yaml"), "--ray", "127.0.0.1:1", "--parallel", "1", cwd=tmp_path)  # one driver: its one error line
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lbsearch: error: {SPECS / 'tiny_study.yaml'}: executor.address: no Ray cluster answers at "
                                                "127.0.0.1:1: Connection refused"]
    assert not (tmp_path / "mlruns" / TRIALS).exists() and not (tmp_path / "mlruns" / "optuna.journal").exists()


@pytest.fixture(scope="module")
def sizes(cluster, tmp_path_factory):
    """Two trials at once, of 1 and 2 processes (GPUs), through ``--parallel 2`` drivers on the cluster."""
    tmp = tmp_path_factory.mktemp("sizes")
    study = _study(tmp, "ray-sizes", "  launcher.processes: {type: categorical, choices: [1, 2]}")
    out = run_cli("run", str(study), "--ray", cluster.address, "--parallel", "2", *GPU, cwd=tmp, check=True, timeout=900).stdout
    return tmp / "mlruns", out


def test_trials_of_one_and_two_gpus_run_at_once_on_gpus_of_their_own(sizes):
    root, out = sizes
    trials, runs = _runs(root, "ray-sizes")
    assert sorted(t.params["launcher.processes"] for t in trials) == [1, 2] and all(t.state == TrialState.COMPLETE for t in trials), out
    held = []
    for t, r in zip(trials, runs):
        nodes, gpus = r.data.tags[RAY_NODES].split(","), r.data.tags[RAY_GPUS].split(";")
        assert len(nodes) == 1 and len(gpus[0].split(",")) == t.params["launcher.processes"], r.data.tags
        held.append({(nodes[0], g) for g in gpus[0].split(",")})
        assert r.data.tags[THREADS] == "1"  # executor.cpus_per_process: 1 thread per process
    a, b = runs
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time, "the two trials did not overlap"
    assert not held[0] & held[1], held
    _nothing_running(root, "ray-sizes")


def _final(client, run_id: str, key: str) -> float:
    return client.get_metric_history(run_id, key)[-1].value


def test_a_trial_of_two_machines_runs_on_two_nodes_and_trains_as_on_one(cluster, sizes, tmp_path):
    root, _ = sizes
    study = _study(tmp_path, "ray-machines", "  train.batch_size: {type: categorical, choices: [32]}")
    out = run_cli("run", str(study), "--ray", cluster.address, *GPU, "--set=n_trials=1", "--set=experiment.launcher.processes=2",
                  "--set=experiment.launcher.num_machines=2",
                  cwd=tmp_path, check=True, timeout=900).stdout
    (trial,), (run,) = _runs(tmp_path / "mlruns", "ray-machines")
    assert trial.state == TrialState.COMPLETE, out
    nodes = run.data.tags[RAY_NODES].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2, run.data.tags
    assert run.data.tags[RAY_GPUS].count(";") == 1
    assert "on Ray: machine 1 of 2" in out
    (workdir,) = (tmp_path / "mlruns" / TRIALS / "ray-machines").iterdir()
    sides = [json.loads(f.read_text())["experiment"]["launcher"] for f in (workdir / SPEC_JSON, workdir / "machine-1" / SPEC_JSON)]
    assert [(s["num_machines"], s["machine_rank"]) for s in sides] == [(2, 0), (2, 1)]  # what each node's accelerate launch got
    assert sides[0]["main_process_ip"] == sides[1]["main_process_ip"] and sides[0]["main_process_port"] == sides[1]["main_process_port"]
    one = next(r for t, r in zip(*_runs(root, "ray-sizes")) if t.params["launcher.processes"] == 2)  # the same trial on one machine
    client = mlflow_client(tmp_path / "mlruns")
    ref = mlflow_client(root)
    for key in (TRAIN_LOSS, EVAL + "loss"):
        assert _final(client, run.info.run_id, key) == pytest.approx(_final(ref, one.info.run_id, key), rel=1e-4, abs=1e-5), key
    _nothing_running(tmp_path / "mlruns", "ray-machines")


def test_a_node_removed_mid_trial_fails_it_retryably_and_the_retry_resumes_from_its_checkpoint(cluster, tmp_path):
    study = _study(tmp_path, "ray-node-dies", "  train.batch_size: {type: categorical, choices: [32]}",
                   "max_retries: 1\n")
    proc = start_cli(tmp_path, "run", str(study), "--ray", cluster.address, *GPU, "--set=n_trials=1",
                     "--set=experiment.train.budget_samples=4800", "--set=experiment.train.checkpoint_every_samples=320")
    seen = wait_for(proc, "on Ray: machine 0 of 1 on node", timeout=300)
    node_id = seen[-1].split(" on node ")[1].split()[0]
    seen += wait_for(proc, "checkpoint at step", timeout=300)  # the first, at 320 of 4,800 samples: the node goes long before the end
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node)
    try:
        rest = proc.communicate(timeout=600)[0]
    finally:
        cluster.add_node(**NODE)  # two nodes again for whatever runs after
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    trials, runs = _runs(tmp_path / "mlruns", "ray-node-dies")
    assert [(t.state, t.user_attrs.get("reason")) for t in trials] == [(TrialState.FAIL, WORKER_DIED), (TrialState.COMPLETE, None)], out
    retry, run = trials[1], runs[1]
    assert retry.user_attrs[RETRY_OF_ATTR] == 0 and retry.user_attrs[RESUMED_FROM["step"]] > 0, out
    assert int(run.data.tags[RESUMED_FROM_STEP]) == retry.user_attrs[RESUMED_FROM["step"]]
    assert run.data.tags[RAY_NODES] != node_id  # placed on the node that is left
    assert runs[0].info.status == "KILLED" and runs[0].data.tags[REASON] == WORKER_DIED
    assert "resumed from checkpoint at step" in out
    _nothing_running(tmp_path / "mlruns", "ray-node-dies")
