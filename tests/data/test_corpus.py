"""Language-model data: documents split whole, packed without padding, every token once; the token
fields of an experiment; masking; the unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lbsearch.data.cache import load_arrays, prepare_data
from lbsearch.data.corpus import load_documents, pack, tokenize_documents, train_tokenizer, unigram_entropy
from lbsearch.data.tokenizer import load_tokenizer
from lbsearch.spec.config import ExperimentConfig
from lbsearch.spec.plan import make_plan
from lbsearch.trial.lm import IGNORE, mask_tokens

TINY_GPT2 = {"source": "random", "model_type": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32}}


def _lm(tmp_path, **data) -> ExperimentConfig:
    text = "\n\n".join(f"Document number {i} says word{i} and then more words about topic {i % 7}." * (1 + i % 3) for i in range(120))
    (tmp_path / "corpus.txt").write_text(text)
    return ExperimentConfig.model_validate({"name": "lm", "task": "causal_lm", "model": TINY_GPT2,
                                            "data": {"source": str(tmp_path / "corpus.txt"), "max_length": 16} | data,
                                            "train": {"batch_size": 4, "budget_tokens": 640, "eval_every_tokens": 320}})


@pytest.mark.parametrize("trained", [False, True])
def test_packing_keeps_every_token_once_and_splits_apart(tmp_path, trained):
    exp = _lm(tmp_path, **({"tokenizer_vocab": 300} if trained else {}))
    prepared = prepare_data(exp, tmp_path / "prepared")
    docs = load_documents(exp.data)
    assert sum(len(d) for d in docs.values()) == 120 and not set(docs["train"]) & set(docs["validation"])
    tok = train_tokenizer(docs["train"], 300) if trained else load_tokenizer(exp.model)
    sep = prepared.corpus["separator_id"]
    for split in ("train", "validation", "test"):
        stream = np.array([t for d in tokenize_documents(docs[split], tok) for t in (*d, sep)])
        packed = np.concatenate(load_arrays(prepared.path, split).ids)
        # the split's own documents in order, each token exactly once, up to the last partial sequence
        assert len(packed) == len(stream) // 16 * 16 and len(stream) - len(packed) < 16
        assert np.array_equal(packed, stream[: len(packed)])
    assert prepared.sizes["train"] == len(load_arrays(prepared.path, "train").ids)
    assert (prepared.path / "tokenizer").is_dir() == trained


def test_token_fields_set_their_sample_twins(tmp_path):
    exp = _lm(tmp_path)
    assert (exp.train.budget_samples, exp.train.eval_every_samples) == (40, 20)  # 640 and 320 tokens of 16
    plan = make_plan(exp)
    assert plan.batch_tokens == 64 and plan.params()["plan.budget_tokens"] == 640
    assert "64 tokens: sequences of 16" in str(plan)
    warm = ExperimentConfig.model_validate(exp.model_dump(mode="json") | {"schedule": {"warmup_tokens": 160}})
    assert warm.schedule.warmup_samples == 10 and warm.schedule.warmup_fraction is None
    again = ExperimentConfig.model_validate(warm.model_dump(mode="json"))  # re-validating a dumped config is stable
    assert again.train.budget_samples == 40 and again.schedule.warmup_samples == 10
    with pytest.raises(ValueError, match="budget_tokens.*language-model"):
        ExperimentConfig.model_validate({"name": "x", "train": {"budget_tokens": 1000}})
    with pytest.raises(ValueError, match="one batch"):
        ExperimentConfig.model_validate(exp.model_dump(mode="json") | {"train": {"batch_size": 4, "budget_tokens": 32}})


def test_masking_follows_the_bert_recipe_and_repeats_with_its_seed():
    ids = np.random.default_rng(0).integers(5, 1000, (200, 64))
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), 0.15, mask_id=3, vocab_size=1000)
    chosen = labels != IGNORE
    assert abs(chosen.mean() - 0.15) < 0.01
    assert np.array_equal(labels[chosen], ids[chosen]) and np.array_equal(inputs[~chosen], ids[~chosen])
    masked, kept = (inputs[chosen] == 3).mean(), (inputs[chosen] == ids[chosen]).mean()
    assert abs(masked - 0.8) < 0.03 and 0.08 < kept < 0.13  # 10% kept, plus random draws that hit the same token
    again = mask_tokens(ids, np.random.default_rng(1), 0.15, mask_id=3, vocab_size=1000)
    assert np.array_equal(again[0], inputs) and np.array_equal(again[1], labels)


def test_unigram_entropy():
    assert unigram_entropy(np.array([1, 2, 3, 4] * 5))["unigram_entropy"] == pytest.approx(math.log(4))
    out = unigram_entropy(np.array([1, 1, 2, 2]), np.array([1, 2, 3]))  # add-one over {1, 2, 3}: 3/7, 3/7, 1/7
    assert out["unigram_cross_entropy"] == pytest.approx(-(2 * math.log(3 / 7) + math.log(1 / 7)) / 3)


def test_pack_drops_only_the_last_partial_sequence():
    out = pack([[1, 2, 3], [4, 5]], sep=0, length=3)
    assert out.tolist() == [[1, 2, 3], [0, 4, 5]]  # the trailing separator is the partial sequence
