"""The torch side of language-model trials: batches of packed sequences, their loss, and exact
evaluation of a fixed set of held-out tokens across ranks.

``causal_lm`` predicts every token from the ones before it (the loss over positions 2..L of each
sequence). ``masked_lm`` follows BERT: ``data.mlm_probability`` of the tokens are chosen; of those 80%
become the mask token, 10% a random token and 10% stay; the loss is over the chosen tokens. Training
masks are drawn per micro-batch from a generator seeded by (seed, step, first sample), so a re-run
masks the same tokens; evaluation masks are drawn once per sequence and never change, so every
evaluation scores the same held-out tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lbsearch.trial.batching import to_device

__all__ = ["IGNORE", "mask_tokens", "lm_batch", "lm_loss", "predicted", "LMEvaluator", "build_lm"]

IGNORE = -100
"""The label of a position that is not predicted (``cross_entropy``'s ``ignore_index``)."""


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, probability: float, mask_id: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of ``(n, L)`` token ids: the corrupted inputs and the labels (``IGNORE`` where not chosen)."""
    chosen = rng.random(ids.shape) < probability
    labels = np.where(chosen, ids, IGNORE)
    action = rng.random(ids.shape)
    inputs = np.where(chosen & (action < 0.8), mask_id, ids)
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    inputs = np.where(randomised, rng.integers(0, vocab_size, ids.shape), inputs)
    return inputs.astype(np.int64), labels.astype(np.int64)


def lm_batch(task: str, seqs: np.ndarray, device, rng: np.random.Generator | None = None, mlm: dict | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs and targets of ``(n, L)`` packed sequences. No padding, so no attention mask: given an
    all-ones mask, transformers would read it on the host (``padding_mask.all()``) to drop it, a host sync
    per forward."""
    ids = np.asarray(seqs, dtype=np.int64)
    if task == "masked_lm":
        ids, targets = mask_tokens(ids, rng, mlm["probability"], mlm["mask_id"], mlm["vocab_size"])
    else:
        targets = ids
    return {"input_ids": to_device(ids, device)}, to_device(targets, device)


def lm_loss(task: str, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the predicted tokens: the next token (causal) or the chosen ones (masked)."""
    if task == "causal_lm":
        logits, targets = logits[:, :-1], targets[:, 1:]
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction=reduction)


def predicted(task: str, targets: torch.Tensor) -> int:
    """How many tokens a batch's loss averages over."""
    return int((targets[:, 1:] if task == "causal_lm" else targets).ne(IGNORE).sum())


class LMEvaluator:
    """Loss and perplexity over a split's packed sequences: each rank scores a disjoint shard, the
    summed losses and token counts of all ranks are added, so the value equals the 1-process one.
    Masked-LM masks are drawn once per sequence (seeded by ``seed`` and its index)."""

    def __init__(self, split, task: str, micro_batch: int, rank: int, world: int, seed: int, mlm: dict | None = None) -> None:
        self.task, self.mb = task, micro_batch
        index = np.arange(len(split.ids))[rank::world]
        self.seqs = np.stack([split.ids[i] for i in index]) if len(index) else np.zeros((0, 1), np.int64)
        self.masks = None
        if task == "masked_lm":
            pairs = [mask_tokens(self.seqs[j : j + 1], np.random.default_rng([seed, int(i)]), mlm["probability"], mlm["mask_id"],
                                 mlm["vocab_size"]) for j, i in enumerate(index)]
            self.masks = (np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])) if pairs else None

    @torch.no_grad()
    def __call__(self, accelerator, model, pad_id: int = 0) -> dict[str, float]:
        from lbsearch.trial.distributed import sum_over_ranks

        model.eval()
        total = count = 0.0
        for i in range(0, len(self.seqs), self.mb):
            ids = self.seqs[i : i + self.mb] if self.masks is None else self.masks[0][i : i + self.mb]
            inputs, targets = lm_batch("causal_lm", ids, accelerator.device)  # masks are already applied
            if self.masks is not None:
                targets = torch.from_numpy(self.masks[1][i : i + self.mb]).to(accelerator.device)
            logits = model(**inputs).logits
            total += float(lm_loss(self.task, logits, targets, reduction="sum"))
            count += predicted(self.task, targets)
        model.train()
        total, count = sum_over_ranks(accelerator, [total, count])
        loss = total / max(count, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def build_lm(task: str, config, source: str | None, trust_remote_code: bool = False):
    """A causal or masked language model: from ``config`` (random init) or pretrained from ``source``."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForMaskedLM
    try:
        model = auto.from_config(config, trust_remote_code=trust_remote_code) if source is None else \
            auto.from_pretrained(source, config=config, trust_remote_code=trust_remote_code)
        # batches are packed, never padded (``lm_batch``), and have no mask: with a pad token set, a decoder's
        # forward would look for it in every batch's first and last column (a host read per forward) to warn
        model.config.pad_token_id = None
        return model
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        from lbsearch.spec import SpecError

        kind = "causal (decoder: gpt2, llama, ...)" if task == "causal_lm" else "masked (encoder: bert, roberta, ...)"
        raise SpecError(None, "model.model_type", f"{type(config).__name__} has no {kind} language-model head in transformers") from None
