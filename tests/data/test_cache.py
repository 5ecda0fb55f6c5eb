"""Data: the builtin split, local files, label handling, the tokenized cache, offline hub errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lbsearch.data import META_FILE
from lbsearch.data.cache import label_names, load_arrays, prepare_data
from lbsearch.data.sources import load_frames
from lbsearch.spec.config import DataConfig, ExperimentConfig, SpecError

SPLIT = {"validation_fraction": 0.1, "test_fraction": 0.15, "split_seed": 0}
"""The split the sizes below are for."""


def test_rotten_tomatoes_split_is_deduped_disjoint_and_seeded():
    frames, labels, info = load_frames(DataConfig(source="rotten_tomatoes", **SPLIT))
    assert info.names == ["rotten", "fresh"] and info.num_outputs == 2
    sizes = {s: len(f) for s, f in frames.items()}
    assert sum(sizes.values()) == 12752  # 12,808 reviews less 56 duplicate texts
    assert sizes["validation"] == 1275 and sizes["test"] == 1913
    texts = {s: set(f["text"]) for s, f in frames.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    assert 0.55 < labels["train"].mean() < 0.61  # 57.8% fresh (label 1)
    again, _, _ = load_frames(DataConfig(source="rotten_tomatoes", **SPLIT))
    assert again["test"]["text"].tolist() == frames["test"]["text"].tolist()
    other, _, _ = load_frames(DataConfig(source="rotten_tomatoes", **SPLIT | {"split_seed": 1}))
    assert other["test"]["text"].tolist() != frames["test"]["text"].tolist()


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_local_files_with_named_columns_and_string_labels(tmp_path, suffix):
    df = pd.DataFrame({"review": [f"text {i}" for i in range(100)], "sentiment": ["pos" if i % 3 else "neg" for i in range(100)]})
    path = tmp_path / f"data.{suffix}"
    {"csv": lambda: df.to_csv(path, index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(path)}[suffix]()
    frames, labels, info = load_frames(DataConfig(source=str(path), text_column="review", label_column="sentiment"))
    assert info.names == ["neg", "pos"]  # sorted
    assert sum(len(f) for f in frames.values()) == 100
    assert set(labels["train"]) == {0, 1}
    assert (labels["train"][0] == 1) == (int(frames["train"].iloc[0]["text"].split()[1]) % 3 != 0)


def test_presplit_files_and_labels_out_of_range(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    (tmp_path / "validation.csv").write_text("text,label\nv1,0\nv2,1\n")
    (tmp_path / "test.csv").write_text("text,label\nx1,1\nx2,2\n")
    cfg = DataConfig(files={s: str(tmp_path / f"{s}.csv") for s in ("train", "validation", "test")})
    with pytest.raises(SpecError, match=r"test has labels not in the train split: \['2'\]; list every class in `data.label_names`"):
        load_frames(cfg)


def test_hub_id_offline_names_the_offline_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SpecError) as err:
        load_frames(DataConfig(source="imdb"))
    assert "offline choices: `source: rotten_tomatoes`" in str(err.value)
    assert "\n" not in str(err.value)


def test_tokenized_once_then_cached(tmp_path):
    exp = ExperimentConfig(name="t", data={"max_train_samples": 300, "max_eval_samples": 50},
                           model={"source": "random", "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}})
    first = prepare_data(exp, tmp_path)
    stamp = (first.path / "train.npz").stat().st_mtime_ns
    second = prepare_data(exp, tmp_path)
    assert second.path == first.path and (first.path / "train.npz").stat().st_mtime_ns == stamp
    assert first.sizes == {"train": 300, "validation": 50, "test": 50} and first.num_labels == 2
    assert first.labels["names"] == ["rotten", "fresh"] and first.labels["task"] == "single_label"
    assert first.vocab_size == 30522 and first.pad_id == 0
    train = load_arrays(first.path, "train")
    assert len(train) == 300 and all(len(x) <= exp.data.max_length for x in train.ids)
    assert all(x[0] == 101 and x[-1] == 102 for x in train.ids)  # [CLS] ... [SEP]
    # a different tokenization setting is a different cache entry
    longer = prepare_data(exp.model_copy(update={"data": exp.data.model_copy(update={"max_length": 16})}), tmp_path)
    assert longer.path != first.path and longer.digest == first.digest
    assert json.loads((first.path / META_FILE).read_text())["digest"] == first.digest
    assert not list(tmp_path.glob(".tmp-*"))


def test_label_names_in_output_order(tmp_path):
    df = pd.DataFrame({"text": [f"text {i}" for i in range(60)], "label": ["pos" if i % 3 else "neg" for i in range(60)]})
    df.to_csv(tmp_path / "s.csv", index=False)
    df.assign(label=[i % 3 for i in range(60)]).to_csv(tmp_path / "i.csv", index=False)
    cache = tmp_path / "prepared"
    names = lambda source: label_names(prepare_data(ExperimentConfig(name="x", data={"source": source}), cache))  # noqa: E731
    assert names(str(tmp_path / "s.csv")) == ["neg", "pos"]  # sorted, as the ids were given
    assert names(str(tmp_path / "i.csv")) == ["0", "1", "2"]
    assert names("rotten_tomatoes") == ["rotten", "fresh"]  # label 1 = fresh
def test_saved_dataset_folder_with_named_splits_and_a_relative_path(tmp_path):
    """A `save_to_disk` folder, named relative to the spec file; its `dev` split serves as validation."""
    import datasets

    from lbsearch.spec.load import load_experiment

    rows = {"premise": [f"p{i}" for i in range(60)], "hypothesis": [f"h{i}" for i in range(60)], "label": [i % 3 + 1 for i in range(60)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "dev": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "nli")
    (tmp_path / "exp.yaml").write_text("name: nli\ndata:\n  source: nli\n  splits: {validation: dev}\n"
                                       "  text_column: premise\n  text_pair_column: hypothesis\n  validation_fraction: 0.1\n")
    exp = load_experiment(tmp_path / "exp.yaml")
    assert exp.data.source == str(tmp_path / "nli")
    frames, labels, info = load_frames(exp.data)
    assert info.names == ["1", "2", "3"]
    assert len(frames["validation"]) == 60 and frames["validation"]["text_pair"].tolist()[:2] == ["h0", "h1"]
    assert len(frames["train"]) + len(frames["test"]) == 60  # test carved out of train
    carved, _, _ = load_frames(exp.data.model_copy(update={"splits": {"validation": None}}))  # null: carve it out of train
    assert len(carved["validation"]) == 6 and len(carved["train"]) + len(carved["test"]) + 6 == 60
    with pytest.raises(SpecError, match=r"has no split 'valid' \(splits: train, dev\)") as err:
        load_frames(exp.data.model_copy(update={"splits": {"validation": "valid"}}))
    assert err.value.field == "data.splits.validation"


def test_text_pairs_are_tokenized_as_pairs_truncated_longest_first(tmp_path):
    long = " ".join(["word"] * 40)
    (tmp_path / "pairs.csv").write_text("a,b,label\n" + "".join(f"short {i},{long},{i % 2}\n" for i in range(40)))
    exp = ExperimentConfig(name="p", data={"source": str(tmp_path / "pairs.csv"), "text_column": "a", "text_pair_column": "b", "max_length": 16,
                                           "max_train_samples": 30, "max_eval_samples": 5},
                           model={"source": "random", "config": {"hidden_size": 32}})
    train = load_arrays(prepare_data(exp, tmp_path / "prepared").path, "train")
    ids = train.ids[0].tolist()
    assert len(ids) == 16 and ids.count(102) == 2  # [CLS] a [SEP] b [SEP]
    assert ids[1:4] != [2773] * 3 and ids[-2] == 2773  # the short text kept whole, the long one cut ("word" is 2773)
    first = ids.index(102) + 1
    assert train.types[0].tolist() == [0] * first + [1] * (16 - first)  # segment ids: BERT's token_type_ids
    assert load_arrays(prepare_data(ExperimentConfig(name="s", model=exp.model), tmp_path / "prepared").path, "train").types is None


def test_hub_subset_offline_keeps_the_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SpecError, match=r"cannot load hub dataset 'glue \(sst2\)'.*offline choices") as err:
        load_frames(DataConfig(source="glue", subset="sst2", splits={"validation": "validation"}))
    assert "\n" not in str(err.value)
