"""benchmarks/gpu.py: its experiment is valid, and without a GPU it says so and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_exits_0_with_a_message():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no GPU here" in proc.stdout


def test_its_experiment_is_a_bert_base_at_length_128(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu

    args = Namespace(steps=120, eval_every_steps=20, batch_size=128)
    for name in gpu.VARIANTS:
        exp = gpu.experiment(gpu.SPEC, gpu.overrides(args) | gpu.VARIANTS[name])
        assert exp.model.config["num_hidden_layers"] == 12 and exp.data.max_length == 128 and exp.launcher.pad_to_multiple_of == 128
        assert exp.launcher.precision == gpu.VARIANTS[name]["launcher.precision"]
