"""Labels as they come, turned into what the task trains on.

- single-label: one class per row; integers map to 0..K-1 by their sorted values (labels 1 and 2 are
  two classes), strings in sorted order, unless ``label_names`` gives the order;
- multi-label: a list of classes per row, or a string split at ``label_delimiter``; a 0/1 matrix;
- regression: numbers; the model learns them shifted and scaled (``label_scaling``).

The mapping (``LabelInfo``) is stored with the prepared data, logged to MLflow and written into the
model config as ``id2label`` / ``label2id``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lbsearch.spec import DataConfig, SpecError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LabelInfo", "encode_labels"]

_FIELD = "data.label_column"


@dataclass
class LabelInfo:
    task: str
    names: list[str]
    """Class names in the order of the model's outputs; regression: the label column."""
    shift: float = 0.0
    scale: float = 1.0
    """Regression: the model's target is (y - shift) / scale."""
    counts: dict[str, int] = field(default_factory=dict)
    """Train rows per class (regression: none)."""

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key(value: Any) -> str:
    """A class as written in the data: 2 and 2.0 are "2"."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return str(int(value))
    return str(value)


def _sorted(keys: set[str]) -> list[str]:
    """Numbers by value, anything else as strings."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _examples(values) -> str:
    return ", ".join(repr(v) for v in list(dict.fromkeys(values))[:3])


def _class_index(cfg: DataConfig, seen: set[str], task: str) -> dict[str, int]:
    names = [_key(n) for n in cfg.label_names] if cfg.label_names is not None else _sorted(seen)
    index = {n: i for i, n in enumerate(names)}
    need = 2 if task == "single_label" else 1
    if len(index) < need:
        raise SpecError(None, _FIELD, f"need at least {need} classes, got {len(index)}: {names}")
    return index


def _check_known(split: str, keys: set[str], index: dict[str, int], cfg: DataConfig) -> None:
    unknown = _sorted(keys - set(index))
    if unknown:
        where = "`data.label_names`" if cfg.label_names is not None else "the train split"
        fix = (f"-1 marks an unlabelled split: set `data.splits.{split}: null` to carve it out of train" if unknown == ["-1"]
               else "list every class in `data.label_names`")
        raise SpecError(None, _FIELD, f"{split} has labels not in {where}: {unknown[:5]}; {fix}")


def _single(frames: dict[str, "pd.DataFrame"], cfg: DataConfig) -> tuple[dict[str, np.ndarray], LabelInfo]:
    import pandas as pd

    for split, df in frames.items():
        col = df["label"]
        if col.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            raise SpecError(None, _FIELD, f"{split} labels are lists: set `task: multi_label`")
        if pd.api.types.is_float_dtype(col) and not col.map(float.is_integer).all():
            found = _examples(sorted(col[~col.map(float.is_integer)].round(4)))
            raise SpecError(None, _FIELD, f"labels look like floats ({found}): set `task: regression`")
    keys = {s: df["label"].map(_key) for s, df in frames.items()}
    index = _class_index(cfg, set(keys["train"]), "single_label")
    out = {}
    for split, k in keys.items():
        _check_known(split, set(k), index, cfg)
        out[split] = k.map(index).to_numpy(np.int64)
    counts = np.bincount(out["train"], minlength=len(index))
    return out, LabelInfo("single_label", list(index), counts={n: int(c) for n, c in zip(index, counts)})


def _label_set(value: Any, delimiter: str | None, split: str) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_key(v) for v in value]
    if isinstance(value, str):
        if delimiter is None:
            raise SpecError(None, "data.label_delimiter", f"multi-label {split} labels are strings (e.g. {value!r}): set "
                            "`data.label_delimiter` to the character between labels (e.g. \"|\"), or give lists (JSON Lines, Parquet)")
        return [p.strip() for p in value.split(delimiter) if p.strip()]
    return [_key(value)]


def _multi(frames: dict[str, "pd.DataFrame"], cfg: DataConfig) -> tuple[dict[str, np.ndarray], LabelInfo]:
    order = sorted(frames, key=lambda s: s != "train")  # an error names train first
    sets = {s: [_label_set(v, cfg.label_delimiter, s) for v in frames[s]["label"]] for s in order}
    index = _class_index(cfg, {k for row in sets["train"] for k in row}, "multi_label")
    out = {}
    for split, rows in sets.items():
        _check_known(split, {k for row in rows for k in row}, index, cfg)
        matrix = np.zeros((len(rows), len(index)), dtype=np.float32)
        for i, row in enumerate(rows):
            matrix[i, [index[k] for k in row]] = 1.0
        out[split] = matrix
    counts = out["train"].sum(0)
    return out, LabelInfo("multi_label", list(index), counts={n: int(c) for n, c in zip(index, counts)})


def _regression(frames: dict[str, "pd.DataFrame"], cfg: DataConfig) -> tuple[dict[str, np.ndarray], LabelInfo]:
    import pandas as pd

    out = {}
    for split, df in frames.items():
        values = pd.to_numeric(df["label"], errors="coerce")
        bad = df["label"][values.isna()]
        if len(bad):
            raise SpecError(None, _FIELD, f"regression labels must be numbers, {split} has {_examples(bad)}")
        out[split] = values.to_numpy(np.float64)
    y = out["train"]
    if cfg.label_scaling == "standard":
        shift, scale = float(y.mean()), float(y.std())
    elif cfg.label_scaling == "minmax":
        shift, scale = float(y.min()), float(y.max() - y.min())
    else:
        shift, scale = 0.0, 1.0
    return out, LabelInfo("regression", [cfg.label_column], shift, scale if scale > 0 else 1.0)


def encode_labels(frames: dict[str, "pd.DataFrame"], cfg: DataConfig, task: str) -> tuple[dict[str, np.ndarray], LabelInfo]:
    """Each split's labels as the task's arrays (int64 classes, a float32 0/1 matrix, float64 values) and the mapping."""
    if task != "multi_label" and any(df["label"].map(_is_missing).any() for df in frames.values()):
        raise SpecError(None, _FIELD, "the label column has missing values")
    return {"single_label": _single, "multi_label": _multi, "regression": _regression}[task](frames, cfg)
