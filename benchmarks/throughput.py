"""Training throughput: the lbsearch trial loop vs a bare PyTorch loop vs HF ``Trainer``.

Same model (``lbsearch.trial.model.build_model``), tokenized cached data, B, micro-batches (laid out as the
worker lays them out: ``batching.step_micro_batches``), AdamW, schedule, clipping, precision and device, all three in
this process, alternating bare, lbsearch, trainer, bare, ...; steady-state samples/s (steps after
the first evaluation point; evaluation excluded). Goal: lbsearch >= 0.97x the bare loop.

The bare and lbsearch loops do the same computation: their per-step losses are compared
(``throughput.max_loss_diff_lbsearch_vs_bare``; 0 means the very same numbers). The lbsearch loop
runs as the spec configures it, e.g. with its gradient-noise-scale monitor (``train.noise_scale``);
``--set train.noise_scale=false`` measures the loop without it.

    python benchmarks/throughput.py                 # MiniLM cut to 2 layers, 3 repeats: ~6 min on 2 cores
    python benchmarks/throughput.py --layers 6      # all 6 layers: ~18 min on 2 cores
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
    experiment,
    fresh_accelerate,
    lbsearch_loop,
    machine,
    micro_batch,
    new_model,
    optimizer_and_schedule,
    prepared,
    steady_rates,
    step_layout,
    summary,
    table,
    use_all_cores,
    warmup_steps,
    write,
)

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


def main() -> int:
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
    ap.add_argument("--no-warmup-run", action="store_true", help="skip the untimed bare run that first meets every batch shape")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/throughput_<layers>l.json")
    args = ap.parse_args()
    warm = args.warmup_samples or args.budget // 8
    args.spec = args.spec or (ROOT / "experiments" / "lm_tiny.yaml" if args.lm else SPEC)
    common = {"model.num_layers": args.layers, "train.batch_size": args.batch_size, "launcher.precision": args.precision}
    if args.lm:
        length = experiment(args.spec, {}).data.max_length
        exp = experiment(args.spec, common | {"train.budget_tokens": args.budget * length, "train.eval_every_tokens": warm * length,
                                              "data.eval_tokens": 4 * length}, args.set)
        args.skip_trainer = True
    else:
        exp = experiment(args.spec, common | {"train.budget_samples": args.budget, "train.eval_every_samples": warm,
                                              "data.max_eval_samples": 64}, args.set)
    threads = use_all_cores()
    work = Path(tempfile.mkdtemp(prefix="lbsearch-bench-"))
    data = prepared(exp, work)
    loops = {"bare": lambda: bare_loop(exp, data), "lbsearch": lambda: lbsearch_loop(exp, data)}
    if not args.skip_trainer:
        loops["trainer"] = lambda: trainer_loop(exp, data, work)
    out: dict[str, Any] = {"machine": machine() | {"torch.threads": threads}}
    kinds = ("samples_per_s", "samples_per_s_median_step")
    figures = {(name, kind): [] for name in loops for kind in kinds}
    loss_diff = 0.0
    if not args.no_warmup_run:  # the first run in a process meets every shape first: keep it out of the figures
        print(f"warm-up run (bare, untimed): {bare_loop(exp, data)['samples_per_s']:.1f} samples/s", flush=True)
    for r in range(args.repeats):
        losses = {}
        for name, run in loops.items():  # alternate: bare, lbsearch, trainer, bare, ...
            res = run()
            for kind in kinds:
                figures[name, kind].append(res[kind])
            losses[name] = res.get("losses")
            print(f"repeat {r} {name:8s} {res['samples_per_s']:.1f} samples/s ({res['samples_per_s_median_step']:.1f} from the median step)", flush=True)
        loss_diff = max(loss_diff, max(abs(a - b) for a, b in zip(losses["bare"], losses["lbsearch"])))
    t = "throughput"
    out |= {
        f"{t}.spec": str(args.spec.relative_to(ROOT)) if args.spec.is_relative_to(ROOT) else str(args.spec),
        f"{t}.layers": args.layers, f"{t}.batch_size": args.batch_size, f"{t}.budget_samples": args.budget,
        f"{t}.timed_after_samples": warm, f"{t}.precision": exp.launcher.precision,
        f"{t}.micro_batch": micro_batch(exp),
        f"{t}.max_loss_diff_lbsearch_vs_bare": loss_diff, f"{t}.experiment": exp.model_dump(mode="json"),
    }
    unit = exp.data.max_length if args.lm else None
    if unit:  # every sample is a packed sequence of `unit` tokens
        out[f"{t}.tokens_per_sample"] = unit
        for name in loops:
            out[f"{t}.{name}.tokens_per_s"] = statistics.median(figures[name, "samples_per_s"]) * unit
    rows = []
    for name in loops:
        row = [name]
        for kind, suffix in zip(kinds, ("", "_median_step")):
            values = figures[name, kind]
            ratio = statistics.median(values) / statistics.median(figures["bare", kind])
            out[f"{t}.{name}.{kind}"] = summary(values)
            out[f"{t}.{name}.ratio_vs_bare{suffix}"] = ratio
            row += [statistics.median(values), ratio]
        rows.append(row + [" ".join(f"{v:.1f}" for v in figures[name, kinds[0]])])
    out[f"{t}.goal_lbsearch_ratio_vs_bare"] = 0.97
    out[f"{t}.goal_met"] = out[f"{t}.lbsearch.ratio_vs_bare"] >= 0.97
    print(table(["loop", "samples/s", "ratio vs bare", "from median step", "ratio vs bare", "runs"], rows))
    print(f"lbsearch vs bare: {out[f'{t}.lbsearch.ratio_vs_bare']:.3f} (goal >= 0.97; from the median step "
          f"{out[f'{t}.lbsearch.ratio_vs_bare_median_step']:.3f}); max |loss difference| {loss_diff:.2e}")
    if unit:
        print("tokens/s: " + ", ".join(f"{name} {out[f'{t}.{name}.tokens_per_s']:.0f}" for name in loops))
    write(out, args.out or RESULTS / (f"throughput_lm_{args.layers}l.json" if args.lm else f"throughput_{args.layers}l.json"))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
