"""Against the real PostgreSQL on 127.0.0.1:5432: Optuna RDB storage with heartbeats.

A worker on "another machine" (another LBSEARCH_HOST, so the same-host pid check cannot see it) is
SIGKILLed mid-trial; after the grace period a worker elsewhere fails its trial through Optuna's
heartbeat check, closes its MLflow run and re-runs the same params. Each test uses its own database.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from conftest import LBSEARCH, SPECS, run_cli
from test_study import _client, _wait_for

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
    _wait_for(a, "[trial 0] samples 320")
    a.kill()
    a.wait(timeout=10)
    storage = optuna.storages.RDBStorage(pg_url)
    assert optuna.load_study(study_name="tiny-study", storage=storage).trials[0].state == TrialState.RUNNING
    time.sleep(6)  # past the grace period: no heartbeat from machine-a any more
    run_cli("run", *args, cwd=tmp_path, check=True)
    trials = optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    assert trials[0].state == TrialState.FAIL and "reason" not in trials[0].user_attrs  # failed by the heartbeat check
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    status = run_cli("status", "tiny-study", "--storage", pg_url, cwd=tmp_path, check=True).stdout
    assert "worker died" in status
    client = _client(tmp_path / "mlruns")
    run = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["lbsearch.reason"] == "worker died"
