"""Trials as the Accelerate config file and the machines say (real `accelerate launch`, gloo on CPU):
FSDP against DDP, FSDP version 1 refused with its reason, two "machines" on one host, and
gradient checkpointing against none."""

from __future__ import annotations

import subprocess

from conftest import LBSEARCH, SPECS, mlflow_client, run_cli, worker_pids

from lbsearch.spec import EVAL, TRAIN_LOSS, TRIALS
from lbsearch.tracking import NOISE_SCALE, REASON

NO_DROPOUT = ["--set=model.config.hidden_dropout_prob=0.0", "--set=model.config.attention_probs_dropout_prob=0.0"]
FSDP = SPECS / "accelerate_fsdp.yaml"


def _runs(root):
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name("train-tiny").experiment_id])
    return client, sorted(runs, key=lambda r: r.info.start_time)


def _curve(client, run, key=TRAIN_LOSS):
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def test_fsdp_trial_on_cpu_matches_ddp(tmp_path):
    """The FSDP (version 2) config runs as FSDP (the noise-scale hook is switched off, saying why), not as
    DDP, and its loss curve and evaluations match a plain 2-process DDP trial."""
    fsdp = run_cli("train", str(SPECS / "tiny.yaml"), "--set=launcher.processes=2", f"--set=launcher.accelerate_config={FSDP}",
                   *NO_DROPOUT, cwd=tmp_path, check=True).stdout
    assert "gradient noise scale: not measured (FSDP reduces (and shards) the gradients itself" in fsdp
    assert "model saved in" in fsdp  # the shards are gathered for the kept model
    run_cli("train", str(SPECS / "tiny.yaml"), "--set=launcher.processes=2", *NO_DROPOUT, cwd=tmp_path, check=True)
    client, (a, b) = _runs(tmp_path / "mlruns")
    assert a.data.tags[NOISE_SCALE].startswith("off: FSDP") and NOISE_SCALE not in b.data.tags
    assert a.data.params["plan.processes"] == b.data.params["plan.processes"] == "2"
    la, lb = _curve(client, a), _curve(client, b)
    assert len(la) == len(lb) == 30
    assert max(abs(la[s] - lb[s]) for s in la) <= 1e-4
    ea, eb = _curve(client, a, EVAL + "loss"), _curve(client, b, EVAL + "loss")
    assert ea.keys() == eb.keys() and max(abs(ea[s] - eb[s]) for s in ea) <= 1e-4
    assert not worker_pids(tmp_path)


def test_fsdp_version_1_on_cpu_fails_with_the_reason(tmp_path):
    v1 = tmp_path / "fsdp1.yaml"
    v1.write_text(FSDP.read_text().replace("fsdp_version: 2", "fsdp_version: 1").replace("  fsdp_reshard_after_forward: true\n", ""))
    proc = run_cli("train", str(SPECS / "tiny.yaml"), "--set=launcher.processes=2", f"--set=launcher.accelerate_config={v1}",
                   cwd=tmp_path)
    assert proc.returncode == 1
    client, (run,) = _runs(tmp_path / "mlruns")
    assert run.info.status == "FAILED"
    assert "FSDP version 1 cannot run on CPU: Accelerate refuses it" in run.data.tags[REASON]


def test_two_machines_on_one_host(tmp_path):
    """Machine rank 0 is `lbsearch train` (one process); machine rank 1 is `lbsearch join` (one process),
    started separately; they meet on 127.0.0.1 at the port that rank 0 wrote into the trial's spec."""
    (tmp_path / "mlruns" / TRIALS).mkdir(parents=True)
    join = subprocess.Popen([*LBSEARCH, "join", str(tmp_path / "mlruns" / TRIALS), "--machine-rank", "1", "--trials", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = run_cli("train", str(SPECS / "tiny.yaml"), "--set=launcher.processes=2", "--set=launcher.num_machines=2", *NO_DROPOUT,
                      cwd=tmp_path, check=True, timeout=300).stdout
        joined = join.communicate(timeout=120)[0]
    finally:
        join.kill()
    assert join.returncode == 0, joined
    assert "machine rank 1 of 2, node 0 at 127.0.0.1:" in joined and "exited with code 0" in joined
    assert "effective batch 32 = micro-batch 16 x accumulation 1 x processes 2" in out
    client, (run,) = _runs(tmp_path / "mlruns")
    assert run.info.status == "FINISHED" and len(_curve(client, run)) == 30
    assert not worker_pids(tmp_path)


def test_gradient_checkpointing_trains_as_without(tmp_path):
    for on in ("true", "false"):
        run_cli("train", str(SPECS / "tiny.yaml"), f"--set=model.gradient_checkpointing={on}", cwd=tmp_path, check=True)
    client, (a, b) = _runs(tmp_path / "mlruns")
    assert a.data.params["model.gradient_checkpointing"].lower() == "true" and b.data.params["model.gradient_checkpointing"].lower() == "false"
    la, lb = _curve(client, a), _curve(client, b)
    assert len(la) == len(lb) == 30 and la[30 * 32] < la[32]  # the last step against the first, at samples seen (B = 32)
    assert max(abs(la[s] - lb[s]) for s in la) <= 1e-5  # recomputed activations, the same RNG for dropout
