"""The batch-scaling report of a real (tiny) language-model study: B and B_simple in tokens, B_crit at
several loss targets with bootstrap intervals."""

from __future__ import annotations

import json
import os

import yaml
from conftest import cli, journal_study, run_cli

L = 16


def test_lm_study_report_states_batches_and_noise_scale_in_tokens(tmp_path):
    exp = {"name": "lm", "task": "causal_lm", "seed": 0,
           "data": {"source": "speeches", "max_length": L, "tokenizer_vocab": 512, "max_train_samples": 400, "max_eval_samples": 8,
                    "eval_tokens": 16 * L},
           "model": {"source": "random", "model_type": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": L}},
           "optimizer": {"lr": 3e-3, "decay_embeddings": False, "lr_scaling": "sqrt", "reference_batch_size": 8},
           "schedule": {"name": "cosine", "warmup_tokens": 4 * L, "min_lr_ratio": 0.1},
           "train": {"batch_size": 8, "budget_tokens": 16 * L * 8, "eval_every_tokens": 4 * L},
           "launcher": {"precision": "no", "max_micro_batch": 2}}
    study = {"name": "lm-ladder", "experiment": "lm.yaml", "n_trials": 6, "sampler": {"name": "grid", "seed": 0}, "pruner": {"name": "none"}, "save_model": "none",
             "search_space": {"train.batch_size": {"type": "categorical", "choices": [4, 8, 16]},
                              "optimizer.lr": {"type": "categorical", "choices": [3e-3, 1e-2]}}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(exp))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run_cli("run", "study.yaml", cwd=tmp_path, check=True, env=env)
    assert len(journal_study(tmp_path / "mlruns", "lm-ladder").get_trials()) == 6

    out = cli("report", "lm-ladder", cwd=tmp_path, check=True).stdout
    assert "B_simple median per B (tokens, diagnostic): B=4 (64 tokens)" in out, out
    report = tmp_path / "mlruns" / "reports" / "lm-ladder"
    s = json.loads((report / "summary.json").read_text())["tokens"]
    assert [(r["batch_size"], r["batch_tokens"], r["trials"]) for r in s["per_batch_size"]] == [(4, 64, 2), (8, 128, 2), (16, 256, 2)]
    assert all(r["b_simple_tokens_median"] > 0 for r in s["per_batch_size"])  # micro-batch 2: measured at every B
    assert len(s["targets"]) >= 3 and len(s["fits"]) == len(s["targets"])
    assert all(("b_crit_tokens" in f) != ("error" in f) for f in s["fits"]), s["fits"]
    assert s["bootstrap"]["resamples"] == 1000
    # evaluations asked every 64 tokens, but B = 16 takes 256 tokens a step: 1/8 of its 8-step run apart, more than 2%
    assert any(w.startswith("B = 16: evaluations up to 12.5% of the run apart") for w in s["warnings"]), s["warnings"]
    page = (report / "index.html").read_text()
    assert "B_tokens (× 16)" in page and "B_simple median (tokens)" in page and "a diagnostic" in page and "a measurement" in page
    assert all((report / p).is_file() for p in ("lm_curves.png", "lm_steps_to_target.png", "lm_b_crit_vs_loss.png"))
