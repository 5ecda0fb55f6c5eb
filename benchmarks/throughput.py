"""Training throughput: the lbsearch trial loop vs a bare PyTorch loop doing the same computation.

Same model (``lbsearch.trial.model.build_model``), tokenized cached data, B, micro-batches (laid out as the
worker lays them out: ``batching.step_micro_batches``), AdamW, schedule, clipping, precision and device, all in
this process, alternating the variants A B A B; steady-state samples/s (steps after the first evaluation
point; evaluation excluded). Goal: lbsearch >= 0.97x the bare loop, judged on the median of the pairwise
ratios (each repeat's lbsearch run over the bare run beside it) and on every repeat (``_stats.verdict``).

The variants:

- ``bare``: the bare loop with the micro-batches the trial uses: packed where the trial packs them
  (``launcher.pack``, for a classifier with a pooled head), else padded. It does the very
  computation of the lbsearch loop: their per-step losses are compared
  (``throughput.max_loss_diff_lbsearch_vs_bare``) and the run fails above float noise (``LOSS_TOLERANCE``);
- ``lbsearch``: the trial loop, as the spec configures it (e.g. with its gradient-noise-scale monitor,
  ``train.noise_scale``; ``--set train.noise_scale=false`` measures the loop without it);
- ``bare_padded`` (where the trial packs): the bare loop on padded micro-batches. ``bare`` over it is the
  packing gain, reported as its own figure (``throughput.packing_gain``); its losses differ from the packed
  ones by more than float noise where the model has dropout (the masks are drawn over another layout);
- ``trainer`` (unless ``--skip-trainer``): HF ``Trainer`` on padded micro-batches (a collator pads them),
  compared with the padded bare loop (``bare_padded``, or ``bare`` where the trial pads).

    python benchmarks/throughput.py                 # MiniLM cut to 2 layers, 3 repeats: ~8 min on 2 cores
    python benchmarks/throughput.py --layers 6      # all 6 layers: ~25 min on 2 cores
    python benchmarks/throughput.py --lm            # the tiny decoder of experiments/lm_tiny.yaml, in tokens/s

With ``--lm`` the model is the language model of ``experiments/lm_tiny.yaml`` (packed sequences of 64
tokens; ``--budget`` and ``--batch-size`` count sequences) and the figures are also given in tokens/s;
HF ``Trainer`` is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _bench import (
    RESULTS,
    ROOT,
    SPEC,
    bare_loop,
    bare_model,
    experiment,
    fresh_accelerate,
    lbsearch_loop,
    machine,
    micro_batch,
    new_model,
    optimizer_and_schedule,
    packing_offset,
    prepared,
    steady_rates,
    step_layout,
    summary,
    table,
    use_all_cores,
    warmup_steps,
    write,
)
from _stats import MET, judged, pairwise

from lbsearch.data.cache import PreparedData, load_arrays
from lbsearch.spec.config import ExperimentConfig


def trainer_loop(exp: ExperimentConfig, data: PreparedData, work: Path) -> dict[str, Any]:
    """HF ``Trainer`` on the same micro-batches: a dataset in the worker's sample order (each step's B
    samples sorted by length), read sequentially, padded per micro-batch by a collator; the worker's
    optimizer and schedule; no evaluation, saving or reporting."""
    from accelerate.utils import set_seed
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lbsearch.trial.batching import pad

    tr = exp.train
    train = load_arrays(data.path, "train")
    dataset = [{"ids": train.ids[i], "label": int(train.labels[i])} for cuts in step_layout(exp, train) for c in cuts for i in c]
    mb = micro_batch(exp)

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad([x["ids"] for x in items], data.pad_id, "cpu") | {"labels": torch.tensor([x["label"] for x in items])}

    class SequentialTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            logits = model(**inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return (loss, logits) if return_outputs else loss

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    fresh_accelerate()
    set_seed(exp.seed)
    model = new_model(exp, data)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=tr.budget_samples // tr.batch_size, per_device_train_batch_size=mb,
        gradient_accumulation_steps=tr.batch_size // mb, max_grad_norm=tr.clip_norm or 0.0, bf16=exp.launcher.precision == "bf16",
        use_cpu=not torch.cuda.is_available() or exp.launcher.cpu, eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0, seed=exp.seed,
    )
    trainer = SequentialTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                                optimizers=optimizer_and_schedule(exp, model), callbacks=[Clock()])
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its own summary line
        trainer.train()
    return steady_rates(ends, tr.batch_size, warmup_steps(exp))


LOSS_TOLERANCE = 1e-5
"""Largest per-step loss difference between the lbsearch and bare loops taken as the same computation."""

KINDS = ("samples_per_s", "samples_per_s_median_step")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=None, help="default experiments/rt_minilm.yaml (with --lm: experiments/lm_tiny.yaml)")
    ap.add_argument("--lm", action="store_true", help="the tiny causal language model, in tokens/s")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment field, e.g. train.noise_scale=false")
    ap.add_argument("--layers", type=int, default=2, help="MiniLM layers kept (2: the quickstart model; 6: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", type=int, default=3200, help="samples per run")
    ap.add_argument("--warmup-samples", type=int, default=None, help="samples left out of the timing (default budget/8)")
    ap.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--skip-padded", action="store_true", help="no padded bare loop: no packing gain (and no Trainer where the trial packs)")
    ap.add_argument("--no-warmup-run", action="store_true", help="skip the untimed bare run that first meets every batch shape")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/throughput_<layers>l.json")
    return ap.parse_args()


def the_experiment(args: argparse.Namespace) -> tuple[ExperimentConfig, int]:
    """The experiment every variant trains, and the samples left out of the timing."""
    warm = args.warmup_samples or args.budget // 8
    args.spec = args.spec or (ROOT / "experiments" / "lm_tiny.yaml" if args.lm else SPEC)
    common = {"model.num_layers": args.layers, "train.batch_size": args.batch_size, "launcher.precision": args.precision}
    if args.lm:
        length = experiment(args.spec, {}).data.max_length
        args.skip_trainer = True
        return experiment(args.spec, common | {"train.budget_tokens": args.budget * length, "train.eval_every_tokens": warm * length,
                                               "data.eval_tokens": 4 * length}, args.set), warm
    return experiment(args.spec, common | {"train.budget_samples": args.budget, "train.eval_every_samples": warm,
                                           "data.max_eval_samples": 64}, args.set), warm


def run_variants(args: argparse.Namespace, loops: dict[str, Any]) -> tuple[dict, dict]:
    """Each variant ``args.repeats`` times, alternating; their figures, and the per-step losses of each run."""
    figures = {(name, kind): [] for name in loops for kind in KINDS}
    losses: dict[str, list[list[float]]] = {name: [] for name in loops}
    for r in range(args.repeats):
        for name, run in loops.items():  # alternate: bare, lbsearch, bare_padded, trainer, bare, ...
            res = run()
            for kind in KINDS:
                figures[name, kind].append(res[kind])
            losses[name].append(res.get("losses"))
            print(f"repeat {r} {name:11s} {res['samples_per_s']:.1f} samples/s ({res['samples_per_s_median_step']:.1f} from the median step)", flush=True)
    return figures, losses


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def ratios(out: dict[str, Any], figures: dict, name: str, base: str, key: str, goal: float | None) -> list[Any]:
    """``name`` over ``base``, both kinds: the ratio of medians and the pairwise ratios (with the verdict
    where there is a goal) into ``out``; the table row."""
    row: list[Any] = [key]
    for kind, suffix in zip(KINDS, ("", "_median_step")):
        a, b = figures[name, kind], figures[base, kind]
        pairs = pairwise(a, b)
        out[f"{key}{suffix}"] = statistics.median(a) / statistics.median(b)
        out[f"{key}_pairwise{suffix}"] = pairs
        if goal is not None:
            out[f"{key}_verdict{suffix}"] = judged(pairs["runs"], goal, at_most=False)["verdict"]
        row += [pairs["median"], f"{pairs['min']:.3f}-{pairs['max']:.3f}"]
    return row


def main() -> int:
    args = parse_args()
    exp, warm = the_experiment(args)
    threads = use_all_cores()
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    data = prepared(exp, work)
    packed = packing_offset(exp, data, bare_model(exp, data)) is not None
    loops = {"bare": lambda: bare_loop(exp, data), "lbsearch": lambda: lbsearch_loop(exp, data)}
    if packed and not args.skip_padded:
        loops["bare_padded"] = lambda: bare_loop(exp, data, pack=False)
    if not args.skip_trainer and (not packed or "bare_padded" in loops):  # the Trainer pads: compared with the padded bare loop
        loops["trainer"] = lambda: trainer_loop(exp, data, work)
    out: dict[str, Any] = {"machine": machine() | {"torch.threads": threads}}
    if not args.no_warmup_run:  # the first run in a process meets every shape first: keep it out of the figures
        print(f"warm-up run (bare, untimed): {bare_loop(exp, data)['samples_per_s']:.1f} samples/s", flush=True)
    packing_tags: list[str | None] = []  # the lbsearch runs' `lbsearch.packing` tag: "on" where they packed

    def lbsearch_run() -> dict[str, Any]:
        res = lbsearch_loop(exp, data)
        packing_tags.append(res["packing"])
        return res

    loops["lbsearch"] = lbsearch_run
    figures, losses = run_variants(args, loops)
    t = "throughput"
    loss_diff = max_diff(losses["lbsearch"], losses["bare"])
    out |= {
        f"{t}.spec": str(args.spec.relative_to(ROOT)) if args.spec.is_relative_to(ROOT) else str(args.spec),
        f"{t}.layers": args.layers, f"{t}.batch_size": args.batch_size, f"{t}.budget_samples": args.budget,
        f"{t}.repeats": args.repeats, f"{t}.timed_after_samples": warm, f"{t}.precision": exp.launcher.precision,
        f"{t}.micro_batch": micro_batch(exp), f"{t}.micro_batches": "packed" if packed else "padded",
        f"{t}.lbsearch_packing_tag": packing_tags,
        f"{t}.max_loss_diff_lbsearch_vs_bare": loss_diff, f"{t}.loss_tolerance": LOSS_TOLERANCE,
        f"{t}.same_computation": loss_diff <= LOSS_TOLERANCE, f"{t}.experiment": exp.model_dump(mode="json"),
    }
    for name in loops:
        for kind in KINDS:
            out[f"{t}.{name}.{kind}"] = summary(figures[name, kind])
    padded = "bare_padded" if packed else "bare"
    rows = [ratios(out, figures, "lbsearch", "bare", f"{t}.lbsearch_over_bare", 0.97)]
    if "bare_padded" in loops:
        out[f"{t}.max_loss_diff_bare_packed_vs_padded"] = max_diff(losses["bare"], losses["bare_padded"])
        rows.append(ratios(out, figures, "bare", "bare_padded", f"{t}.packing_gain", None))
    if "trainer" in loops:
        rows.append(ratios(out, figures, "trainer", padded, f"{t}.trainer_over_{padded}", None))
    out[f"{t}.goal_lbsearch_over_bare"] = 0.97
    out[f"{t}.goal_met"] = out[f"{t}.lbsearch_over_bare_verdict"] == MET
    unit = exp.data.max_length if args.lm else None
    if unit:  # every sample is a packed sequence of `unit` tokens
        out[f"{t}.tokens_per_sample"] = unit
        for name in loops:
            out[f"{t}.{name}.tokens_per_s"] = statistics.median(figures[name, "samples_per_s"]) * unit
    print(table(["loop", *[n for n in loops]], [[k, *[statistics.median(figures[n, k]) for n in loops]] for k in KINDS]))
    print(table(["pairwise ratio", "median", "range", "from the median step", "range"], rows))
    print(f"lbsearch / bare: {out[f'{t}.lbsearch_over_bare_pairwise']['median']:.3f} pairwise median (goal >= 0.97: "
          f"{out[f'{t}.lbsearch_over_bare_verdict']}); max |loss difference| {loss_diff:.2e}; micro-batches {'packed' if packed else 'padded'}")
    write(out, args.out or RESULTS / (f"throughput_lm_{args.layers}l.json" if args.lm else f"throughput_{args.layers}l.json"))
    shutil.rmtree(work, ignore_errors=True)
    if loss_diff > LOSS_TOLERANCE or any((tag == "on") != packed for tag in packing_tags):
        print(f"NOT the same computation: losses differ by {loss_diff:.2e} (tolerance {LOSS_TOLERANCE}), lbsearch packing {packing_tags}, "
              f"bare {'packed' if packed else 'padded'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
