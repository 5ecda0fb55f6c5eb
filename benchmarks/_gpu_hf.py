"""HF ``Trainer.hyperparameter_search`` (Optuna backend) on the work of ``benchmarks/gpu.py``'s lbsearch study.

Run by ``benchmarks/_gpu_study.py`` as a process of its own, with one JSON argument (the settings); prints
one JSON line at the end. What a user of transformers writes for this search: the CSV files read with
``datasets``, tokenised with the same tokenizer (every row padded to ``max_length``), labels standardised
on the training split (lbsearch's ``label_scaling: standard``), a random-init model of the same config
(SDPA attention) per trial from ``model_init``, the same B, steps, evaluation cadence and evaluation
samples, fused AdamW (Trainer's default), linear schedule with 6% warmup, clip 1.0, the same learning-rate
range, TPE seeded 0 and no pruning. The objective is the validation Spearman correlation, as lbsearch's.
"""

from __future__ import annotations

import json
import os
import sys
import time

T0 = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def datasets_of(s: dict, tok):
    import numpy as np
    from datasets import load_dataset

    raw = load_dataset("csv", data_files={k: s["files"][k] for k in ("train", "validation")})
    text, label = s["text_column"], s["label_column"]
    ys = np.asarray(raw["train"][label], dtype=np.float64)
    mean, std = float(ys.mean()), float(ys.std()) or 1.0

    def encode(batch):
        enc = tok(batch[text], truncation=True, max_length=s["max_length"], padding="max_length")
        enc["labels"] = [(float(y) - mean) / std for y in batch[label]]
        return enc

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    val = data["validation"].shuffle(seed=s["seed"]).select(range(min(s["max_eval_samples"], len(data["validation"]))))
    return data["train"], val


def main() -> int:
    import optuna
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = json.loads(sys.argv[1])
    t_imports = time.perf_counter() - T0
    tok = AutoTokenizer.from_pretrained(s["tokenizer"])
    train, val = datasets_of(s, tok)
    config = AutoConfig.for_model(s["model_type"], vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=1, problem_type="regression",
                                  **s["model_config"])

    def model_init(trial=None):
        torch.manual_seed(s["seed"])
        return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")

    def metrics(pred):
        return {"spearman": float(spearmanr(pred.predictions.reshape(-1), pred.label_ids.reshape(-1)).statistic)}

    b = s["batch_size"]
    args = TrainingArguments(output_dir=s["output_dir"], per_device_train_batch_size=b, per_device_eval_batch_size=2 * b, max_steps=s["steps"],
                             eval_strategy="steps", eval_steps=s["eval_steps"], save_strategy="no", logging_strategy="no", report_to="none",
                             bf16=s["precision"] == "bf16", fp16=s["precision"] == "fp16", use_cpu=s["cpu"], seed=s["seed"],
                             lr_scheduler_type="linear", warmup_steps=max(1, round(0.06 * s["steps"])), weight_decay=s["weight_decay"], max_grad_norm=1.0,
                             disable_tqdm=True, optim="adamw_torch_fused")  # warmup and clipping as experiments/rt_tomatometer.yaml sets them; decay: lbsearch's default, passed in
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=val, compute_metrics=metrics)
    t_search = time.perf_counter()
    best = trainer.hyperparameter_search(direction="maximize", backend="optuna", n_trials=s["n_trials"],
                                         hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", s["lr"]["low"], s["lr"]["high"], log=True)},
                                         compute_objective=lambda m: m["eval_spearman"],
                                         sampler=optuna.samplers.TPESampler(seed=0), pruner=optuna.pruners.NopPruner())
    end = time.perf_counter()
    print(json.dumps({"imports_s": t_imports, "data_and_trainer_s": t_search - T0 - t_imports, "search_s": end - t_search, "in_process_s": end - T0,
                      "best": {"value": best.objective, "params": best.hyperparameters}, "train_samples": len(train), "eval_samples": len(val),
                      "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not s["cpu"] else "cpu"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
