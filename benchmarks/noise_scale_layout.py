"""Why the noise-scale estimator reads random subsets: the bias of length-sorted micro-batches.

On the same optimizer steps of MiniLM (2 layers, after some training), B_simple is estimated from
the same big gradient (B = 64) and three kinds of small gradients (b = 16): length-sorted
micro-batches (the layout that is fastest on CPU), random micro-batches, and the first sorted
micro-batch alone. Sorted micro-batches are length strata, not random samples, so their squared
norms are not those of random batches of size b.

    python benchmarks/noise_scale_layout.py          # 100 warm-up steps + 40 measured steps: ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _bench import RESULTS, SPEC, experiment, machine, new_model, prepared, table, use_all_cores, write

from lbsearch.data.cache import load_arrays
from lbsearch.trial.batching import pad
from lbsearch.trial.diagnostics import NoiseScale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--warmup-steps", type=int, default=100, help="AdamW steps at B=16 before measuring")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS / "noise_scale_layout.json")
    args = ap.parse_args()
    threads = use_all_cores()
    exp = experiment(args.spec, {})
    data = prepared(exp, Path(tempfile.mkdtemp(prefix="lbsearch-bench-")))
    train = load_arrays(data.path, "train")
    torch.manual_seed(exp.seed)
    model = new_model(exp, data).train()
    for m in model.modules():  # dropout would add noise of its own to every gradient
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = np.array([len(x) for x in train.ids])
    rng = np.random.default_rng(0)

    def grad(idx: np.ndarray) -> torch.Tensor:
        model.zero_grad()
        batch = pad([train.ids[i] for i in idx], data.pad_id, "cpu")
        torch.nn.functional.cross_entropy(model(**batch).logits, torch.as_tensor(train.labels[idx])).backward()
        return torch.cat([p.grad.flatten() for p in params]).clone()

    opt = torch.optim.AdamW(params, lr=5e-4)
    for _ in range(args.warmup_steps):
        grad(rng.choice(len(train.ids), 16, replace=False))
        opt.step()
    big, b, k = args.batch_size, args.micro_batch, args.batch_size // args.micro_batch
    est: dict[str, list[tuple[float, float]]] = {"sorted": [], "random": [], "first_sorted": []}
    for _ in range(args.steps):
        idx = rng.choice(len(train.ids), big, replace=False)
        srt = idx[np.argsort(lengths[idx], kind="stable")]
        gs = [grad(srt[j * b : (j + 1) * b]) for j in range(k)]
        l = torch.stack(gs).mean(0).pow(2).sum().item()
        perm = rng.permutation(idx)
        gr = [grad(perm[j * b : (j + 1) * b]) for j in range(k)]
        for name, s in (("sorted", np.mean([g.pow(2).sum().item() for g in gs])), ("random", np.mean([g.pow(2).sum().item() for g in gr])),
                        ("first_sorted", gs[0].pow(2).sum().item())):
            est[name].append(NoiseScale.estimates(s, l, b, big))
    b_simple = {n: float(np.mean([t for _, t in v]) / np.mean([g for g, _ in v])) for n, v in est.items()}
    out = {"machine": machine() | {"threads": threads}, "noise_scale_layout.batch_size": big, "noise_scale_layout.micro_batch": b,
           "noise_scale_layout.steps": args.steps, **{f"noise_scale_layout.b_simple_{n}": v for n, v in b_simple.items()},
           "noise_scale_layout.sorted_over_random": b_simple["sorted"] / b_simple["random"],
           "noise_scale_layout.first_sorted_over_random": b_simple["first_sorted"] / b_simple["random"]}
    print(table(["small gradients", "B_simple", "/ random"], [[n, v, v / b_simple["random"]] for n, v in b_simple.items()]))
    write(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
