"""Language models end to end through the CLI: a causal decoder and a masked encoder train on the
builtin corpus in tokens; B_simple in tokens; a small study prunes at tokens seen and reproduces exactly."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from conftest import journal_study, mlflow_client, run_cli, settled
from optuna.trial import TrialState

from lbsearch.spec import EVAL, GNS_B_SIMPLE, GNS_B_SIMPLE_TOKENS, PROGRESS_TOKENS, TEST, TRIALS, VAL

L = 32
MODELS = {
    "causal_lm": {"source": "random", "model_type": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": L}},
    "masked_lm": {"source": "random", "model_type": "bert", "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                                     "intermediate_size": 64, "max_position_embeddings": L}},
}


def _experiment(task: str, name: str) -> dict:
    return settled({"name": name, "task": task, "seed": 0,
            "data": {"source": "speeches", "max_length": L, "tokenizer_vocab": 512, "max_train_samples": 120, "max_eval_samples": 20},
            "model": MODELS[task], "optimizer": {"lr": 3e-3, "decay_embeddings": False},
            "schedule": {"name": "cosine", "warmup_tokens": 256, "min_lr_ratio": 0.1},
            "train": {"batch_size": 16, "budget_tokens": 16 * L * 12, "eval_every_tokens": 16 * L * 4},
            "launcher": {"precision": "no", "max_micro_batch": 8}, "metric": {"target": 100.0}})


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.mark.parametrize("task", ["causal_lm", "masked_lm"])
def test_language_model_trains_in_tokens(task, tmp_path, env):
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(_experiment(task, f"lm-{task}")))
    proc = run_cli("train", "lm.yaml", cwd=tmp_path, check=True, env=env)
    assert f"(512 tokens: sequences of {L})" in proc.stdout  # B = 16 sequences = 512 tokens
    assert f"tokens {16 * L * 4:,}/{16 * L * 12:,}" in proc.stdout
    client = mlflow_client(tmp_path / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name(f"train-lm-{task}").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["plan.batch_tokens"] == "512" and run.data.params["plan.budget_tokens"] == str(16 * L * 12)
    m = run.data.metrics
    assert {VAL + "loss", VAL + "perplexity", TEST + "loss", TEST + "perplexity"} <= set(m)
    assert m[VAL + "perplexity"] == pytest.approx(math.exp(m[VAL + "loss"]))
    assert m[VAL + "loss"] < math.log(512)  # better than uniform over the 512-token vocabulary
    profile = json.loads(run.inputs.dataset_inputs[0].dataset.profile)  # the corpus as MLflow records it
    assert profile["train_tokens"] > 0 and 0 < profile["unigram_entropy"] < math.log(512)
    tokens = [p.value for p in client.get_metric_history(run.info.run_id, PROGRESS_TOKENS)]
    assert tokens == [16 * L * 4, 16 * L * 8, 16 * L * 12]
    assert [p.step for p in client.get_metric_history(run.info.run_id, EVAL + "loss")] == tokens  # MLflow's step: tokens seen
    assert m["tokens_to_target"] == 16 * L * 4  # a loss of 100 is reached at the first evaluation
    # micro-batch 8 x accumulation 2: the noise scale is measured, in sequences and in tokens
    b = client.get_metric_history(run.info.run_id, GNS_B_SIMPLE)
    bt = client.get_metric_history(run.info.run_id, GNS_B_SIMPLE_TOKENS)
    assert b and [p.value for p in bt] == pytest.approx([p.value * L for p in b])


def test_language_model_study_prunes_at_tokens_and_reproduces(tmp_path, env):
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(_experiment("causal_lm", "lm")))
    study = {"name": "lm-study", "experiment": "lm.yaml", "n_trials": 3, "parallel": 1,
             "search_space": {"train.batch_size": {"type": "categorical", "choices": [8, 16]},
                              "optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
             "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "median", "n_startup_trials": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    run_cli("run", "study.yaml", cwd=tmp_path, check=True, env=env)
    trials = journal_study(tmp_path / "mlruns", "lm-study").get_trials()
    assert len(trials) == 3 and trials[0].state == TrialState.COMPLETE
    every = 16 * L * 4
    for t in trials:  # reported at tokens seen, whatever the batch size
        assert set(t.intermediate_values) <= {every, 2 * every, 3 * every}, t.intermediate_values
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    proc = run_cli("reproduce", "lm-study", "--trial", str(best.number), cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "reproduced: metrics identical" in proc.stdout, proc.stdout + proc.stderr


def test_classifier_source_is_not_a_corpus(tmp_path, env):
    spec = _experiment("causal_lm", "wrong") | {"task": "single_label", "train": {"batch_size": 16}, "schedule": {}, "metric": {}}
    spec["data"] = {"source": "speeches"}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    proc = run_cli("train", "x.yaml", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "data.source: `speeches` is a text corpus for `task: causal_lm`" in proc.stderr + proc.stdout
    assert not (Path(tmp_path) / "mlruns" / TRIALS).exists()
