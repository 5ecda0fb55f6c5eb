"""``lbsearch run --parallel N`` (``lbsearch.orchestrator.parallel``): trials of one study at once on this
host, each on its own cores; a host too small is refused; Ctrl-C stops every trial with a checkpoint and
the same command resumes them."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import SPECS, journal_study, mlflow_client, run_cli, start_cli, wait_for, worker_pids
from optuna.trial import TrialState

from lbsearch.orchestrator.parallel import placements
from lbsearch.spec import INTERRUPTED, RETRY_OF_ATTR, TRIALS, SpecError
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import CPUS, THREADS

STUDY = str(SPECS / "tiny_study.yaml")
CORES = sorted(os.sched_getaffinity(0))


def test_workers_get_disjoint_devices_and_a_host_too_small_is_refused():
    cpu = placements(2, 1, [], [0, 1, 2, 3, 4], "x.yaml")
    assert [p["cores"] for p in cpu] == [[0, 1], [2, 3]] and [p["env"]["OMP_NUM_THREADS"] for p in cpu] == ["2", "2"]
    assert [p["env"]["OMP_NUM_THREADS"] for p in placements(2, 2, [], list(range(8)), "x.yaml")] == ["2", "2"]
    gpu = placements(2, 2, ["0", "1", "2", "3", "5"], [0], "x.yaml")
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in gpu] == ["0,1", "2,3"]
    with pytest.raises(SpecError, match=r"x.yaml: --parallel: 3 trials at once of 2 GPU\(s\) each need 6 GPUs; 5 visible"):
        placements(3, 2, ["0", "1", "2", "3", "5"], [0], "x.yaml")
    with pytest.raises(SpecError, match="need 4 CPU cores"):
        placements(2, 2, [], [0, 1, 2], "x.yaml")


def test_parallel_trials_overlap_on_their_own_cores_with_distinct_params(tmp_path):
    """Four trials, two at a time on this host's cores: runs that overlap in time ran on disjoint core sets with
    as many threads as cores, and no two trials drew the same params."""
    n = 2
    out = run_cli("run", STUDY, "--parallel", str(n), "--set=n_trials=4", "--set=pruner.name=none", cwd=tmp_path, check=True).stdout
    share = len(CORES) // n
    assert f"[worker 0] CPU cores {','.join(map(str, CORES[:share]))}, {share} thread(s) per process" in out
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), out
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    client = mlflow_client(tmp_path / "mlruns")
    runs = [client.get_run(t.user_attrs[RUN_ID]) for t in trials]
    assert {r.data.tags[THREADS] for r in runs} == {str(share)}
    overlapping = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
                   if a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time]
    assert overlapping, [(r.info.start_time, r.info.end_time) for r in runs]
    for a, b in overlapping:
        cores = [set(r.data.tags[CPUS].split(",")) for r in (a, b)]
        assert not cores[0] & cores[1], cores


def test_a_host_with_too_few_cores_is_refused_before_anything_starts(tmp_path):
    proc = run_cli("run", STUDY, "--parallel", str(len(CORES) + 1), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"lbsearch: error: {STUDY}: --parallel: {len(CORES) + 1} trials at once of 1 "
                                                f"process(es) each need {len(CORES) + 1} CPU cores; this host lets this process use {len(CORES)}"]
    assert not (tmp_path / "mlruns" / TRIALS).exists()


def test_ctrl_c_stops_both_trials_with_checkpoints_and_the_next_run_resumes_both(tmp_path):
    args = ["run", STUDY, "--parallel", "2", "--set=n_trials=2", "--set=pruner.name=none", "--set=experiment.train.budget_samples=3200",
            "--set=experiment.train.checkpoint_every_samples=320"]
    proc = start_cli(tmp_path, *args)
    seen = wait_for(proc, "checkpoint at step", timeout=300)
    while sum("checkpoint at step" in line for line in seen) < 2 or len({line.split("]")[0] for line in seen if "checkpoint at step" in line}) < 2:
        seen += wait_for(proc, "checkpoint at step", timeout=120)  # one from each worker
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    first = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    assert [(t.state, t.user_attrs.get("reason")) for t in first] == [(TrialState.FAIL, INTERRUPTED)] * 2, rest
    out = run_cli(*args, cwd=tmp_path, check=True).stdout
    trials = journal_study(tmp_path / "mlruns", "tiny-study").get_trials()
    retries = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[RETRY_OF_ATTR] for t in retries) == [0, 1], out
    assert all(t.user_attrs[RESUMED_FROM["step"]] > 0 for t in retries), out
    assert {tuple(sorted(t.params.items())) for t in retries} == {tuple(sorted(t.params.items())) for t in first}


def test_the_study_field_parallel_is_what_the_flag_overrides(tmp_path):
    """``parallel:`` in the study places workers as ``--parallel`` does (and is refused alike where the host is too
    small); ``--parallel 1`` runs the same study one trial at a time."""
    too_many = f"--set=parallel={len(CORES) + 1}"
    refused = run_cli("run", STUDY, too_many, cwd=tmp_path)
    assert refused.returncode == 2 and "--parallel:" in refused.stderr
    out = run_cli("run", STUDY, too_many, "--parallel", "1", "--set=n_trials=1", "--set=pruner.name=none", cwd=tmp_path, check=True).stdout
    assert "[worker" not in out and "[trial 0] complete" in out


def _orchestrators(cwd) -> list[int]:
    """The ``lbsearch run`` workers started in ``cwd``."""
    pids = []
    for proc in os.listdir("/proc"):
        try:
            if proc.isdigit() and b"lbsearch.cli" in open(f"/proc/{proc}/cmdline", "rb").read() and os.readlink(f"/proc/{proc}/cwd") == str(cwd):
                pids.append(int(proc))
        except OSError:
            continue
    return pids


def test_workers_stop_with_checkpoints_when_their_parent_is_killed(tmp_path):
    """SIGKILL of ``run --parallel``'s own process (no chance to pass anything on): the kernel sends each worker
    SIGTERM, so each stops its trial as interrupted, with a checkpoint, and nothing is left running."""
    args = ["run", STUDY, "--parallel", "2", "--set=n_trials=2", "--set=pruner.name=none", "--set=experiment.train.budget_samples=3200"]
    proc = start_cli(tmp_path, *args)
    seen = wait_for(proc, "samples 320/", timeout=300)
    while len({line.split("]")[0] for line in seen if "samples 320/" in line}) < 2:
        seen += wait_for(proc, "samples 320/", timeout=120)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 120
    while (worker_pids(tmp_path) or _orchestrators(tmp_path)) and time.time() < deadline:
        time.sleep(0.5)
    assert not worker_pids(tmp_path) and not _orchestrators(tmp_path)
    study = journal_study(tmp_path / "mlruns", "tiny-study")
    deadline = time.time() + 60
    while any(t.state == TrialState.RUNNING for t in study.get_trials()) and time.time() < deadline:
        time.sleep(0.5)
    assert [(t.state, t.user_attrs.get("reason")) for t in study.get_trials()] == [(TrialState.FAIL, INTERRUPTED)] * 2
