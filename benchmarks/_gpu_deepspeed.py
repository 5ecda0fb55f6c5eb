"""The DeepSpeed part of ``benchmarks/gpu.py``: a ZeRO stage 2 trial through the shipped Accelerate config
(``experiments/accelerate/deepspeed_zero2.yaml``) by the CLI, on the GPU (one process) or, with
``--cpu-smoke``, on two CPU processes: stopped by SIGTERM after its first checkpoint, re-run from that
checkpoint to the end, and the same trial without DeepSpeed (plain Accelerate) beside it.

Recorded: each ``lbsearch run``'s exit code and wall time, the step the re-run resumed from, the trial
states and reasons, the noise-scale tag, whether the kept model is a Hugging Face folder
(``config.json``, ``model.safetensors``), and the largest difference of the per-step loss, the pre-clip
gradient norm and the evaluations from the run without DeepSpeed (fp32 on both sides, dropout off).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _bench import ROOT
from _gpu_study import _env

from lbsearch.spec import EVAL, INTERRUPTED, TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR
from lbsearch.study import RESUMED_FROM, RUN_ID
from lbsearch.tracking import NOISE_SCALE

DS_CONFIG = ROOT / "experiments" / "accelerate" / "deepspeed_zero2.yaml"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 64,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
KEYS = (TRAIN_LOSS, TRAIN_GRAD_NORM, TRAIN_LR, EVAL + "loss")


def _study(work: Path, name: str, spec: Path, cpu: bool, deepspeed: bool) -> Path:
    """A one-trial study of a tiny BERT: B 32 (micro-batch 8, so accumulation), 30 steps, clipping at 0.05, a checkpoint every 10 steps."""
    launcher = {"processes": 2 if cpu else 1, "precision": "no", "max_micro_batch": 8, "cpu": cpu,
                **({"accelerate_config": str(DS_CONFIG)} if deepspeed else {})}
    overrides = {"model.source": "random", "model.num_layers": None, "model.pooling": "cls", "model.freeze_embeddings": False,
                 "model.config": TINY, "data.max_length": 64, "data.max_train_samples": 2000, "data.max_eval_samples": 256,
                 "train.budget_samples": 960, "train.eval_every_samples": 320, "train.checkpoint_every_samples": 320,
                 "train.clip_norm": 0.05, "optimizer.lr": 1e-3, **{f"launcher.{k}": v for k, v in launcher.items()}}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "experiment": str(spec), "experiment_overrides": overrides, "n_trials": 1,
                                "search_space": {"train.batch_size": {"type": "categorical", "choices": [32]}},
                                "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "none"}}))
    return path


def _run(study: Path, work: Path, stop_at: str | None = None) -> dict[str, Any]:
    """``lbsearch run`` of ``study``; with ``stop_at``, SIGTERM once a line contains it."""
    cmd, t0, lines = [sys.executable, "-m", "lbsearch.cli", "run", str(study), "--mlruns", str(work / "mlruns")], time.perf_counter(), []
    proc = subprocess.Popen(cmd, cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        lines.append(line)
        if stop_at and stop_at in line:
            proc.send_signal(signal.SIGTERM)
            stop_at = None
    code = proc.wait()
    return {"exit_code": code, "wall_s": time.perf_counter() - t0, "tail": "".join(lines)[-1500:]}


def _trials(name: str, mlruns: Path) -> list[dict[str, Any]]:
    import optuna
    from mlflow.tracking import MlflowClient

    from lbsearch.study import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(f"journal://{(mlruns / 'optuna.journal').resolve()}"))
    client = MlflowClient(f"sqlite:///{(mlruns / 'mlflow.db').resolve()}")
    out = []
    for t in study.trials:
        run = client.get_run(t.user_attrs[RUN_ID])
        kept = mlruns / "models" / name / f"trial-{t.number}"
        out.append({"trial": t.number, "state": t.state.name.lower(), "reason": t.user_attrs.get("reason"), "value": t.value,
                    "resumed_from_step": t.user_attrs.get(RESUMED_FROM["step"]), "noise_scale": run.data.tags.get(NOISE_SCALE),
                    "kept_model_files": sorted(p.name for p in kept.iterdir()) if kept.is_dir() else [],
                    "curves": {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in KEYS}})
    return out


def deepspeed_trial(spec: Path, work: Path, cpu: bool) -> dict[str, Any]:
    """The ZeRO-2 trial stopped and resumed, and the same trial without DeepSpeed; their differences."""
    try:
        import deepspeed
    except ImportError as err:
        return {"state": f"deepspeed not importable: {err} (pip install 'lbsearch[deepspeed]')"}
    ds_study, ddp_study = _study(work, "ds-zero2", spec, cpu, True), _study(work, "ds-baseline", spec, cpu, False)
    out: dict[str, Any] = {"deepspeed": deepspeed.__version__, "config": str(DS_CONFIG.relative_to(ROOT)), "processes": 2 if cpu else 1,
                           "stopped": _run(ds_study, work, stop_at="[trial 0] checkpoint at step 10"), "resumed": _run(ds_study, work),
                           "baseline": _run(ddp_study, work)}
    if any(out[k]["exit_code"] not in (0, 130) for k in ("stopped", "resumed", "baseline")):
        out["state"] = "a run failed"
        return out
    ds, (base,) = _trials("ds-zero2", work / "mlruns"), _trials("ds-baseline", work / "mlruns")
    done = ds[-1]
    out["trials"] = [{k: v for k, v in t.items() if k != "curves"} for t in ds + [base]]
    out["max_abs_diff_from_baseline"] = {k: max((abs(done["curves"][k][s] - base["curves"][k][s]) for s in base["curves"][k]
                                                 if s in done["curves"][k]), default=None) for k in KEYS}
    ok = (len(ds) == 2 and ds[0]["reason"] == INTERRUPTED and done["state"] == "complete" and done["resumed_from_step"]
          and "model.safetensors" in done["kept_model_files"] and str(done["noise_scale"]).startswith("off: DEEPSPEED"))
    out["state"] = "complete" if ok else "not as expected"
    print(f"[deepspeed] {out['state']}: resumed from step {done['resumed_from_step']}, differences from the baseline "
          f"{out['max_abs_diff_from_baseline']}", flush=True)
    return out
