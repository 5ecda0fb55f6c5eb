"""The payoff of a batch-size schedule derived from the measured critical batch size, at equal tokens.

The tiny decoder of experiments/lm_tiny.yaml set up as the CBS study's reference (studies/cbs_lm_ref.yaml: lr 2e-3 at
B = 4 sequences of 64 tokens, constant after a 2,048-token warmup, 73,728 tokens), trained by lbsearch's trial loop
(``lbsearch.trial.worker.train``, in this process) as each of:

- ``constant_B``: B sequences throughout, for each B of ``--constant`` (default 4, 8, 16: 256, 512, 1,024 tokens), lr 2e-3 x sqrt(B / 4);
- ``cbs``: ``train.batch_schedule`` stepwise at the measured CBS(t) (docs/critical_batch_lm/cbs.json; its running
  maximum, so B never shrinks): B starts at CBS at the first branch point and takes each larger CBS from its point on;
- ``doubling``: a generic schedule, B doubling at each quarter of the budget from the smallest constant B (4, 8, 16, 32);

schedules with the sqrt lr rule, each over ``--seeds`` seeds. The validation loss is scored every 2,048 tokens.
Per run: the loss at the budget, and the optimizer steps and tokens to each loss target (the first evaluation at or
below it). The "best constant B" is the one with the lowest mean loss at the budget.
Goal: the CBS schedule reaches every target in fewer optimizer steps (median over seeds) than the best constant B, at
a loss at the budget no worse than the best constant B's by more than twice the two variants' pooled seed spread.

    PYTHONPATH=. python benchmarks/batch_schedule.py --out benchmarks/results/batch_schedule_lm.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _bench import RESULTS, ROOT, experiment, fresh_accelerate, machine, prepared, table, worker_spec, write

from lbsearch.science import CBS_JSON
from lbsearch.spec.plan import make_plan
from lbsearch.trial.worker import train

SPEC = ROOT / "experiments" / "lm_tiny.yaml"
CBS = ROOT / "docs" / "critical_batch_lm" / CBS_JSON
REFERENCE = {"optimizer.lr": 2.0e-3, "optimizer.lr_scaling": "sqrt", "optimizer.reference_batch_size": 4, "schedule.name": "constant",
             "schedule.warmup_tokens": 2048, "schedule.min_lr_ratio": 0.0, "train.budget_tokens": 73728, "train.eval_every_tokens": 2048,
             "train.noise_scale": False, "data.eval_tokens": 4096, "launcher.max_micro_batch": 16}
"""studies/cbs_lm_ref.yaml's reference, evaluated every 2,048 tokens; the lr follows B by the sqrt rule from 2e-3 at B = 4."""


def cbs_schedule(path: Path, length: int) -> tuple[int, dict[str, Any]]:
    """(B0 in sequences, the stepwise ``batch_schedule``) from a CBS report's points: the running maximum of CBS(t)."""
    points = sorted((p["point"], p["cbs"]) for p in json.loads(path.read_text())["points"])
    b0, at, sizes = points[0][1] // length, [], []
    for t, cbs in points[1:]:
        if cbs // length > (sizes[-1] if sizes else b0):
            at.append(t)
            sizes.append(cbs // length)
    return b0, {"kind": "stepwise", "at_tokens": at, "batch_sizes": sizes, "lr_scaling": "sqrt"}


def variants(constant: list[int], length: int, budget: int) -> dict[str, dict[str, Any]]:
    """Each variant's overrides of the reference."""
    out = {f"constant_{b}": {"train.batch_size": b} for b in constant}
    b0, cbs = cbs_schedule(CBS, length)
    out["cbs"] = {"train.batch_size": b0, "train.batch_schedule": cbs}
    low = min(constant)
    out["doubling"] = {"train.batch_size": low, "train.batch_schedule": {"kind": "stepwise", "at_tokens": [budget * q // 4 for q in (1, 2, 3)],
                                                                          "factor": 2, "lr_scaling": "sqrt"}}
    return out


def run_one(overrides: dict[str, Any], seed: int, data_root: Path) -> dict[str, Any]:
    exp = experiment(SPEC, REFERENCE | overrides | {"seed": seed})
    data = prepared(exp, data_root)
    fresh_accelerate()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(worker_spec(exp, data), log=lambda *a: None)
    if result.state != "complete":
        raise SystemExit(f"{overrides} seed {seed}: {result.state} ({result.reason})")
    plan, L = make_plan(exp), exp.data.max_length
    return {"seed": seed, "wall_s": time.perf_counter() - t0, "steps": result.steps, "tokens": result.samples * L,
            "final_loss": result.validation["loss"], "schedule": plan.schedule_text() if plan.phases else f"{plan.batch_size} throughout",
            "evals": [{"step": e["step"], "tokens": e["samples"] * L, "loss": e["loss"]} for e in result.evals]}


def to_target(run: dict[str, Any], target: float) -> tuple[int | None, int | None]:
    """(optimizer steps, tokens) at the first evaluation at or below ``target``; (None, None) if none."""
    hit = next((e for e in run["evals"] if e["loss"] <= target), None)
    return (hit["step"], hit["tokens"]) if hit else (None, None)


def summarise(runs: dict[str, list[dict[str, Any]]], targets: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        finals = [r["final_loss"] for r in rs]
        row = {"final_loss_mean": statistics.mean(finals), "final_loss_std": statistics.stdev(finals) if len(finals) > 1 else None,
               "final_loss_runs": finals, "steps": rs[0]["steps"], "wall_s_median": statistics.median(r["wall_s"] for r in rs), "targets": {}}
        for t in targets:
            hits = [to_target(r, t) for r in rs]
            steps, tokens = [h[0] for h in hits if h[0] is not None], [h[1] for h in hits if h[1] is not None]
            row["targets"][str(t)] = {"reached": len(steps), "of": len(rs), "steps_runs": [h[0] for h in hits], "tokens_runs": [h[1] for h in hits],
                                      "steps_median": statistics.median(steps) if len(steps) == len(rs) else None,
                                      "tokens_median": statistics.median(tokens) if len(tokens) == len(rs) else None}
        out[name] = row
    return out


def verdict(summary: dict[str, Any], targets: list[float]) -> dict[str, Any]:
    constant = {k: v for k, v in summary.items() if k.startswith("constant_")}
    best = min(constant, key=lambda k: constant[k]["final_loss_mean"])
    cbs, ref = summary["cbs"], summary[best]
    stds = [v["final_loss_std"] for v in (cbs, ref) if v["final_loss_std"] is not None]
    tolerance = 2 * (statistics.mean(s * s for s in stds) ** 0.5) if stds else 0.0
    per_target = {}
    for t in targets:
        a, b = cbs["targets"][str(t)]["steps_median"], ref["targets"][str(t)]["steps_median"]
        per_target[str(t)] = {"cbs_steps": a, "best_constant_steps": b, "fewer_steps": a is not None and (b is None or a < b),
                              "ratio": a / b if a is not None and b else None}
    loss_ok = cbs["final_loss_mean"] <= ref["final_loss_mean"] + tolerance
    return {"best_constant": best, "tolerance": tolerance, "tolerance_how": "2 x the pooled standard deviation of the two variants' seed losses at the budget",
            "per_target": per_target, "final_loss_no_worse": loss_ok, "final_loss_cbs": cbs["final_loss_mean"],
            "final_loss_best_constant": ref["final_loss_mean"], "goal_met": loss_ok and all(p["fewer_steps"] for p in per_target.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="seeds per variant (default %(default)s)")
    ap.add_argument("--constant", type=int, nargs="+", default=[4, 8, 16], help="constant batch sizes, sequences (default %(default)s)")
    ap.add_argument("--targets", type=float, nargs="+", default=[6.4, 6.2, 6.0], help="validation-loss targets (default %(default)s)")
    ap.add_argument("--data", type=Path, default=ROOT / "mlruns", help="where the tokenized corpus is cached (default: ./mlruns/cache)")
    ap.add_argument("--out", type=Path, default=RESULTS / "batch_schedule_lm.json")
    args = ap.parse_args()
    info = machine()
    base = experiment(SPEC, REFERENCE)
    todo = variants(args.constant, base.data.max_length, base.train.budget_tokens)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in todo}
    for seed in range(args.seeds):  # seed-major: a load change on a shared machine touches every variant alike
        for name, overrides in todo.items():
            runs[name].append(run_one(overrides, seed, args.data))
            r = runs[name][-1]
            print(f"{name} seed {seed}: loss {r['final_loss']:.4f}, {r['steps']} steps, {r['wall_s']:.0f} s", flush=True)
    summary = summarise(runs, args.targets)
    result = verdict(summary, args.targets)
    rows = [[name, s["steps"], f"{s['final_loss_mean']:.4f} ± {s['final_loss_std'] or 0:.4f}"]
            + [s["targets"][str(t)]["steps_median"] for t in args.targets] for name, s in summary.items()]
    print(table(["variant", "steps", "loss at budget"] + [f"steps to {t}" for t in args.targets], rows))
    print(json.dumps(result, indent=1))
    write({"machine": info, "reference": REFERENCE, "variants": {k: json.loads(json.dumps(v)) for k, v in todo.items()}, "targets": args.targets,
           "seeds": args.seeds, "runs": runs, "summary": summary, "verdict": result}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
