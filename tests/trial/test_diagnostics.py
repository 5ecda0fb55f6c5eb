"""The gradient noise scale on problems with known answers: exact norms, accumulation, 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbsearch.orchestrator.launch import free_port
from lbsearch.trial.diagnostics import NoiseScale

LSQ = Path(__file__).parent.parent / "scripts" / "noise_scale_lsq.py"
ARGS = ["--batch-size", "64", "--micro-batch", "16", "--steps", "4000", "--beta", "0.999"]


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_estimates_are_unbiased_for_exact_norms():
    """With the expected squared norms |G|² + tr(Σ)/b plugged in, one step gives the exact answer."""
    g2, trace, b, big = 2.0, 50.0, 8, 128
    est = NoiseScale.estimates(g2 + trace / b, g2 + trace / big, b, big)
    assert est == pytest.approx((g2, trace))


def test_noise_scale_under_accumulation_recovers_least_squares_b_simple():
    """1 process, micro-batch 16 x accumulation 4: the small gradient is that of the first 2 micro-batches (b = 32), B = 64."""
    out = _run([sys.executable, str(LSQ), *ARGS])
    assert (out["mode"], out["b"], out["B"], out["measured"]) == ("micro", 32, 64, 4000)
    assert out["b_simple"] == pytest.approx(out["analytic"], rel=0.10)


def test_noise_scale_measured_every_third_step_still_recovers_b_simple():
    """``every=3`` (the worker's ``train.noise_scale_every``): one step in three feeds the averages."""
    out = _run([sys.executable, str(LSQ), "--batch-size", "64", "--micro-batch", "16", "--steps", "9000", "--beta", "0.998", "--every", "3"])
    assert out["measured"] == 3000
    assert out["b_simple"] == pytest.approx(out["analytic"], rel=0.10)


def test_noise_scale_under_two_processes_recovers_least_squares_b_simple():
    """2 ranks (gloo) x micro-batch 16 x accumulation 2: b = 32 per rank, read before the all-reduce."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = _run([*launch, str(LSQ), *ARGS])
    assert (out["mode"], out["b"], out["B"]) == ("rank", 32, 64)
    assert out["b_simple"] == pytest.approx(out["analytic"], rel=0.10)
