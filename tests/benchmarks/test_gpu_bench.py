"""benchmarks/gpu.py: its experiments are BERT-base and GPT-2 small with 200 timed steps, its host-sync
counter and bare loop do what they claim, one stage runs on the CPU, and without a GPU it says so and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu

    return gpu


def test_without_a_gpu_it_exits_0_with_a_message():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no GPU here" in proc.stdout


def test_its_experiments_are_bert_base_and_gpt2_small_with_200_timed_steps(gpu):
    from lbsearch.spec import make_plan

    size = gpu.size_of(gpu.parse_args([]))
    every, k = size["interval"], size["intervals"]
    assert every * k >= 200
    bert = gpu.experiment(gpu.BERT_SPEC, gpu.overrides("bert", size, every * (k + 1), every) | gpu.VARIANTS["bf16+compile"])
    assert bert.model.config["num_hidden_layers"] == 12 and bert.model.config["hidden_size"] == 768 and bert.model.source == "random"
    assert (bert.data.max_length, bert.train.batch_size, bert.launcher.pad_to_multiple_of) == (128, 256, 128) and bert.launcher.compile
    lm = gpu.experiment(gpu.LM_SPEC, gpu.overrides("gpt2", size, every * (k + 1), every) | gpu.VARIANTS["fp16"])
    assert lm.task == "causal_lm" and lm.model.model_type == "gpt2" and lm.data.max_length == 1024 and lm.launcher.precision == "fp16"
    assert (lm.model.config["n_layer"], lm.model.config["n_embd"], lm.model.config["n_head"]) == (12, 768, 12)
    for exp in (bert, lm):  # budgets in samples and in tokens both become spans of `every` steps after a first evaluation
        plan = make_plan(exp)
        assert plan.steps == every * (k + 1) and [s for s, _ in plan.evals] == [every * i for i in range(1, k + 2)]
        assert plan.micro_batch == exp.train.batch_size  # one micro-batch a step: no probe, no accumulation


def test_the_cpu_sync_counter_counts_host_reads_and_puts_the_methods_back(gpu):
    from _gpu_loops import SyncCounter

    item = torch.Tensor.item
    t = torch.ones(3)
    with SyncCounter(torch.device("cpu")) as counter:
        t.sum().item()
        bool(t.all())
        t.tolist()
        float(t[0])
        (t * 2).add_(1)  # no host read
        assert counter.count == 4
    assert torch.Tensor.item is item
    t.sum().item()
    assert counter.count == 4


def test_the_bare_loop_reads_nothing_on_the_host_and_counts_lbsearch_flops(gpu, tmp_path):
    from _gpu_loops import bare_run, device_peak

    from lbsearch.data import load_arrays
    from lbsearch.trial.flops import flop_count

    size = gpu.size_of(gpu.parse_args(["--cpu-smoke"]))
    exp = gpu.experiment(gpu.LM_SPEC, gpu.overrides("gpt2", size, 6, 2) | gpu.VARIANTS["bf16"])
    data = gpu.prepared(exp, tmp_path)
    peak, _ = device_peak(exp, data)
    out = bare_run(exp, data, first=3, interval=2, intervals=2, warmup=2, peak=peak)
    assert out["host_syncs"]["per_step"] == 0
    assert [s["first_step"] for s in out["spans"]] == [3, 5] and out["steps_timed"] == 4
    count = flop_count(gpu.bare_model(exp, data))
    sequences = len(load_arrays(data.path, "train").ids[0])
    assert out["spans"][0]["flops"] == pytest.approx(count(np.full(2 * exp.train.batch_size, sequences)))
    assert np.isfinite(out["mean_loss"])


def test_one_stage_runs_on_the_cpu_and_agrees_with_lbsearchs_own_speed(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--cpu-smoke", "--only", "bert/bf16", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    run = result["runs"]["bert/bf16"]
    assert run["lbsearch"]["steps_timed"] == run["bare"]["steps_timed"] == 4
    assert [s["flops"] for s in run["lbsearch"]["spans"]] == [s["flops"] for s in run["bare"]["spans"]]  # the same samples
    # the spans timed here are the worker's own evaluation intervals: its train/tokens_per_s agrees
    spans = [s["tokens"] / s["seconds"] for s in run["lbsearch"]["spans"]]
    assert spans == pytest.approx(run["lbsearch"]["lbsearch_reported"]["tokens_per_s_per_interval"], rel=0.05)
    assert len(run["lbsearch_over_bare"]["values"]) == 2 and result["goals"]["lbsearch_over_bare/bert/bf16"]["verdict"]
    assert result["machine"]["device"] == "cpu" and result["errors"] == {}
