"""Faults: one study with checkpoints, tracked on a real `mlflow server`, while its parts fail in turn.

The study (``tests/specs/tiny_study.yaml``: the tiny random-init BERT, B = 32, 20 steps a trial by default, an
evaluation every step so that a killed trial's reach is known to the step, a checkpoint every
``--every`` samples, ``save_model: best``) runs as ``lbsearch run`` subprocesses whose output this
script reads. Each fault is injected into a fresh trial (never a re-run) once it has reported a given
number of samples seen:

1. checkpoint write error: ``LBSEARCH_INJECT_CHECKPOINT_ERROR_AT`` makes the first checkpoint of the
   first trial fail with ENOSPC (a full disk), in a ``lbsearch run --max-trials 1`` of its own;
2. trial process: the trial's process SIGKILLed;
3. standby process: the process trials are forked from SIGKILLed (its forked trial dies with it);
4. orchestrator: ``lbsearch run`` SIGKILLed, then started again once its trial processes are gone;
5. MLflow server, short outage: SIGKILLed, started again after ``--short-outage`` seconds (within
   ``LBSEARCH_TRACKING_OUTAGE_S`` = ``--outage-limit``), in a ``lbsearch run --max-trials 2``;
6. MLflow server, long outage: SIGKILLed two steps into a trial and left down until the study stops
   (exit 1) in a ``lbsearch run`` whose limit is a third of what the fastest trial so far took to
   train the samples left (so that the outage stops its victim mid-trial whatever the machine's load),
   then started again, and ``lbsearch run`` again;
7. MLflow server, long outage at a trial's end: the same, struck one step before the victim's end in
   a ``lbsearch run`` whose limit is ``--end-outage-limit`` (longer than that step, its final
   evaluation and the saving of its model: the trial ends while MLflow is down, and the outage
   passes its limit while the orchestrator waits to send the trial's last calls).

At the end it counts, per fault and in all: trials lost (work that vanished: neither complete nor
pruned, and not re-run to the end), samples re-trained beyond the last checkpoint (per re-run: the
samples the stopped trial had reached, the larger of its last ``progress/samples`` in MLflow and its
last ``samples`` line, less where its re-run resumed; the goal is at most one checkpoint interval),
MLflow runs left RUNNING, stale best models (the registry's ``best`` alias, ``lbsearch best`` and
the model ``lbsearch predict`` serves not naming one trial, or the registry's weights not the served
ones), and metric points missing from MLflow (per complete trial, each per-step metric's points
against the steps it trained, each evaluation metric's against its evaluations).

    python benchmarks/faults.py            # writes benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import optuna
import psutil
from _bench import ROOT, machine, table, write
from mlflow.tracking import MlflowClient
from soak import SPEC, _retrained

from lbsearch.orchestrator.launch import free_port
from lbsearch.spec import (
    BEST_ALIAS,
    EVAL,
    PROGRESS_SAMPLES,
    PROGRESS_STEP,
    RETRY_OF_ATTR,
    RETRYABLE,
    SPEC_ATTR,
    TRAIN_CLIP_FRAC,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
    TRIALS,
    best_uri,
    registered_name,
)
from lbsearch.spec.workdir import KEPT_FILE
from lbsearch.study import RESUMED_FROM, RUN_ID, counted
from lbsearch.tracking import BEST_TAG, OUTBOX_FILE, ROLE

STUDY = "tiny-study"
LBSEARCH = [sys.executable, "-m", "lbsearch.cli"]
PER_STEP = (TRAIN_LOSS, TRAIN_LR, TRAIN_GRAD_NORM, TRAIN_CLIP_FRAC, PROGRESS_SAMPLES, PROGRESS_STEP)
"""Logged once per optimizer step."""
PER_EVAL = (EVAL + "loss", EVAL + "accuracy")
"""Logged once per evaluation (here every step)."""
TEXT = "a warm and funny film"


def sets(args) -> list[str]:
    return [f"--set=n_trials={args.trials}", "--set=search_space.train.batch_size.choices=[32]",
            f"--set=experiment.train.budget_samples={args.budget}", "--set=experiment.train.eval_every_samples=32",
            "--set=experiment.data.max_eval_samples=64", f"--set=experiment.train.checkpoint_every_samples={args.every}",
            "--set=pruner.name=none", "--set=experiment.metric.name=loss", "--set=save_model=best"]


# ----------------------------------------------------------------------------------------------
# The parts that fail: the tracking server and the orchestrator


class Server:
    """`mlflow server` on 127.0.0.1 over one SQLite file; killed and started again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start it; the seconds until it answers."""
        t0 = time.time()
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", (self.root / "server-artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"], cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.time() - t0 < 300:
            if self.proc.poll() is not None:
                raise SystemExit(f"mlflow server exited {self.proc.returncode}: see {self.root / 'server.log'}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return time.time() - t0
            except OSError:
                time.sleep(0.5)
        raise SystemExit("mlflow server did not answer in 300 s")

    def kill(self) -> None:
        """SIGKILL its whole process group (the server and its workers), as the machine losing it would."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None


class Watch:
    """What the orchestrators said, line by line, and per trial: start, samples seen, checkpoints, end."""

    LINE = re.compile(r"^\[trial (\d+)\] (.*)$")

    def __init__(self, log: Path, t0: float) -> None:
        self.log, self.t0, self.lock = open(log, "a"), t0, threading.Lock()  # noqa: SIM115 - open while the study runs
        self.trials: dict[int, dict[str, Any]] = {}
        self.last: dict[str, str] = {}  # each orchestrator's last line

    def t(self) -> float:
        return round(time.time() - self.t0, 1)

    def read(self, proc: subprocess.Popen, name: str) -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.log.write(f"{self.t():7.1f} [{name}] {line}\n")
            self.log.flush()
            self.last[name] = line
            m = self.LINE.match(line)
            if not m:
                if line.startswith(("[study", "lbsearch:")) or "MLflow" in line or "standby" in line:
                    print(f"{self.t():7.1f} [{name}] {line}", flush=True)
                continue
            number, msg = int(m.group(1)), m.group(2)
            with self.lock:
                info = self.trials.setdefault(number, {"samples": 0, "checkpoints": [], "not_written": [], "lines": 0})
                info["lines"] += 1
                if (s := re.match(r"samples (\d+)/", msg)) is not None:
                    info["samples"] = int(s.group(1))
                    info.setdefault("first_samples_s", self.t())
                    continue
                if (c := re.match(r"checkpoint at step (\d+) \((\d+) samples\)", msg)) is not None:
                    info["checkpoints"].append(int(c.group(2)))
                elif (c := re.match(r"checkpoint at step (\d+) not written", msg)) is not None:
                    info["not_written"].append(int(c.group(1)))
                    info["not_written_s"] = self.t()
                elif msg.startswith("start "):
                    info["started_s"] = self.t()
                elif msg.startswith("model saved in "):
                    info["trained_s"] = self.t()  # its training and final evaluation are over
                elif (r := re.match(r"MLflow reachable again after (\d+) s", msg)) is not None:
                    info["mlflow_back_after_s"] = int(r.group(1))
                elif msg.startswith("stopped: MLflow unreachable"):
                    info["stopped_by_outage_s"] = self.t()
                elif (r := re.match(r"resumes trial (\d+) from its checkpoint at step (\d+) \((\d+) samples\)", msg)) is not None:
                    info["resumes"] = int(r.group(1))
                elif re.match(r"(complete|pruned|failed)\b", msg):
                    info["end"], info["ended_s"] = msg, self.t()
            print(f"{self.t():7.1f} [{name}] {line}", flush=True)

    def get(self, number: int) -> dict[str, Any]:
        with self.lock:
            return dict(self.trials.get(number, {}))


class Orchestrator:
    """One ``lbsearch run`` of the study, its output read by ``watch``."""

    def __init__(self, name: str, work: Path, url: str, args, watch: Watch, env: dict[str, str], extra: list[str] = ()) -> None:
        self.name = name
        self.proc = subprocess.Popen([*LBSEARCH, "run", str(SPEC), "--tracking-uri", url, *sets(args), *extra], cwd=work,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.reader = threading.Thread(target=watch.read, args=(self.proc, name), daemon=True)
        self.reader.start()
        self.started_s = watch.t()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(10)
        return code

    def processes(self) -> tuple[psutil.Process | None, list[psutil.Process]]:
        """Its standby process (the worker with ``--standby`` it started) and the trial processes (the
        standby's forked children, or a started worker that is not a standby)."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None, []
        workers = [p for p in kids if _cmdline(p) and "lbsearch.trial.worker" in " ".join(_cmdline(p))]
        standby = next((p for p in workers if "--standby" in _cmdline(p) and p.ppid() == self.proc.pid), None)
        trials = [p for p in workers if p is not standby and (standby is None or p.ppid() == standby.pid or "--standby" not in _cmdline(p))]
        return standby, trials


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def leftover_workers(work: Path) -> list[int]:
    """Trial and standby processes of this study still alive (their spec lies under ``work``)."""
    pids = []
    for p in psutil.process_iter():
        cmd = _cmdline(p)
        if any("lbsearch.trial.worker" in c for c in cmd) and any(str(work) in c for c in cmd) and p.status() != psutil.STATUS_ZOMBIE:
            pids.append(p.pid)
    return pids


# ----------------------------------------------------------------------------------------------
# Injecting the faults


def journal(work: Path) -> optuna.Study:
    storage = optuna.storages.journal.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna.journal")))
    return optuna.load_study(study_name=STUDY, storage=storage)


def await_victim(run: Orchestrator, watch: Watch, work: Path, after: int, samples: int, timeout: float = 900) -> tuple[int, int]:
    """The first fresh trial (not a re-run) numbered above ``after`` once it has reported ``samples``
    seen: its number and the samples its last line reported."""
    deadline, fresh = time.time() + timeout, {}
    while time.time() < deadline and run.alive():
        for number in sorted(n for n in list(watch.trials) if n > after):
            if number not in fresh:
                trial = next((t for t in journal(work).get_trials(deepcopy=False) if t.number == number), None)
                if trial is None:
                    continue
                fresh[number] = RETRY_OF_ATTR not in trial.user_attrs
            info = watch.get(number)
            if fresh[number] and "end" not in info and info.get("samples", 0) >= samples:
                return number, info["samples"]
        time.sleep(0.05)
    raise SystemExit(f"no fresh trial after {after} reached {samples} samples ({run.name} alive: {run.alive()})")


def await_end(watch: Watch, number: int, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "end" in watch.get(number):
            return watch.get(number)["end"]
        time.sleep(0.2)
    return "no end line seen"


def event(fault: str, victim: int, seen: int, watch: Watch, how: str, **more) -> dict[str, Any]:
    e = {"fault": fault, "victim_trial": victim, "at_samples_seen": seen, "at_s": watch.t(), "how": how} | more
    print(f"{e['at_s']:7.1f} [faults] {fault}: trial {victim} at {seen} samples seen: {how}", flush=True)
    return e


def trial_process(run: Orchestrator) -> tuple[psutil.Process | None, psutil.Process]:
    """The standby process and the process that trains (a forked child, or the started worker, not its launcher)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        standby, trials = run.processes()
        leaves = [p for p in trials if not any(c in trials for c in p.children())]
        if leaves:
            return standby, leaves[0]
        time.sleep(0.1)
    raise SystemExit("no trial process found")


def kill_trial(run: Orchestrator, watch: Watch, work: Path, after: int, at: int) -> dict[str, Any]:
    victim, seen = await_victim(run, watch, work, after, at)
    standby, proc = trial_process(run)
    forked = standby is not None and proc.ppid() == standby.pid
    proc.kill()
    e = event("trial process", victim, seen, watch, f"SIGKILL pid {proc.pid} ({'forked from the standby process' if forked else 'started'})")
    e["victim_end_line"] = await_end(watch, victim)
    return e


def kill_standby(run: Orchestrator, watch: Watch, work: Path, after: int, at: int) -> dict[str, Any]:
    victim, seen = await_victim(run, watch, work, after, at)
    standby, proc = trial_process(run)
    if standby is None:
        raise SystemExit(f"trial {victim}: no standby process to kill")
    forked = proc.ppid() == standby.pid
    standby.kill()
    e = event("standby process", victim, seen, watch, f"SIGKILL pid {standby.pid} (the victim {'forked from it' if forked else 'NOT forked from it'})")
    e["victim_end_line"] = await_end(watch, victim)
    return e


def kill_orchestrator(run: Orchestrator, watch: Watch, work: Path, after: int, at: int) -> dict[str, Any]:
    victim, seen = await_victim(run, watch, work, after, at)
    run.proc.kill()
    e = event("orchestrator", victim, seen, watch, f"SIGKILL `lbsearch run` pid {run.proc.pid}")
    run.wait(30)
    t0, left = time.time(), leftover_workers(work)
    while left and time.time() - t0 < 60:
        time.sleep(0.2)
        left = leftover_workers(work)
    e["trial_processes_gone_after_s"] = round(time.time() - t0, 1)
    e["trial_processes_left_after_60_s"] = left
    for pid in left:  # they would race the next run for the trial's checkpoints: ended here, and counted above
        psutil.Process(pid).kill()
    return e


def short_outage(run: Orchestrator, watch: Watch, work: Path, server: Server, after: int, at: int, down_s: float) -> dict[str, Any]:
    victim, seen = await_victim(run, watch, work, after, at)
    t0 = time.time()
    server.kill()
    e = event("MLflow server, short outage", victim, seen, watch, f"SIGKILL the server's process group, started again after {down_s:.0f} s")
    time.sleep(down_s)
    e["server_start_s"] = round(server.start(), 1)
    e["outage_s"] = round(time.time() - t0, 1)
    e["victim_end_line"] = await_end(watch, victim, timeout=600)
    info = watch.get(victim)
    e["victim_trained_to_its_end_during_outage"] = bool(info.get("trained_s", 1e9) < e["at_s"] + e["outage_s"])
    e["victim_said_mlflow_back_after_s"] = info.get("mlflow_back_after_s")  # its outbox retries with a growing pause
    return e


def long_outage(run: Orchestrator, watch: Watch, work: Path, server: Server, after: int, at: int, fault: str) -> dict[str, Any]:
    victim, seen = await_victim(run, watch, work, after, at)
    t0 = time.time()
    server.kill()
    e = event(fault, victim, seen, watch, "SIGKILL the server's process group, left down until the study stops")
    code = run.wait(900)
    e["orchestrator_exit"], e["orchestrator_stopped_after_s"] = code, round(time.time() - t0, 1)
    e["orchestrator_last_line"] = watch.last.get(run.name)
    e["victim_end_line"] = watch.get(victim).get("end", "no end line seen")
    e["victim_trained_to_its_end_during_outage"] = "trained_s" in watch.get(victim)
    e["victim_stopped_mid_trial"] = "stopped_by_outage_s" in watch.get(victim) and "trained_s" not in watch.get(victim)
    e["server_start_s"] = round(server.start(), 1)
    e["outage_s"] = round(time.time() - t0, 1)
    return e


# ----------------------------------------------------------------------------------------------
# Checking: the best model, the trials, the MLflow runs and metrics


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def best_check(work: Path, url: str, label: str, serve: bool) -> dict[str, Any]:
    """Do the registry's ``best`` alias, ``lbsearch best`` and the model ``lbsearch predict`` serves name one trial?"""
    trials = journal(work).get_trials()
    by_run = {t.user_attrs.get(RUN_ID): t.number for t in trials}
    out = subprocess.run([*LBSEARCH, "best", STUDY], check=False, cwd=work, capture_output=True, text=True)
    best = next((int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("trial ")), None)
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        version = client.get_model_version_by_alias(registered_name(STUDY), BEST_ALIAS)
        registry, registry_run = by_run.get(version.run_id), version.run_id
        with tempfile.TemporaryDirectory() as tmp:
            got = Path(mlflow.artifacts.download_artifacts(best_uri(STUDY), dst_path=tmp))
            registry_weights = _sha256(got / "model.safetensors")
    except Exception as err:  # noqa: BLE001 - no alias, or MLflow refused: the check says so
        registry, registry_run, registry_weights = None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", None
    folder = work / "mlruns" / "models" / STUDY / f"trial-{best}"
    served_info = json.loads((folder / KEPT_FILE).read_text()) if (folder / KEPT_FILE).is_file() else {}
    served = [t.number for t in trials if t.state.name == "COMPLETE" and served_info.get("validation")
              and all(t.user_attrs.get(f"validation_{k}") == v for k, v in served_info["validation"].items())]
    exp = client.get_experiment_by_name(STUDY)
    tagged = sorted(by_run.get(r.info.run_id, -1) for r in client.search_runs([exp.experiment_id], f"tags.`{BEST_TAG}` = 'true'"))
    row = {"check": label, "at_s": None, "best": best, "registry_alias_trial": registry, "registry_alias_run": registry_run,
           "predict_serves_trial": served, "registry_weights_equal_served": registry_weights is not None and registry_weights == _sha256(folder / "model.safetensors"),
           "runs_tagged_best": tagged, "kept_folders": sorted(p.name for p in (work / "mlruns" / "models" / STUDY).glob("trial-*"))}
    if serve:
        p = subprocess.run([*LBSEARCH, "predict", STUDY, TEXT], check=False, cwd=work, capture_output=True, text=True)
        row["predict_exit"], row["predict_line"] = p.returncode, (p.stdout.strip().splitlines() or [p.stderr.strip()[-200:]])[-1]
    row["stale"] = int(not (best is not None and registry == best and served == [best] and row["registry_weights_equal_served"]
                            and tagged == [best] and row.get("predict_exit", 0) == 0))
    print(f"[faults] best-model check {label}: {json.dumps(row)}", flush=True)
    return row


def metric_gaps(client: MlflowClient, trial) -> dict[str, int]:
    """Points missing from (and duplicated in) a complete trial's MLflow run: each per-step metric
    against the steps it trained, each evaluation metric against its evaluations (here one a step);
    and the evaluations Optuna has no intermediate value of."""
    run_id, steps = trial.user_attrs[RUN_ID], int(trial.user_attrs["steps"])
    missing, duplicated = {}, {}
    for key in PER_STEP + PER_EVAL:
        history = client.get_metric_history(run_id, key)
        distinct = len({m.step for m in history})
        missing[key], duplicated[key] = max(0, steps - distinct), len(history) - distinct
    return {"missing": sum(missing.values()), "duplicated": sum(duplicated.values()), "missing_by_key": missing, "duplicated_by_key": duplicated,
            "expected": steps * len(PER_STEP + PER_EVAL),
            "optuna_intermediate_missing": max(0, steps - len(trial.intermediate_values))}


def finisher(trials: list, number: int):
    """The trial that finished ``number``'s work: itself, or the end of its chain of re-runs."""
    by_retry = {t.user_attrs[RETRY_OF_ATTR]: t for t in trials if RETRY_OF_ATTR in t.user_attrs}
    t = next(t for t in trials if t.number == number)
    while t.state.name not in ("COMPLETE", "PRUNED") and t.number in by_retry:
        t = by_retry[t.number]
    return t


def reached(client: MlflowClient, trial, seen: int) -> int:
    """Samples a stopped trial had reached: its last ``progress/samples`` in MLflow or its last line, the larger."""
    history = client.get_metric_history(trial.user_attrs[RUN_ID], PROGRESS_SAMPLES) if trial.user_attrs.get(RUN_ID) else []
    return max([int(m.value) for m in history] + [seen])


def account(events: list[dict], checks: list[dict], work: Path, url: str, watch: Watch, every: int) -> tuple[list[dict], dict]:
    """Per fault and in all: trials lost, samples re-trained, runs left RUNNING, stale best models, metric points missing."""
    trials = journal(work).get_trials()
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(STUDY)
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    worker_died = {k["trial"]: k for k in _retrained(client, trials)["soak.retrained_per_kill"]}  # soak's rule: MLflow's reach
    gaps = {t.number: metric_gaps(client, t) for t in trials if t.state.name == "COMPLETE"}
    retry = {t.user_attrs[RETRY_OF_ATTR]: t for t in trials if RETRY_OF_ATTR in t.user_attrs}
    rows = []
    for e in events:
        victim = next(t for t in trials if t.number == e["victim_trial"])
        done = finisher(trials, victim.number)
        chain = [victim] + ([retry[victim.number]] if victim.number in retry else [])
        rerun = retry.get(victim.number)
        row = {"fault": e["fault"], "victim_trial": victim.number, "victim_state": victim.state.name, "victim_reason": victim.user_attrs.get("reason"),
               "at_samples_seen": e["at_samples_seen"], "at_s": e["at_s"], "rerun_trial": rerun.number if rerun else None,
               "finished_by_trial": done.number, "finished_state": done.state.name,
               "trials_lost": int(done.state.name not in ("COMPLETE", "PRUNED")),
               "runs_left_running": sum(runs[t.user_attrs[RUN_ID]].info.status == "RUNNING" for t in chain if t.user_attrs.get(RUN_ID) in runs),
               "metric_points_missing": gaps.get(done.number, {}).get("missing"), "metric_points_duplicated": gaps.get(done.number, {}).get("duplicated"),
               "stale_best_models": next((c["stale"] for c in checks if c["check"] == e["check"]), None), "best_check": e["check"]}
        got = max(reached(client, victim, watch.get(victim.number).get("samples", 0)), worker_died.get(victim.number, {}).get("reached", 0))
        if rerun is not None:
            resumed = int(rerun.user_attrs.get(RESUMED_FROM["samples"], 0))
            row |= {"reached_samples": got, "resumed_from_samples": resumed, "samples_retrained": max(0, got - resumed),
                    "retrained_within_interval": max(0, got - resumed) <= every}
        else:  # finished by itself, or lost with the samples it had trained
            row |= {"reached_samples": got if row["trials_lost"] else None, "resumed_from_samples": None, "samples_retrained": 0,
                    "retrained_within_interval": True, "samples_lost": got if row["trials_lost"] else 0}
        rows.append(row)
    return rows, totals(trials, runs, gaps, rows, checks, work)


def totals(trials: list, runs: dict, gaps: dict, rows: list[dict], checks: list[dict], work: Path) -> dict[str, Any]:
    retried = {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}
    lost = [t.number for t in trials if (t.state.name == "FAIL" and not (t.user_attrs.get("reason") in RETRYABLE and t.number in retried))
            or t.state.name in ("RUNNING", "WAITING")]
    n_trials = json.loads(journal(work).user_attrs[SPEC_ATTR])["study"]["n_trials"]
    roles = {r.info.run_id: r.data.tags.get(ROLE) for r in runs.values()}
    return {
        "optuna_trials": len(trials), "states": {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
        "counted_trials": sum(counted(t, 1) for t in trials), "requested_trials": n_trials,
        "trials_lost": len(lost), "trials_lost_numbers": lost,
        "samples_retrained": sum(r["samples_retrained"] for r in rows),
        "kills_over_one_interval": sum(not r["retrained_within_interval"] for r in rows),
        "runs_left_running": sum(r.info.status == "RUNNING" for r in runs.values()),
        "runs_left_running_by_role": {role: sum(r.info.status == "RUNNING" and roles[i] == role for i, r in runs.items()) for role in set(roles.values())},
        "stale_best_models": checks[-1]["stale"],
        "metric_points_missing": sum(g["missing"] for g in gaps.values()), "metric_points_duplicated": sum(g["duplicated"] for g in gaps.values()),
        "metric_points_duplicated_by_key": {k: sum(g["duplicated_by_key"][k] for g in gaps.values()) for k in PER_STEP + PER_EVAL},
        "metric_points_missing_by_key": {k: sum(g["missing_by_key"][k] for g in gaps.values()) for k in PER_STEP + PER_EVAL},
        "metric_points_expected": sum(g["expected"] for g in gaps.values()), "complete_trials_checked": len(gaps),
        "optuna_intermediate_values_missing": sum(g["optuna_intermediate_missing"] for g in gaps.values()),
        "outbox_files_left": [str(p.relative_to(work)) for p in (work / "mlruns" / TRIALS).glob(f"*/*/{OUTBOX_FILE}")],
        "trial_processes_left": leftover_workers(work),
    }


# ----------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    """The study's state folder, its tracking server, the orchestrators started, the faults injected, the checks made."""

    def __init__(self, args) -> None:
        self.args, self.work, self.t0 = args, Path(tempfile.mkdtemp(prefix="lbsearch-faults-")), time.time()
        self.server, self.watch = Server(self.work), Watch(self.work / "orchestrators.log", self.t0)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3",
                        LBSEARCH_TRACKING_OUTAGE_S=str(args.outage_limit))
        self.runs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []

    def start(self, extra: list[str] = (), env: dict[str, str] | None = None) -> Orchestrator:
        name = f"run {len(self.runs) + 1}"
        o = Orchestrator(name, self.work, self.server.url, self.args, self.watch, self.env | (env or {}), list(extra))
        self.runs.append({"run": name, "started_s": o.started_s, "extra_args": list(extra), "extra_env": env or {}})
        return o

    def stopped(self, o: Orchestrator, code: int | None, serve: bool = False) -> str:
        """``o`` has stopped (``code``): record it and check the best model; the check's label."""
        self.runs[-1] |= {"exit": code, "stopped_s": self.watch.t()}
        label = f"after {o.name}" + (" (the end)" if serve else "")
        c = best_check(self.work, self.server.url, label, serve)
        self.checks.append(c | {"at_s": self.watch.t()})
        return label

    def mid_trial_limit(self, strike: int) -> dict[str, Any]:
        """The outage limit under which an outage struck at ``strike`` samples stops its trial mid-way: a
        third of the time the fastest complete trial so far took to train the samples left after ``strike``
        (the machine's speed varies several-fold with its load)."""
        took = [i["trained_s"] - i["first_samples_s"] for i in self.watch.trials.values() if "trained_s" in i and "first_samples_s" in i and "resumes" not in i]
        left = min(took) * (self.args.budget - strike) / self.args.budget
        return {"limit_s": round(max(0.5, left / 3), 1), "fastest_trial_training_s": round(min(took), 1), "expected_left_after_strike_s": round(left, 1)}

    def last_victim(self) -> int:
        return self.events[-1]["victim_trial"]

    def drive(self) -> None:
        args, e, at, watch, work = self.args, self.args.every, strike_points(self.args), self.watch, self.work
        self.server.start()
        # 1. a checkpoint that cannot be written: a run of one trial whose first checkpoint fails (ENOSPC)
        step = e // 32
        run = self.start(["--max-trials", "1"], {"LBSEARCH_INJECT_CHECKPOINT_ERROR_AT": str(step)})
        code = run.wait(900)
        info = watch.get(0)
        self.events.append({"fault": "checkpoint write error", "victim_trial": 0, "at_samples_seen": e, "at_s": info.get("not_written_s"),
                            "how": f"ENOSPC injected while writing the checkpoint at step {step} ({e} samples; LBSEARCH_INJECT_CHECKPOINT_ERROR_AT={step})",
                            "not_written_steps": info.get("not_written", []), "checkpoints_written_at_samples": info.get("checkpoints", []),
                            "victim_end_line": info.get("end")})
        self.events[-1]["check"] = self.stopped(run, code)
        # 2-4. the trial process, the standby process, the orchestrator
        run, first = self.start(), len(self.events)
        self.events.append(kill_trial(run, watch, work, 0, at["trial process"]))
        self.events.append(kill_standby(run, watch, work, self.last_victim(), at["standby process"]))
        self.events.append(kill_orchestrator(run, watch, work, self.last_victim(), at["orchestrator"]))
        label = self.stopped(run, run.proc.returncode)
        for ev in self.events[first:]:
            ev["check"] = label
        # 5. an outage of the tracking server within the limit: a run of two trials (the re-run of the orchestrator's victim, then a fresh one)
        run = self.start(["--max-trials", "2"])
        self.events.append(short_outage(run, watch, work, self.server, self.last_victim(), at["short outage"], args.short_outage))
        self.events[-1]["check"] = self.stopped(run, run.wait(900))
        # 6. an outage past the limit, mid-trial: the study stops (exit 1); the server comes back, then the study
        limit = self.mid_trial_limit(at["long outage"])
        run = self.start(env={"LBSEARCH_TRACKING_OUTAGE_S": str(limit["limit_s"])})
        self.events.append(long_outage(run, watch, work, self.server, self.last_victim(), at["long outage"], "MLflow server, long outage") | limit)
        self.events[-1]["check"] = self.stopped(run, run.proc.returncode)
        # 7. an outage past the limit that begins one step before a trial's end
        run = self.start(env={"LBSEARCH_TRACKING_OUTAGE_S": str(args.end_outage_limit)})
        self.events.append(long_outage(run, watch, work, self.server, self.last_victim(), at["outage at a trial's end"],
                                       "MLflow server, long outage at a trial's end"))
        self.events[-1]["check"] = self.stopped(run, run.proc.returncode)
        run = self.start()
        self.stopped(run, run.wait(1800), serve=True)

    def close(self) -> None:
        for pid in leftover_workers(self.work):
            psutil.Process(pid).kill()
        self.server.kill()


def strike_points(args) -> dict[str, int]:
    """Where each fault strikes, in samples seen by its victim (multiples of B = 32; checkpoints at every, 2 x every)."""
    e = args.every
    at = {"trial process": e + e // 2, "standby process": 2 * e - 32, "orchestrator": e + 96, "short outage": e + 32, "long outage": 64,
          "outage at a trial's end": args.budget - 32}
    assert 2 * e < args.budget - 32 and all(v % 32 == 0 and v < args.budget for v in at.values()), "each fault strikes between checkpoints, before the end"
    return at


def report(rows: list[dict], total: dict, every: int) -> str:
    def retrained(r: dict) -> str:
        if r.get("samples_lost"):
            return f"0 (not re-run: {r['samples_lost']} trained, lost)"
        if r["resumed_from_samples"] is None:
            return "0 (not re-run)"
        return f"{r['samples_retrained']} ({r['reached_samples']} - {r['resumed_from_samples']})" + ("" if r["retrained_within_interval"] else f" > {every}")

    body = [[r["fault"], r["victim_trial"], r["at_samples_seen"], f"{r['at_s']:.0f}" if r["at_s"] is not None else "-",
             r["rerun_trial"] if r["rerun_trial"] is not None else "-", retrained(r), r["trials_lost"], r["runs_left_running"],
             r["stale_best_models"], "-" if r["metric_points_missing"] is None else r["metric_points_missing"]] for r in rows]
    body.append(["total", "", "", "", "", f"{total['samples_retrained']} ({total['kills_over_one_interval']} over {every})", total["trials_lost"],
                 total["runs_left_running"], total["stale_best_models"], total["metric_points_missing"]])
    return table(["fault", "victim", "at samples", "at s", "re-run", "samples re-trained", "lost", "RUNNING", "stale best", "missing"], body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--every", type=int, default=192, help="checkpoint_every_samples")
    ap.add_argument("--budget", type=int, default=640, help="budget_samples of each trial (B = 32)")
    ap.add_argument("--outage-limit", type=float, default=120.0, help="LBSEARCH_TRACKING_OUTAGE_S of every run but the long outage's")
    ap.add_argument("--end-outage-limit", type=float, default=30.0, help="LBSEARCH_TRACKING_OUTAGE_S of the run of the outage at a trial's end")
    ap.add_argument("--short-outage", type=float, default=8.0, help="seconds the server stays down in the short outage (then its start-up)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults.json")
    args = ap.parse_args()
    setup = machine()
    bench = Bench(args)
    try:
        bench.drive()
        rows, total = account(bench.events, bench.checks, bench.work, bench.server.url, bench.watch, args.every)
    finally:
        bench.close()
    goal = {"trials_lost": total["trials_lost"] == 0, "samples_retrained_within_one_interval_per_kill": total["kills_over_one_interval"] == 0,
            "runs_left_running": total["runs_left_running"] == 0, "stale_best_models": total["stale_best_models"] == 0,
            "metric_points_missing": total["metric_points_missing"] == 0}
    out = {"machine": setup,
           "parameters": {"spec": str(SPEC.relative_to(ROOT)), "sets": sets(args), "checkpoint_every_samples": args.every, "batch_size": 32,
                          "budget_samples": args.budget, "tracking_outage_limit_s": args.outage_limit, "long_outage_run_limit_s": "a third of what the fastest trial before it took to train the samples left after the strike (see its event)",
                          "end_outage_run_limit_s": args.end_outage_limit,
                          "short_outage_down_s": args.short_outage, "strike_at_samples_seen": strike_points(args),
                          "per_step_metrics": PER_STEP, "per_eval_metrics": PER_EVAL},
           "wall_s": round(time.time() - bench.t0, 1), "orchestrator_runs": bench.runs, "events": bench.events, "per_fault": rows,
           "best_model_checks": bench.checks, "totals": total, "goal_met": goal, "all_goals_met": all(goal.values()),
           "state_folder": str(bench.work), "orchestrators_log": str(bench.watch.log.name)}
    print(report(rows, total, args.every))
    print(json.dumps({"totals": total, "goal_met": goal}, indent=1))
    write(out, args.out)
    return 0 if all(goal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
