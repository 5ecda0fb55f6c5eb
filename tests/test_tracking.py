"""The MLflow layout on a real SQLite store: one parent run per study, nested child runs, params,
tags, metric rows and artifacts; never the environment."""

from lbsearch.tracking import Tracker, flatten, versions


def test_flatten_dots_nested_sections():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": {}}) == {"a.b": 1, "a.c.d": None, "e": {}}


def test_versions_is_an_allow_list():
    assert set(versions()) <= {"python", "platform", "lbsearch", "torch", "transformers", "optuna", "mlflow", "accelerate",
                               "datasets", "pydantic", "pytorch-optimizer", "numpy", "torch.threads", "cuda", "cuda.available"}


def test_parent_is_found_again_and_children_nest_under_it(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    exp = tracker.experiment("s")
    assert tracker.experiment("s") == exp
    parent = tracker.parent_run(exp, "s", {"n_trials": 3})
    tracker.end(parent, "KILLED")
    assert tracker.parent_run(exp, "s", {"n_trials": 3}) == parent == tracker.find_parent("s")
    assert tracker.client.get_run(parent).info.status == "RUNNING"  # resumed
    child = tracker.child_run(exp, parent, "trial-0", {"lbsearch.trial": 0}, {"plan.evals": [320, 640], "optimizer.lr": 1e-3})
    tracker.metric_rows(child, [["eval/loss", 0.7, 1000, 10], ["eval/loss", 0.6, 2000, 20]])
    tracker.artifacts(child, {"config.json": "{}"})
    tracker.tags(child, {"plan.micro_batch": 8})
    tracker.tags(child, {"plan.micro_batch": 4})  # tags may change after a retry; params may not
    tracker.end(child, "FINISHED")
    run = tracker.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["plan.micro_batch"] == "4"
    assert run.data.params == {"plan.evals": "[320, 640]", "optimizer.lr": "0.001"}
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(child, "eval/loss")] == [(10, 0.7), (20, 0.6)]
    assert [a.path for a in tracker.client.list_artifacts(child)] == ["config.json"]
    assert run.info.status == "FINISHED"
