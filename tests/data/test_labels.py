"""Labels as they come: classes by sorted value or by ``label_names``, multi-label lists and delimited
strings, regression values and scaling, and the errors that say what to set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lbsearch.data.labels import encode_labels
from lbsearch.spec.config import SpecError
from lbsearch.spec.tasks import DataConfig


def _frames(train, validation=None, test=None) -> dict[str, pd.DataFrame]:
    make = lambda labels: pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels})  # noqa: E731
    return {"train": make(train), "validation": make(validation or train[:2]), "test": make(test or train[:2])}


def test_integer_labels_map_by_sorted_value_not_by_value():
    out, info = encode_labels(_frames([2, 1, 2, 2], [1, 2]), DataConfig(), "single_label")
    assert info.names == ["1", "2"] and info.num_outputs == 2  # labels 1 and 2: two classes, no phantom class 0
    assert out["train"].tolist() == [1, 0, 1, 1] and out["validation"].tolist() == [0, 1]
    assert info.counts == {"1": 1, "2": 3}
    out, info = encode_labels(_frames([10, 2, 33]), DataConfig(), "single_label")
    assert info.names == ["2", "10", "33"]  # by value, not as strings


def test_label_names_set_the_order_and_may_name_unseen_classes():
    out, info = encode_labels(_frames(["pos", "neg", "pos"], ["neu", "pos"]), DataConfig(label_names=["neg", "neu", "pos"]), "single_label")
    assert info.names == ["neg", "neu", "pos"]
    assert out["train"].tolist() == [2, 0, 2] and out["validation"].tolist() == [1, 2]
    out, info = encode_labels(_frames([5, 1, 3]), DataConfig(label_names=[5, 3, 1]), "single_label")
    assert out["train"].tolist() == [0, 2, 1]


def test_unseen_class_and_float_and_list_labels_say_what_to_set():
    with pytest.raises(SpecError, match=r"validation has labels not in the train split: \['3'\]; list every class in `data.label_names`"):
        encode_labels(_frames([1, 2, 1], [3, 1]), DataConfig(), "single_label")
    with pytest.raises(SpecError, match=r"labels look like floats \(0\.096, 0\.5\): set `task: regression`") as err:
        encode_labels(_frames([0.096, 0.5, 1.0]), DataConfig(), "single_label")
    assert err.value.field == "data.label_column"
    with pytest.raises(SpecError, match="set `task: multi_label`"):
        encode_labels(_frames([["a"], ["b", "a"], ["b"]]), DataConfig(), "single_label")
    with pytest.raises(SpecError, match=r"test has labels not in the train split: \['-1'\]; -1 marks an unlabelled split: set `data.splits.test: null`"):
        encode_labels(_frames([0, 1, 0], [0, 1], [-1, -1]), DataConfig(), "single_label")  # GLUE's test splits
    out, info = encode_labels(_frames([1.0, 2.0, 1.0]), DataConfig(), "single_label")  # integral floats are classes
    assert info.names == ["1", "2"]


def test_multi_label_lists_and_delimited_strings():
    out, info = encode_labels(_frames([["b", "a"], [], ["c"]], [["a"], ["a", "c"]]), DataConfig(), "multi_label")
    assert info.names == ["a", "b", "c"]
    assert out["train"].tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]] and out["train"].dtype == np.float32
    assert out["validation"].tolist() == [[1, 0, 0], [1, 0, 1]]
    out, info = encode_labels(_frames(["action|comedy", "drama", ""]), DataConfig(label_delimiter="|"), "multi_label")
    assert info.names == ["action", "comedy", "drama"] and out["train"].sum(1).tolist() == [2, 1, 0]
    with pytest.raises(SpecError, match=r"set `data.label_delimiter` to the character between labels") as err:
        encode_labels(_frames(["action|comedy", "drama", "x"]), DataConfig(), "multi_label")
    assert err.value.field == "data.label_delimiter"


def test_regression_values_and_scaling_from_train():
    out, info = encode_labels(_frames([1.0, 3.0, 5.0], [2.5, 0.5]), DataConfig(label_scaling="standard"), "regression")
    assert info.num_outputs == 1 and info.names == ["label"]
    assert info.shift == 3.0 and info.scale == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert out["validation"].tolist() == [2.5, 0.5] and out["train"].dtype == np.float64  # kept in the labels' units
    _, info = encode_labels(_frames([2.0, 4.0, 6.0]), DataConfig(label_scaling="minmax"), "regression")
    assert (info.shift, info.scale) == (2.0, 4.0)
    with pytest.raises(SpecError, match="regression labels must be numbers, train has 'pos'"):
        encode_labels(_frames([1.0, "pos", 2.0]), DataConfig(), "regression")
