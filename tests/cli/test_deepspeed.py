"""DeepSpeed through the shipped Accelerate config file (experiments/accelerate/deepspeed_zero2.yaml: ZeRO stage 2),
two processes on CPU, by the real CLI and `accelerate launch`: DeepSpeed's CPU accelerator over gloo. A ZeRO-2 trial stopped by
SIGTERM checkpoints through DeepSpeed's engine and resumes; the resumed trial equals the same trial under plain DDP
(per-step loss, pre-clip gradient norm, lr, clipped fraction, evaluations, the kept model's weights), its noise-scale
monitor is off saying why, and a DeepSpeed file that sets what lbsearch decides per trial is a one-line spec error."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, start_cli, wait_for, worker_pids
from optuna.trial import TrialState

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'lbsearch[deepspeed]')")
from safetensors.torch import load_file  # noqa: E402 - after the skip

from lbsearch.spec import EVAL, FOLDER, INTERRUPTED, PREFIX, TEST, TRAIN_CLIP_FRAC, TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR, TRIALS, latest
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import NOISE_SCALE

DS = SPECS.parents[1] / "experiments" / "accelerate" / "deepspeed_zero2.yaml"
# B = 32 = micro-batch 8 x accumulation 2 x 2 processes; clipping at 0.05 acts on most steps; 30 steps, an evaluation every 10
SETS = ["--set=n_trials=1", "--set=search_space.train.batch_size.choices=[32]", "--set=experiment.launcher.processes=2",
        "--set=experiment.launcher.max_micro_batch=8", "--set=experiment.train.clip_norm=0.05",
        "--set=experiment.train.checkpoint_every_samples=320", "--set=experiment.model.config.hidden_dropout_prob=0.0",
        "--set=experiment.model.config.attention_probs_dropout_prob=0.0"]
KEYS = (TRAIN_LOSS, TRAIN_GRAD_NORM, TRAIN_LR, TRAIN_CLIP_FRAC, EVAL + "loss", EVAL + "accuracy", TEST + "accuracy")


def _trial(root, number):
    """(Optuna trial, its MLflow run, {metric key: {samples: value}}, the kept model's weights)."""
    trial = journal_study(root, "tiny-study").get_trials()[number]
    client = mlflow_client(root)
    run = client.get_run(trial.user_attrs[RUN_ID])
    curves = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in KEYS}
    kept = root / "models" / "tiny-study" / f"trial-{number}"
    return trial, run, curves, load_file(kept / "model.safetensors") if kept.is_dir() else None


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    run_cli("run", str(SPECS / "tiny_study.yaml"), *SETS, cwd=cwd, check=True)
    return _trial(cwd / "mlruns", 0)


def test_a_zero2_trial_checkpoints_resumes_and_equals_ddp(tmp_path, ddp):
    spec = str(SPECS / "tiny_study.yaml")
    proc = start_cli(tmp_path, "run", spec, *SETS, f"--set=experiment.launcher.accelerate_config={DS}")
    seen = "".join(wait_for(proc, "[trial 0] checkpoint at step 10 (320 samples)", timeout=600))
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, seen + rest
    assert "gradient noise scale: not measured (DEEPSPEED reduces (and shards) the gradients itself" in seen
    root = tmp_path / "mlruns"
    first = journal_study(root, "tiny-study").get_trials()[0]
    assert first.state == TrialState.FAIL and first.user_attrs["reason"] == INTERRUPTED
    (trial_dir,) = root.glob(f"{TRIALS}/tiny-study/0000-*")
    ckpt = latest(trial_dir / FOLDER)  # the newest: the one written on SIGTERM
    assert (ckpt / "pytorch_model" / "mp_rank_00_model_states.pt").is_file()  # DeepSpeed's engine wrote it (save_checkpoint)
    assert len(list((ckpt / "pytorch_model").glob("*zero_pp_rank_*optim_states.pt"))) == 2  # each rank's optimizer partition

    again = run_cli("run", spec, *SETS, f"--set=experiment.launcher.accelerate_config={DS}", cwd=tmp_path, check=True).stdout
    assert not list(root.glob(f"{TRIALS}/*/*/{FOLDER}/{PREFIX}*"))  # a finished trial leaves no checkpoint
    trial, run, curves, weights = _trial(root, 1)
    base_trial, _, base, base_weights = ddp
    resumed = trial.user_attrs[RESUMED_FROM["step"]]
    assert 10 <= resumed < 30 and f"resumed from checkpoint at step {resumed}" in again
    assert trial.state == TrialState.COMPLETE and trial.params == base_trial.params
    assert run.data.tags[NOISE_SCALE].startswith("off: DEEPSPEED")
    assert "effective batch 32 = micro-batch 8 x accumulation 2 x processes 2" in again and run.data.params["plan.processes"] == "2"
    assert 0.5 < base[TRAIN_CLIP_FRAC][960] < 1  # clipping acted on most steps, not all
    for key in KEYS:  # ZeRO-2's partitioned AdamW and DeepSpeed's clipping: DDP's numbers to float32 rounding
        assert curves[key].keys() == base[key].keys() and len(curves[key]), key
        assert max(abs(curves[key][s] - base[key][s]) for s in base[key]) <= 1e-6, key
    assert weights.keys() == base_weights.keys()
    assert max((weights[k] - base_weights[k]).abs().max().item() for k in weights) <= 1e-5  # the kept model: an HF folder
    assert not worker_pids(tmp_path)


@pytest.mark.parametrize("section, json_file, said", [
    ("  gradient_clipping: 1.0\n", None, "`deepspeed_config.gradient_clipping` must be left out: each trial's comes from `train.clip_norm`, got 1.0"),
    ("  zero_stage: 3\n", None, "`deepspeed_config.zero_stage` must be 0, 1 or 2"),
    ("  deepspeed_config_file: {json}\n", {"optimizer": {"type": "AdamW"}}, "must have no `optimizer` section"),
    ("  deepspeed_config_file: {json}\n", {"gradient_clipping": 1.0}, "`gradient_clipping` in the DeepSpeed config {json} must be `auto` or left out"),
])
def test_a_deepspeed_file_that_sets_what_lbsearch_decides_is_a_spec_error(tmp_path, section, json_file, said):
    ds_json = tmp_path / "ds.json"
    if json_file is not None:
        ds_json.write_text(json.dumps({"zero_optimization": {"stage": 2}, **json_file}))
    body = DS.read_text().replace("  zero_stage: 2\n", "" if "zero_stage" in section or json_file else "  zero_stage: 2\n")
    file = tmp_path / "ds.yaml"
    file.write_text(body.replace("deepspeed_config:\n", "deepspeed_config:\n" + section.format(json=ds_json)))
    proc = cli("train", str(SPECS / "tiny.yaml"), "--set=launcher.processes=2", f"--set=launcher.accelerate_config={file}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lbsearch: error: ") and "launcher.accelerate_config: " in line and line.endswith(f"({file})")
    assert said.format(json=ds_json) in line
    assert not (tmp_path / "mlruns" / TRIALS).exists()
