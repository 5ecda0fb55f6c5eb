"""The study as MLflow tells it, through a real SQLite MLflow store and real Optuna studies: the
experiment's description, the datasets of each split, the best-trial tag that moves, Optuna's plots."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import SPECS

from lbsearch.data.cache import PreparedData
from lbsearch.spec.config import DataConfig
from lbsearch.spec.load import load_study, parse_set
from lbsearch.tracking.story import BEST_TAG, HISTORY_PNG, INTERMEDIATE_PNG, KIND, PARALLEL_PLOT_PNG, PARAM_IMPORTANCES_PNG, STUDY_PLOTS, dataset_inputs, description, mark_best, study_plots
from lbsearch.tracking.tags import STUDY
from lbsearch.tracking.tracker import Tracker


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)


def _prepared(tmp_path: Path) -> PreparedData:
    return PreparedData(path=tmp_path, digest="0123456789abcdef", num_labels=2, sizes={"train": 90, "validation": 5, "test": 5}, pad_id=0, vocab_size=10,
                        labels={"task": "single_label", "names": ["1", "5"]})


def test_description_names_the_metric_the_space_and_the_spec():
    cfg, raw = load_study(SPECS / "tiny_study.yaml", parse_set(["n_trials=5"]))
    text = description(cfg, raw)
    assert text.startswith("**lbsearch study `tiny-study`**: 5 trials of `tiny`")
    assert "validation **accuracy** (maximize)" in text
    assert "| `train.batch_size` | one of [16, 32, 64] |" in text and "| `optimizer.lr` | float 0.0001 .. 0.003 (log) |" in text
    assert "budget_samples: 960" in text and len(text) <= 5000  # the experiment spec, within MLflow's tag limit


def test_every_experiment_lbsearch_creates_is_a_model_training_one(tracker):
    exp = tracker.client.get_experiment(tracker.experiment("some-study"))
    assert exp.tags["mlflow.experimentKind"] == KIND["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_inputs_of_local_files_read_back_with_name_digest_source_and_context(tmp_path, tracker):
    files = {s: str(tmp_path / f"reviews_{s}.csv") for s in ("train", "validation")}  # test carved from train
    data = DataConfig(files=files, text_column="review", label_column="stars", split_seed=0, max_length=64)
    run = tracker.child_run(tracker.experiment("x"), None, "trial-0", {}, {})
    tracker.datasets(run, dataset_inputs(data, _prepared(tmp_path)))
    got = {i.tags[0].value: i.dataset for i in tracker.client.get_run(run).inputs.dataset_inputs}
    assert set(got) == {"training", "validation", "test"}
    assert {d.name for d in got.values()} == {"reviews_train.train", "reviews_train.validation", "reviews_train.test"}
    assert {d.digest for d in got.values()} == {"0123456789abcdef"} and {d.source_type for d in got.values()} == {"local"}
    assert json.loads(got["validation"].source)["uri"].endswith("reviews_validation.csv")
    assert json.loads(got["test"].source)["uri"].endswith("reviews_train.csv")
    assert json.loads(got["training"].profile) == {"num_rows": 90, "task": "single_label", "num_labels": 2, "labels": ["1", "5"], "split_seed": 0,
                                                   "max_length": 64}
    assert [c["name"] for c in json.loads(got["training"].schema)["mlflow_colspec"]] == ["review", "stars"]


def test_dataset_inputs_of_a_hub_dataset_name_the_hub_id_and_split(tmp_path):
    inputs = dataset_inputs(DataConfig(source="stanfordnlp/imdb"), _prepared(tmp_path))
    assert [i.dataset.name for i in inputs] == ["imdb.train", "imdb.validation", "imdb.test"]
    assert {i.dataset.source_type for i in inputs} == {"hugging_face"}
    assert json.loads(inputs[1].dataset.source)["path"] == "stanfordnlp/imdb" and json.loads(inputs[1].dataset.source)["split"] == "validation"


def test_the_best_tag_moves_to_the_new_best_run(tracker):
    exp = tracker.experiment("s")
    runs = [tracker.child_run(exp, None, f"trial-{i}", {STUDY: "s"}, {}) for i in range(2)]
    other = tracker.child_run(exp, None, "trial-0", {STUDY: "another"}, {})
    tracker.tags(other, {BEST_TAG: "true"})  # another study's best stays
    mark_best(tracker, exp, "s", runs[0])
    mark_best(tracker, exp, "s", runs[0])
    assert tracker.run_ids(exp, f"tags.`{BEST_TAG}` = 'true' and tags.`lbsearch.study` = 's'") == [runs[0]]
    mark_best(tracker, exp, "s", runs[1])
    assert tracker.run_ids(exp, f"tags.`{BEST_TAG}` = 'true' and tags.`lbsearch.study` = 's'") == [runs[1]]
    assert BEST_TAG in tracker.client.get_run(other).data.tags


def test_a_best_tag_another_worker_already_took_off_is_not_an_error(tracker):
    """Two workers of one study both see run a tagged best and both take the tag off: the second finds it gone."""
    exp = tracker.experiment("s")
    a, b = (tracker.child_run(exp, None, f"trial-{i}", {STUDY: "s"}, {}) for i in range(2))
    mark_best(tracker, exp, "s", a)
    tracker.untag(a, BEST_TAG)  # what the other worker did between this one's search and its untag
    tracker.untag(a, BEST_TAG)
    mark_best(tracker, exp, "s", b)
    assert tracker.run_ids(exp, f"tags.`{BEST_TAG}` = 'true' and tags.`lbsearch.study` = 's'") == [b]


def _study(n: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        t = study.ask()
        lr, b = t.suggest_float("optimizer.lr", 1e-4, 1e-2, log=True), t.suggest_categorical("train.batch_size", [16, 64])
        for samples in (320, 640):
            t.report(0.5 + 10 * lr * samples / 640 - b / 1000, samples)
        study.tell(t, 0.5 + 10 * lr - b / 1000)
    return study


def test_study_plots_are_pngs_with_the_metric_on_their_axes(tmp_path):
    made = study_plots(_study(6), tmp_path, "accuracy")
    assert list(made) == list(STUDY_PLOTS) == [HISTORY_PNG, PARAM_IMPORTANCES_PNG, PARALLEL_PLOT_PNG, INTERMEDIATE_PNG]
    assert not any(v.startswith("not drawn") for v in made.values()), made
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in made)
    assert "`intermediate_values.png`: Validation accuracy at each evaluation, against samples seen" in (tmp_path / "README.md").read_text()


def test_a_study_too_small_to_plot_says_why(tmp_path):
    made = study_plots(_study(1), tmp_path, "loss")
    assert made[PARAM_IMPORTANCES_PNG].startswith("not drawn:")
    assert (tmp_path / HISTORY_PNG).is_file()
