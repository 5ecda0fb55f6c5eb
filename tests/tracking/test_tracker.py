"""The MLflow layout on a real SQLite store: one parent run per study, nested child runs, params,
tags, metric rows and artifacts; never the environment."""


from lbsearch.spec import EVAL, PROGRESS_STEP, TRAIN_LOSS
from lbsearch.tracking import TRIAL
from lbsearch.tracking.tracker import Tracker, flatten, versions


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
    child = tracker.child_run(exp, parent, "trial-0", {TRIAL: 0}, {"plan.evals": [320, 640], "optimizer.lr": 1e-3})
    tracker.metric_rows(child, [[EVAL + "loss", 0.7, 1000, 10], [EVAL + "loss", 0.6, 2000, 20]])
    tracker.artifacts(child, {"config.json": "{}"})
    tracker.tags(child, {"plan.micro_batch": 8})
    tracker.tags(child, {"plan.micro_batch": 4})  # tags may change after a retry; params may not
    tracker.end(child, "FINISHED")
    run = tracker.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["plan.micro_batch"] == "4"
    assert run.data.params == {"plan.evals": "[320, 640]", "optimizer.lr": "0.001"}
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(child, EVAL + "loss")] == [(10, 0.7), (20, 0.6)]
    assert [a.path for a in tracker.client.list_artifacts(child)] == ["config.json"]
    assert run.info.status == "FINISHED"


def test_copy_metrics_cuts_at_the_optimizer_step_in_samples_seen(tmp_path):
    """A resumed trial's run takes its earlier run's curves up to the checkpoint's optimizer step; the
    curves are at samples seen (B = 32 here), which the run's own ``progress/step`` translates."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    exp = tracker.experiment("s")
    src, dst, old, old_dst = (tracker.child_run(exp, None, f"trial-{i}", {}, {}) for i in range(4))
    tracker.metric_rows(src, [row for s in range(1, 7) for row in ([PROGRESS_STEP, s, 1000 + s, 32 * s], [TRAIN_LOSS, 1.0 / s, 1000 + s, 32 * s])]
                        + [[EVAL + "loss", 0.5, 1003, 96], [EVAL + "loss", 0.4, 1006, 192], ["system/cpu_utilization_percentage", 9.0, 1001, 0]])
    tracker.copy_metrics(src, dst, 3)  # a checkpoint at step 3: 96 samples seen
    hist = {k: [(m.step, m.value) for m in sorted(tracker.client.get_metric_history(dst, k), key=lambda m: m.step)]
            for k in (PROGRESS_STEP, TRAIN_LOSS, EVAL + "loss", "system/cpu_utilization_percentage")}
    assert hist == {PROGRESS_STEP: [(32, 1), (64, 2), (96, 3)], TRAIN_LOSS: [(32, 1.0), (64, 0.5), (96, 1 / 3)],
                    EVAL + "loss": [(96, 0.5)], "system/cpu_utilization_percentage": []}
    tracker.metric_rows(old, [[TRAIN_LOSS, 1.0 / s, 1000 + s, s] for s in range(1, 7)])  # a run logged at optimizer steps
    tracker.copy_metrics(old, old_dst, 2)
    assert sorted(m.step for m in tracker.client.get_metric_history(old_dst, TRAIN_LOSS)) == [1, 2]


def test_workers_logging_one_dataset_at_once_all_succeed(tmp_path):
    """Trials on several machines log the same dataset (same name and digest) at once: the loser of
    the insert race retries and links the row the winner wrote, instead of failing its trial."""
    import threading

    from mlflow.entities import Dataset, DatasetInput, InputTag

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path)
    exp = tracker.experiment("s")
    parent = tracker.parent_run(exp, "s", {})
    runs = [tracker.child_run(exp, parent, f"trial-{i}", {}, {}) for i in range(6)]
    start, errors = threading.Barrier(len(runs)), []

    def log(run_id):
        ds = DatasetInput(Dataset(name="d.train", digest="abc", source_type="local", source="{}"), tags=[InputTag("mlflow.data.context", "training")])
        worker = Tracker(uri, tmp_path)
        start.wait(timeout=30)
        try:
            worker.datasets(run_id, [ds])
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=log, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert all(tracker.client.get_run(r).inputs.dataset_inputs[0].dataset.name == "d.train" for r in runs)


def test_a_new_store_is_a_copy_of_mlflows_own_empty_store(tmp_path, monkeypatch):
    """The template is made once by MLflow, in the user's cache; a new store copied from it is what
    MLflow would have built: same schema version, MLflow's Default experiment at this store's place."""
    import sqlite3

    import mlflow

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    template = tmp_path / "xdg-cache" / "lbsearch" / f"mlflow-{mlflow.__version__}-empty.db"
    stores = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tracker = Tracker(f"sqlite:///{tmp_path / name / 'mlflow.db'}", tmp_path / name)
        assert template.is_file()
        exp = tracker.experiment("s")
        tracker.end(tracker.child_run(exp, None, "t", {}, {"optimizer.lr": 1e-3}), "FINISHED")
        stores.append(tracker)
    with sqlite3.connect(template) as con:
        assert con.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
    (built := tmp_path / "built").mkdir()
    mlflow.MlflowClient(f"sqlite:///{built / 'mlflow.db'}").search_experiments()  # MLflow's own path, for comparison
    with sqlite3.connect(built / "mlflow.db") as b, sqlite3.connect(tmp_path / "a" / "mlflow.db") as a:
        assert a.execute("SELECT * FROM alembic_version").fetchall() == b.execute("SELECT * FROM alembic_version").fetchall()
        schema = "SELECT name, sql FROM sqlite_master ORDER BY name"

        def parts(db):  # MLflow's migrations order a table's constraints differently from one build to the next
            return [(name, sorted(p.strip() for p in (sql or "").split(","))) for name, sql in db.execute(schema)]

        assert parts(a) == parts(b)
    for tracker in stores:
        default = tracker.client.get_experiment("0")
        assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
        assert [r.data.params for r in tracker.client.search_runs([tracker.experiment("s")])] == [{"optimizer.lr": "0.001"}]
