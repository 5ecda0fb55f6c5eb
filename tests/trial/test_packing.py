"""Packing (``lbsearch.trial.packing``): the layout keeps every token once, and a packed micro-batch gives the
logits and gradients of the padded one for every encoder family that takes 4D masks and positions;
the ones that do not fail the trial's check (and train padded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbsearch.data.sources import load_frames
from lbsearch.data.tokenizer import load_tokenizer
from lbsearch.spec.config import DataConfig, ModelConfig
from lbsearch.trial.batching import pad
from lbsearch.trial.model import build_model
from lbsearch.trial.packing import check, pack, pool_segments, position_offset, unsupported

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
PACKABLE = {"bert": {}, "roberta": {}, "xlm-roberta": {}, "distilbert": {"dim": 32, "n_heads": 2, "hidden_dim": 64},
            "electra": {"embedding_size": 32}, "albert": {"embedding_size": 32}, "modernbert": {"global_attn_every_n_layers": 1}}


@pytest.fixture(scope="module")
def reviews() -> list[np.ndarray]:
    """Sixteen real reviews through the real tokenizer, 5 to 48 tokens (the builtin reviews' split named: which reviews)."""
    frames, _, _ = load_frames(DataConfig(max_train_samples=64, validation_fraction=0.1, test_fraction=0.15, split_seed=0))
    tok = load_tokenizer(ModelConfig())
    ids = tok(list(frames["train"]["text"][:16]), truncation=True, max_length=48)["input_ids"]
    return [np.asarray(x, dtype=np.int64) for x in ids]


def test_pack_lays_every_token_once_in_rows_no_wider_than_the_width():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 1000, size=n) for n in rng.integers(1, 40, size=50)] + [rng.integers(1, 1000, size=70)]  # one too long
    types = [rng.integers(0, 2, size=len(s)) for s in seqs]
    b = {k: v.numpy() for k, v in pack(seqs, 48, 0, "cpu", types, first_position=2, multiple=8).items()}
    assert b["input_ids"].shape[1] == 72  # the longest row (the 70-token sequence alone), rounded up to 8
    for i, s in enumerate(seqs):
        r, cols = np.nonzero(b["segment_ids"] == i)
        assert len(set(r)) == 1 and np.array_equal(cols, np.arange(cols[0], cols[0] + len(s)))  # contiguous, in one row
        assert np.array_equal(b["input_ids"][r, cols], s) and np.array_equal(b["token_type_ids"][r, cols], types[i])
        assert np.array_equal(b["position_ids"][r, cols], np.arange(2, 2 + len(s)))
    real = b["segment_ids"] >= 0
    assert real.sum() == sum(map(len, seqs)) and (b["input_ids"][~real] == 0).all()
    fill = real.sum(1)
    assert (fill[fill != 70] <= 48).all() and len(fill) <= -(-(real.sum() - 70) // 48) + 2  # first-fit decreasing: full rows


def b_lengths(batch) -> list[int]:
    return batch["segment_lengths"].tolist()


def test_segment_pooling_is_the_mean_or_last_token_of_each_segment():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    seg, lengths = torch.tensor([[1, 1, 0, -1], [2, 2, 2, -1]]), torch.tensor([1, 2, 3])
    assert pool_segments(hidden, seg, "mean", lengths).tolist() == [[6, 7, 8], [1.5, 2.5, 3.5], [15, 16, 17]]
    assert pool_segments(hidden, seg, "last", lengths).tolist() == [[6, 7, 8], [3, 4, 5], [18, 19, 20]]
    assert b_lengths(pack([np.arange(3), np.arange(5)], 8, 0, "cpu")) == [3, 5]  # the segments' lengths travel with the batch


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("family", PACKABLE)
def test_packed_and_padded_give_the_same_logits_and_gradients(family, pooling, reviews):
    torch.manual_seed(0)
    cfg = ModelConfig(source="random", model_type=family, pooling=pooling, config=TINY | PACKABLE[family],
                      gradient_checkpointing=False, freeze_embeddings=False)  # every parameter's gradient, as the model computes it
    model = build_model(cfg, "single_label", ["rotten", "fresh"], 30522, 0).eval()  # eval: no dropout, the same function
    assert position_offset(model) == (1 if "roberta" in family else 0)  # RoBERTa counts from padding_idx + 1 (pad id 0 here)
    grads = []
    for batch in (pad(reviews, 0, "cpu"), pack(reviews, 48, 0, "cpu", first_position=position_offset(model))):
        if "segment_ids" in batch:
            assert batch["input_ids"].numel() < 0.8 * pad(reviews, 0, "cpu")["input_ids"].numel()  # less padding
        model.zero_grad()
        logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits, torch.arange(16) % 2).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (padded, g_padded), (packed, g_packed) = grads
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    assert len(g_packed) == len(g_padded)
    for a, b in zip(g_packed, g_padded):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert check(model, reviews, 48, 0) is None


def test_bert_text_pairs_pack_with_their_segment_ids(reviews):
    torch.manual_seed(0)
    model = build_model(ModelConfig(source="random", pooling="mean", config=TINY), "single_label", ["a", "b"], 30522, 0)
    types = [(np.arange(len(s)) >= len(s) // 2).astype(np.int64) for s in reviews]
    assert model.training
    assert check(model, reviews, 48, 0, types) is None
    assert model.training  # the check leaves the model in the mode it came in


@pytest.mark.parametrize(("family", "why"), [("gpt2", "differ from padded ones"), ("deberta-v2", "RuntimeError")])
def test_a_model_that_ignores_the_block_mask_fails_the_check(family, why, reviews):
    torch.manual_seed(0)
    config = {"n_embd": 32, "n_layer": 2, "n_head": 2} if family == "gpt2" else TINY
    model = build_model(ModelConfig(source="random", model_type=family, pooling="last", config=config), "regression", ["y"], 30522, 0)
    reason = check(model, reviews, 48, 0)
    assert reason is not None and why in reason
    # the longest reviews alone would fill a row each and test nothing: the check cuts them to share rows
    longest = sorted(reviews, key=len)[-4:]
    assert all(2 * len(s) > 48 for s in longest)
    assert check(model, longest, 48, 0) is not None


def test_what_cannot_be_packed_is_known_before_running_it():
    from transformers import AutoConfig

    gpt2, modernbert = AutoConfig.for_model("gpt2"), AutoConfig.for_model("modernbert")  # ModernBERT: sliding layers, window 64
    assert "decoder" in unsupported(gpt2, 64)
    assert "sliding-window" in unsupported(modernbert, 128) and unsupported(modernbert, 64) is None
    bert = AutoConfig.for_model("bert")
    assert unsupported(bert, 512) is None
    bert._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in unsupported(bert, 512)
