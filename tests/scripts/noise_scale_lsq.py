"""Least squares with Gaussian noise, where the gradient noise scale is known in closed form.

    y = x·w* + ε,  x ~ N(0, I_d),  ε ~ N(0, σ²),  per-sample loss ½ (x·w − y)²,  held at w = w* + δ

The per-sample gradient is x (x·δ − ε), so G = δ and Σ = (|δ|² + σ²) I + δδᵀ, hence
B_simple = tr(Σ) / |G|² = (d (|δ|² + σ²) + |δ|²) / |δ|².

Runs lbsearch's GradientNoiseMonitor inside a real Accelerate loop (accumulation, or DDP when
started with ``accelerate launch --num_processes 2``) and prints one JSON line from rank 0.

    python tests/scripts/noise_scale_lsq.py --batch-size 64 --micro-batch 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
from accelerate import Accelerator

from lbsearch.trial.diagnostics import GradientNoiseMonitor


def analytic(d: int, delta_sq: float, sigma: float) -> float:
    return (d * (delta_sq + sigma**2) + delta_sq) / delta_sq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--beta", type=float, default=0.995)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1, help="measure every this many steps")
    args = ap.parse_args()

    probe = Accelerator(cpu=True)
    per_rank = args.batch_size // probe.num_processes
    accumulation = per_rank // args.micro_batch
    acc = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    torch.manual_seed(args.seed)
    model = torch.nn.Linear(args.dim, 1, bias=False)  # w* = 0, so w = δ
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, args.dim) / math.sqrt(args.dim))
    delta_sq = model.weight.pow(2).sum().item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # w stays at w* + δ
    model, optimizer = acc.prepare(model, optimizer)
    monitor = GradientNoiseMonitor(acc, model, args.batch_size, args.micro_batch, accumulation, beta=args.beta, every=args.every)
    gen = torch.Generator().manual_seed(1000 + acc.process_index)
    for step in range(1, args.steps + 1):
        monitor.begin(step)  # the layout head is moot here: every micro-batch is a fresh random draw
        for _ in range(accumulation):
            x = torch.randn(args.micro_batch, args.dim, generator=gen)
            y = args.sigma * torch.randn(args.micro_batch, generator=gen)
            with acc.accumulate(model):
                loss = 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()
                acc.backward(loss)
                monitor.after_backward()
                if acc.sync_gradients:
                    norm = acc.clip_grad_norm_(model.parameters(), math.inf)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        monitor.step(norm)
        monitor.settle(step)  # the trial settles at its read points; here every step
    acc.wait_for_everyone()  # no rank tears down the process group while another still uses it
    if acc.is_main_process:
        print(json.dumps({"mode": monitor.mode, "b": monitor.b, "B": args.batch_size, "b_simple": monitor.noise.b_simple, "measured": monitor.noise.n,
                          "analytic": analytic(args.dim, delta_sq, args.sigma), "grad_sq": monitor.noise.grad_sq, "delta_sq": delta_sq}))
    acc.end_training()
    sys.stdout.flush()
    os._exit(0)  # skip the interpreter's teardown: a gloo rank aborted in it once, under heavy load


if __name__ == "__main__":
    main()
