"""Against the real PostgreSQL on 127.0.0.1:5432: Optuna RDB storage with heartbeats.

A worker on "another machine" (another LBSEARCH_HOST, so the same-host pid check cannot see it) is
SIGKILLed mid-trial; after the grace period a worker elsewhere fails its trial through Optuna's
heartbeat check, closes its MLflow run and re-runs the same params. Each test uses its own database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from conftest import LBSEARCH, SPECS, cli, mlflow_client, run_cli, wait_for
from optuna.trial import TrialState

from lbsearch.spec import EVAL, HOST_ATTR, RETRY_OF_ATTR, WORKER_DIED
from lbsearch.study import RUN_ID
from lbsearch.tracking import CONFIG_JSON, REASON, ROLE, STATE, TRIAL

psycopg2 = pytest.importorskip("psycopg2")


@pytest.fixture
def pg_url():
    name = f"lbsearch_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as err:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {err}")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def test_dead_worker_elsewhere_is_found_by_heartbeat_and_retried(tmp_path, pg_url):
    args = [str(SPECS / "tiny_study.yaml"), "--storage", pg_url, "--set=n_trials=2", "--set=heartbeat_interval=1", "--set=grace_period=4"]
    env = dict(os.environ, LBSEARCH_HOST="machine-a", PYTHONUNBUFFERED="1")
    a = subprocess.Popen([*LBSEARCH, "run", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for(a, "[trial 0] samples 320")
    a.kill()
    a.wait(timeout=10)
    storage = optuna.storages.RDBStorage(pg_url)
    assert optuna.load_study(study_name="tiny-study", storage=storage).trials[0].state == TrialState.RUNNING
    time.sleep(6)  # past the grace period: no heartbeat from machine-a any more
    run_cli("run", *args, cwd=tmp_path, check=True)
    trials = optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    assert trials[0].state == TrialState.FAIL and "reason" not in trials[0].user_attrs  # failed by the heartbeat check
    retry = [t for t in trials if t.user_attrs.get(RETRY_OF_ATTR) == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    status = cli("status", "tiny-study", "--storage", pg_url, cwd=tmp_path, check=True).stdout
    assert WORKER_DIED in status
    client = mlflow_client(tmp_path / "mlruns")
    run = client.get_run(trials[0].user_attrs[RUN_ID])
    assert run.info.status == "KILLED" and run.data.tags[REASON] == WORKER_DIED


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1, backed by its own PostgreSQL database, artifacts in a temp folder."""
    import urllib.request

    from lbsearch.orchestrator.launch import free_port
    from lbsearch.orchestrator.processes import stop_group

    name = f"lbsearch_mlflow_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
         "--artifacts-destination", (tmp_path / "server-artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        stop_group(proc)
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def test_three_machines_share_a_study_through_postgres_and_an_mlflow_server(tmp_path, pg_url, mlflow_server):
    from mlflow.tracking import MlflowClient

    args = [str(SPECS / "tiny_study.yaml"), "--storage", pg_url, "--tracking-uri", mlflow_server, "--set=n_trials=9",
            "--set=heartbeat_interval=1", "--set=grace_period=4", "--set=experiment.train.budget_samples=320",
            "--set=experiment.train.eval_every_samples=160"]
    workers = []
    for i in range(3):  # three "machines": own host name, own state folder
        (tmp_path / f"m{i}").mkdir()
        env = dict(os.environ, LBSEARCH_HOST=f"machine-{i}", PYTHONUNBUFFERED="1")
        workers.append(subprocess.Popen([*LBSEARCH, "run", *args], cwd=tmp_path / f"m{i}", env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    storage = optuna.storages.RDBStorage(pg_url)
    deadline = time.time() + 300
    while time.time() < deadline:  # SIGKILL machine-0 once it is in the middle of a trial
        try:
            trials = optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
        except KeyError:
            trials = []
        mine = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get(HOST_ATTR) == "machine-0" and t.intermediate_values]
        if mine:
            workers[0].kill()
            killed = mine[0].number
            break
        time.sleep(0.2)
    else:
        raise AssertionError("machine-0 never ran a trial")
    outs = [w.communicate(timeout=600)[0] for w in workers[1:]]
    assert [w.returncode for w in workers[1:]] == [0, 0], "\n".join(outs)
    trials = optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 9
    assert trials[killed].state == TrialState.FAIL
    assert [t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs] == [killed]
    assert {t.user_attrs[HOST_ATTR] for t in counted} >= {"machine-1", "machine-2"}
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    assert len(parents) == 1
    assert sorted(int(r.data.tags[TRIAL]) for r in children) == [t.number for t in trials]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status != "RUNNING" for r in children)
    assert client.get_run([r for r in children if r.data.tags[TRIAL] == str(killed)][0].info.run_id).info.status == "KILLED"
    good = next(r for r in children if r.data.tags[STATE] == "complete")
    assert len(client.get_metric_history(good.info.run_id, EVAL + "accuracy")) == 2
    assert CONFIG_JSON in {a.path for a in client.list_artifacts(good.info.run_id)}
