"""The batch-scaling report of a real (tiny) language-model study: B and B_simple in tokens, B_crit at
several loss targets with bootstrap intervals, and the steps-to-target fit at the study's own target. Each
fit must succeed here: the tiny model's curves give enough signal (fewer steps but more tokens to a
target at each larger B), and a report whose every fit failed would otherwise pass."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from conftest import cli, journal_study, mlflow_client, run_cli, settled

from lbsearch.science import REPORT_HTML, SUMMARY_JSON
from lbsearch.science.lm_figures import LM_FIGURES
from lbsearch.science.lm_report import N_RESAMPLES
from lbsearch.spec import REPORT_B_CRIT, REPORTS
from lbsearch.tracking import ROLE

L = 16


def _fit(batch_sizes, steps) -> tuple[float, float]:
    """(S_min, B_crit) of S = S_min (1 + B_crit / B), least squares on relative residuals, computed here."""
    b, s = np.asarray(batch_sizes, dtype=float), np.asarray(steps, dtype=float)
    (s_min, slope), *_ = np.linalg.lstsq(np.stack([1 / s, 1 / (b * s)], axis=1), np.ones_like(s), rcond=None)
    return s_min, slope / s_min


def test_lm_study_report_states_batches_and_noise_scale_in_tokens(tmp_path):
    exp = settled({"name": "lm", "task": "causal_lm", "seed": 0,
           "data": {"source": "speeches", "max_length": L, "tokenizer_vocab": 512, "max_train_samples": 400, "max_eval_samples": 8,
                    "eval_tokens": 16 * L},
           "model": {"source": "random", "model_type": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": L}},
           "optimizer": {"lr": 3e-3, "decay_embeddings": False, "lr_scaling": "sqrt", "reference_batch_size": 8},
           "schedule": {"name": "cosine", "warmup_tokens": 4 * L, "min_lr_ratio": 0.1},
           "train": {"batch_size": 8, "budget_tokens": 16 * L * 8, "eval_every_tokens": 4 * L},
           "launcher": {"precision": "no", "max_micro_batch": 2}, "metric": {"name": "loss", "target": 5.7}})
    study = {"name": "lm-ladder", "experiment": "lm.yaml", "n_trials": 6, "parallel": 1, "sampler": {"name": "grid", "seed": 0}, "pruner": {"name": "none"}, "save_model": "none",
             "search_space": {"train.batch_size": {"type": "categorical", "choices": [4, 8, 16]},
                              "optimizer.lr": {"type": "categorical", "choices": [3e-3, 1e-2]}}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(exp))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run_cli("run", "study.yaml", cwd=tmp_path, check=True, env=env)
    assert len(journal_study(tmp_path / "mlruns", "lm-ladder").get_trials()) == 6

    out = cli("report", "lm-ladder", cwd=tmp_path, check=True).stdout
    assert "B_simple median per B (tokens, diagnostic): B=4 (64 tokens)" in out, out
    report = tmp_path / "mlruns" / REPORTS / "lm-ladder"
    s = json.loads((report / SUMMARY_JSON).read_text())["tokens"]
    assert [(r["batch_size"], r["batch_tokens"], r["trials"]) for r in s["per_batch_size"]] == [(4, 64, 2), (8, 128, 2), (16, 256, 2)]
    assert all(r["b_simple_tokens_median"] > 0 and r["b_simple_trials"] == r["trials"] for r in s["per_batch_size"])  # micro-batch 2: measured in every trial
    assert len(s["targets"]) >= 3 and len(s["fits"]) == len(s["targets"])
    for j, f in enumerate(s["fits"]):  # every target: B_crit from the table of tokens to target (B = 4, 8, 16)
        assert "error" not in f and f["batch_sizes_reached"] == [4, 8, 16], f
        table = [r["steps_to_target"][j] for r in s["per_batch_size"]]
        assert (f["s_min"], f["b_crit"]) == pytest.approx(_fit([4, 8, 16], table), rel=1e-6)
        assert f["b_crit"] > 0 and f["b_crit_tokens"] == pytest.approx(f["b_crit"] * L)
        assert f"loss target {f['target']:.4g}: B_crit {f['b_crit_tokens']:,.0f} tokens" in out
    # the study's metric.target 5.7 (at evaluation points): fewer steps but more samples at each larger B
    summary = json.loads((report / SUMMARY_JSON).read_text())
    rows, fit = summary["per_batch_size"], summary["steps_fit"]
    steps, samples = [r["steps_to_target"] for r in rows], [r["samples_to_target"] for r in rows]
    assert all(steps) and steps[0] > steps[1] > steps[2] and samples[0] < samples[1] < samples[2], rows
    assert "error" not in fit and fit["n"] == 3 and (fit["s_min"], fit["b_crit"]) == pytest.approx(_fit([4, 8, 16], steps), rel=1e-6)
    assert f"B_crit {fit['b_crit']:.0f}, S_min {fit['s_min']:.0f} steps" in out
    client = mlflow_client(tmp_path / "mlruns")
    parent = client.search_runs([client.get_experiment_by_name("lm-ladder").experiment_id], f"tags.`{ROLE}` = 'parent'")[0]
    assert parent.data.metrics[REPORT_B_CRIT] == pytest.approx(fit["b_crit"])
    assert s["bootstrap"]["resamples"] == N_RESAMPLES
    # evaluations asked every 64 tokens, but B = 16 takes 256 tokens a step: 1/8 of its 8-step run apart, more than 2%
    assert any(w.startswith("B = 16: evaluations up to 12.5% of the run apart") for w in s["warnings"]), s["warnings"]
    page = (report / REPORT_HTML).read_text()
    assert "B_tokens (× 16)" in page and "B_simple median (tokens)" in page and "a diagnostic" in page and "a measurement" in page
    assert all((report / p).is_file() for p in LM_FIGURES)
