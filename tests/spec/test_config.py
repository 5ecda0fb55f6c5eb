"""The config models: defaults and the rules that tie fields together."""

import pytest
from pydantic import ValidationError

from lbsearch.spec.config import ExperimentConfig, MetricConfig, ModelConfig, ScheduleConfig, StudyConfig
from lbsearch.spec.load import as_recorded


@pytest.mark.default
def test_remote_code_is_off_unless_asked():
    assert ModelConfig().trust_remote_code is False


def test_a_recorded_config_without_a_newer_field_runs_as_it_ran():
    """A trial recorded before ``launcher.pack`` existed ran padded, and ``reproduce`` re-runs it so."""
    now = ExperimentConfig(name="x", launcher={"pack": True}).model_dump(mode="json")
    assert as_recorded(now) == now
    old = {**now, "launcher": {k: v for k, v in now["launcher"].items() if k != "pack"}}
    assert ExperimentConfig.model_validate(as_recorded(old)).launcher.pack is False
    assert "pack" not in old["launcher"]  # the stored record itself is left as it was


def test_metric_direction_follows_the_metric():
    assert MetricConfig(name="loss").direction == "minimize" and MetricConfig(name="f1").direction == "maximize"
    with pytest.raises(ValidationError, match="must be minimized"):
        MetricConfig(name="loss", direction="maximize")


def test_one_warmup_only():
    with pytest.raises(ValidationError, match="only one of"):
        ScheduleConfig(warmup_fraction=0.1, warmup_samples=100)


def test_batch_must_split_over_processes():
    with pytest.raises(ValidationError, match="divisible by `launcher.processes`"):
        ExperimentConfig.model_validate({"name": "x", "train": {"batch_size": 30}, "launcher": {"processes": 4}})


def test_a_ladder_searches_batch_size_and_groups_pruning_by_it():
    study = StudyConfig.model_validate({"name": "s", "experiment": {"name": "x"}, "n_trials": 4, "batch_ladder": [16, 64], "pruner": {"name": "median"},
                                        "search_space": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})
    assert list(study.space) == ["train.batch_size", "optimizer.lr"]
    assert study.space["train.batch_size"].choices == [16, 64] and study.pruner.group_by == "train.batch_size"


@pytest.mark.parametrize("task,default", [("single_label", "accuracy"), ("multi_label", "f1_micro"), ("regression", "rmse")])
def test_each_task_has_a_default_metric_and_its_direction(task, default):
    metric = ExperimentConfig(name="x", task=task).metric
    assert metric.name == default and metric.direction == ("minimize" if default == "rmse" else "maximize")


def test_a_metric_must_belong_to_the_task_and_its_target_to_its_range():
    with pytest.raises(ValidationError, match="`metric.name: accuracy` is not a regression metric"):
        ExperimentConfig(name="x", task="regression", metric={"name": "accuracy"})
    assert ExperimentConfig(name="x", task="regression", metric={"name": "mae"}).metric.direction == "minimize"
    assert MetricConfig(name="mcc", target=-0.5).target == -0.5  # MCC and correlations lie in (-1, 1]
    with pytest.raises(ValidationError, match=r"`target` for auroc must lie in \(0, 1\]"):
        MetricConfig(name="auroc", target=-0.5)


def test_label_options_belong_to_their_task():
    with pytest.raises(ValidationError, match="`data.label_scaling` is for regression"):
        ExperimentConfig(name="x", data={"label_scaling": "standard"})
    with pytest.raises(ValidationError, match="a regression task has none"):
        ExperimentConfig(name="x", task="regression", data={"label_names": ["a", "b"]})
    with pytest.raises(ValidationError, match="`data.label_names` must be distinct"):
        ExperimentConfig(name="x", data={"label_names": [1, "1"]})
