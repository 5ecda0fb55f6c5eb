"""A tracking server that goes away mid-trial, against a real `mlflow server` (SQLite behind it) that
is killed and started again on the same port.

A short outage costs nothing: the trial trains on, its metric rows wait in the orchestrator and all
reach MLflow when the server is back. An outage past ``LBSEARCH_TRACKING_OUTAGE_S`` stops the trial
with a checkpoint, fails it retryably and stops the study (exit 1, resumable); the next
``lbsearch run`` logs what the outage kept, ends the stopped trial's run and re-runs the trial from
its checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SPECS, journal_study, run_cli, start_cli, wait_for
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lbsearch.orchestrator.launch import free_port
from lbsearch.orchestrator.processes import stop_group
from lbsearch.spec import FOLDER, TRACKING_LOST, TRAIN_LOSS, TRIALS
from lbsearch.study import RUN_ID
from lbsearch.tracking import OUTBOX_FILE, REASON, ROLE, STATE

# one trial of 125 steps (B = 32): the server goes while it trains (it may finish meanwhile: its last calls then wait for MLflow)
LONG = ["--set=n_trials=1", "--set=experiment.train.budget_samples=4000", "--set=experiment.train.eval_every_samples=1000",
        "--set=experiment.train.checkpoint_every_samples=500", "--set=search_space.train.batch_size.choices=[32]"]


class Server:
    """`mlflow server` on 127.0.0.1:``port`` over one SQLite file: stop it and start it again at will."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", (self.root / "server-artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None and time.time() < deadline, "mlflow server did not start"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=2.0)
            self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def _env(limit_s: float) -> dict[str, str]:
    # MLflow's own client retries a refused connection for minutes by default; here it fails at once, so that lbsearch's
    # waiting is what is tried (a slow answer on a busy machine still has 20 s)
    return dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="20", LBSEARCH_TRACKING_OUTAGE_S=str(limit_s))


def _trial_runs(url: str) -> list:
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("tiny-study")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(ROLE) != "parent"]


def _loss_steps(url: str, run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(tracking_uri=url).get_metric_history(run_id, TRAIN_LOSS)]


def test_a_short_outage_costs_nothing_and_every_metric_arrives(tmp_path, server):
    proc = start_cli(tmp_path, "run", str(SPECS / "tiny_study.yaml"), "--tracking-uri", server.url, *LONG, env=_env(600))
    seen = wait_for(proc, "[trial 0] samples")
    server.stop()
    seen += wait_for(proc, "MLflow unreachable", timeout=60)  # said once, at the outage's start
    time.sleep(3)
    server.start()
    out, _ = proc.communicate(timeout=600)
    lines = seen + out.splitlines()
    assert proc.returncode == 0, "\n".join(lines[-30:])
    assert sum("MLflow unreachable" in line for line in lines) == 1
    assert any("MLflow reachable again" in line for line in lines)
    trial = journal_study(tmp_path / "mlruns", "tiny-study").trials[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["steps"] == 125
    (run,) = _trial_runs(server.url)
    assert run.info.status == "FINISHED" and run.data.tags[STATE] == "complete"
    steps = _loss_steps(server.url, run.info.run_id)
    assert len(steps) == len(set(steps)) == 125, f"every step's {TRAIN_LOSS} reached MLflow, once"  # none lost in the outage
    assert not list((tmp_path / "mlruns" / TRIALS).glob(f"*/*/{OUTBOX_FILE}"))


def test_an_outage_past_the_limit_stops_the_trial_with_its_checkpoint_and_the_next_run_resumes_it(tmp_path, server):
    proc = start_cli(tmp_path, "run", str(SPECS / "tiny_study.yaml"), "--tracking-uri", server.url, *LONG, env=_env(4))
    seen = wait_for(proc, "[trial 0] samples")
    server.stop()
    out, _ = proc.communicate(timeout=300)
    lines = seen + out.splitlines()
    assert proc.returncode == 1, "\n".join(lines[-30:])
    assert "unreachable for 4 s: the study stops here" in lines[-1], "\n".join(lines[-60:])
    # mid-trial (it trains on for the limit, then stops) or, on a fast machine, at its end (its last calls wait for the limit)
    assert any("[trial 0] stopped: MLflow unreachable" in line or "[trial 0] MLflow unreachable past the limit at the trial's end" in line
               for line in lines), "\n".join(lines[-30:])
    kept = list((tmp_path / "mlruns" / TRIALS / "tiny-study").glob(f"*/{OUTBOX_FILE}"))
    assert len(kept) == 1 and kept[0].read_text().strip()  # the rows and the run's end that MLflow did not take
    assert list((tmp_path / "mlruns" / TRIALS / "tiny-study").glob(f"*/{FOLDER}/*"))  # the checkpoint written on stop
    study = journal_study(tmp_path / "mlruns", "tiny-study")
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["reason"] == TRACKING_LOST

    server.start()
    again = run_cli("run", str(SPECS / "tiny_study.yaml"), "--tracking-uri", server.url, *LONG, cwd=tmp_path)  # MLflow's own retries
    assert again.returncode == 0, again.stdout[-3000:]
    assert "resumes trial" in again.stdout and "from its checkpoint at step" in again.stdout
    assert not list((tmp_path / "mlruns" / TRIALS).glob(f"*/*/{OUTBOX_FILE}"))  # sent, then removed
    study = journal_study(tmp_path / "mlruns", "tiny-study")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].params == study.trials[0].params and done[0].user_attrs["steps"] == 125
    runs = {r.info.run_id: r for r in _trial_runs(server.url)}
    assert not [r for r in runs.values() if r.info.status == "RUNNING"], "no run left RUNNING"
    stopped = runs[study.trials[0].user_attrs[RUN_ID]]
    assert stopped.info.status == "KILLED" and stopped.data.tags[REASON] == TRACKING_LOST
    resumed = _loss_steps(server.url, done[0].user_attrs[RUN_ID])
    assert sorted(set(resumed)) == sorted(resumed) and len(resumed) == 125, "one curve: the copied steps up to the checkpoint, then the rest"
