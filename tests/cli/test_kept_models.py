"""Kept models end to end: a small study keeps only its best trial's model, in the Hugging Face layout
with label names; the folder reproduces the logged test accuracy in a fresh process; MLflow's Model
Registry lists it; ``lbsearch predict`` prints label names; ``lbsearch train`` keeps and logs its
model (a mean-pooling head, through ``lbsearch.trial.model.load_model``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli
from mlflow.entities import LoggedModelStatus

from lbsearch.data import META_FILE
from lbsearch.spec import KEPT_FILE, TEST, data_cache_dir
from lbsearch.spec.load import load_study, parse_set
from lbsearch.spec.session import Session
from lbsearch.study import RUN_ID
from lbsearch.study.storage import open_study
from lbsearch.tracking import BEST_ALIAS, MODEL_ID_TAG, TRIAL, registered_name

SETS = ["n_trials=2", "pruner.name=none", "experiment.metric.name=loss"]
STUDY = "tiny-study"

# Evaluates a kept folder in a process of its own exactly as the trial did: the cached test split,
# length-sorted batches of the trial's evaluation batch size, lbsearch's Evaluator.
_EVAL = """
import json, sys
from pathlib import Path
from accelerate import Accelerator
from lbsearch.data import META_FILE, load_arrays
from lbsearch.spec import KEPT_FILE
from lbsearch.trial.training import Evaluator
folder, data, pad_id, how = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
if how == "auto":
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(folder)
else:
    from lbsearch.trial.model import load_model
    model = load_model(folder)
info = json.loads((folder / KEPT_FILE).read_text())
acc = Accelerator(cpu=True)
labels = json.loads((Path(data) / META_FILE).read_text())["labels"]
m = Evaluator(load_arrays(data, "test"), labels["task"], labels, 0.5, info["eval_batch_size"], 0, 1)(acc, model, pad_id)
print(json.dumps(m))
"""


def _evaluate(folder: Path, root: Path, how: str, run_id: str) -> dict[str, float]:
    digest = mlflow_client(root).get_run(run_id).data.tags["data.digest"]  # the run's data, among those in the cache
    data = next(d for d in data_cache_dir(root).glob("data-*") if json.loads((d / META_FILE).read_text())["digest"] == digest)
    pad_id = json.loads((data / META_FILE).read_text())["pad_id"]
    out = subprocess.run([sys.executable, "-c", _EVAL, str(folder), str(data), str(pad_id), how], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two trials, the second one better (lr 1e-4, then 3e-3; validation loss is the objective)."""
    cwd = tmp_path_factory.mktemp("kept")
    root = cwd / "mlruns"
    cfg, _ = load_study(SPECS / "tiny_study.yaml", parse_set(SETS))
    s = open_study(Session(root=root), cfg)
    s.enqueue_trial({"train.batch_size": 32, "optimizer.lr": 1e-4})
    s.enqueue_trial({"train.batch_size": 32, "optimizer.lr": 3e-3})
    proc = run_cli("run", str(SPECS / "tiny_study.yaml"), *[a for kv in SETS for a in ("--set", kv)], cwd=cwd, check=True)
    return cwd, root, proc


def test_only_the_best_model_remains(study):
    cwd, root, proc = study
    trials = journal_study(root, STUDY).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].value < trials[0].value  # the second trial is the better one ...
    assert "Writing model shards" not in proc.stdout + proc.stderr
    assert proc.stdout.count("model kept in") == 2  # ... so the first one's model was kept, then deleted
    assert sorted(p.name for p in (root / "models" / STUDY).iterdir()) == ["trial-1"]
    weights = sorted(str(p.relative_to(root)) for p in root.rglob("model.safetensors"))
    assert len(weights) == 2, weights  # the kept folder and its copy in MLflow (the first trial's copy was deleted)
    assert weights[1] == f"models/{STUDY}/trial-1/model.safetensors" and weights[0].startswith(f"artifacts/{STUDY}/models/")


def test_kept_folder_is_hugging_face_layout_with_label_names(study):
    _, root, _ = study
    folder = root / "models" / STUDY / "trial-1"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", KEPT_FILE} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "rotten", "1": "fresh"}
    assert config["label2id"] == {"rotten": 0, "fresh": 1}


def test_kept_model_reproduces_the_logged_test_accuracy_in_a_fresh_process(study):
    _, root, _ = study
    best = journal_study(root, STUDY).get_trials()[1]
    m = _evaluate(root / "models" / STUDY / "trial-1", root, "auto", best.user_attrs[RUN_ID])
    assert m["accuracy"] == best.user_attrs["test_accuracy"]
    assert m["loss"] == best.user_attrs["test_loss"]


def test_model_registry_lists_the_best_trial(study, tmp_path):
    _, root, _ = study
    best = journal_study(root, STUDY).get_trials()[1]
    client = mlflow_client(root)
    versions = client.search_model_versions(f"name = '{registered_name(STUDY)}'")
    assert len(versions) == 1  # the first trial's version went with its model
    v = client.get_model_version_by_alias(registered_name(STUDY), BEST_ALIAS)
    assert v.run_id == best.user_attrs[RUN_ID] and v.tags[TRIAL] == "1"
    logged = client.get_logged_model(v.tags[MODEL_ID_TAG])
    assert logged.source_run_id == best.user_attrs[RUN_ID] and logged.status == LoggedModelStatus.READY
    files = {f.path for f in client.list_logged_model_artifacts(logged.model_id)}
    assert {"config.json", "model.safetensors"} <= files
    mlflow.set_tracking_uri(client.tracking_uri)
    got = Path(mlflow.artifacts.download_artifacts(f"models:/{registered_name(STUDY)}@{BEST_ALIAS}", dst_path=str(tmp_path)))
    assert json.loads((got / "config.json").read_text())["id2label"] == {"0": "rotten", "1": "fresh"}


def test_predict_prints_label_names(study, tmp_path):
    cwd, _, _ = study
    proc = cli("predict", STUDY, "a warm and funny film", cwd=cwd, check=True)
    assert "Loading weights" not in proc.stdout + proc.stderr
    label, prob, text = proc.stdout.strip().splitlines()[-1].split("\t")
    assert label in {"rotten", "fresh"} and 0.5 <= float(prob) <= 1 and text == "a warm and funny film"
    texts = tmp_path / "texts.txt"
    texts.write_text("dull and far too long\nthe best film of the year\n")
    proc = cli("predict", STUDY, str(texts), "--trial", "1", cwd=cwd, check=True)
    assert [line.split("\t")[0] in {"rotten", "fresh"} for line in proc.stdout.strip().splitlines()] == [True, True]


def test_predict_without_a_kept_model_is_one_line_exit_2(study):
    cwd, _, _ = study
    proc = cli("predict", STUDY, "text", "--trial", "0", cwd=cwd)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lbsearch: error: --trial: no kept model for trial 0 of study 'tiny-study' (kept: trial-1; see the study's `save_model`)"]


def test_train_keeps_and_logs_a_mean_pooling_model(tmp_path):
    proc = run_cli("train", str(SPECS / "tiny.yaml"), "--set", "model.pooling=mean", cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    (folder,) = (root / "models" / "train-tiny").iterdir()
    assert (folder / "mean_pool_head.safetensors").is_file()
    client = mlflow_client(root)
    run = client.get_run(folder.name)
    assert f"model kept in {folder}" in proc.stdout
    m = _evaluate(folder, root, "lbsearch", run.info.run_id)
    assert m["accuracy"] == run.data.metrics[TEST + "accuracy"]
    (logged,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert logged.source_run_id == run.info.run_id


def test_best_names_the_kept_model(study):
    cwd, root, _ = study
    proc = cli("best", STUDY, cwd=cwd, check=True)
    assert f"model      mlruns/models/{STUDY}/trial-1 (lbsearch predict {STUDY} TEXT)" in proc.stdout


def test_a_model_that_cannot_be_saved_is_said_and_no_stale_model_is_served(tmp_path):
    """A full disk while the trial saves its model: the trial stays complete, ``status`` says why it
    has no model, the registry has no ``best`` alias and ``predict`` refuses: none of them names an
    older trial's model. Before, the failure was printed once and nothing else knew."""
    import os

    env = dict(os.environ, LBSEARCH_INJECT_SAVE_ERROR="1")
    run_cli("run", str(SPECS / "tiny_study.yaml"), "--set=n_trials=1", "--set=pruner.name=none", cwd=tmp_path, env=env, check=True)
    root = tmp_path / "mlruns"
    (trial,) = journal_study(root, STUDY).get_trials()
    assert trial.state.name == "COMPLETE" and trial.user_attrs["reason"] == "model not saved: OSError: [Errno 28] No space left on device (injected)"
    status = cli("status", STUDY, "--json", cwd=tmp_path, check=True).stdout
    assert json.loads(status)[0]["reason"].startswith("model not saved: OSError")
    assert not list((root / "models").glob("*/trial-*")) if (root / "models").exists() else True
    assert mlflow_client(root).search_model_versions(f"name = '{registered_name(STUDY)}'") == []
    refused = cli("predict", STUDY, "a warm, funny film", cwd=tmp_path)
    assert refused.returncode == 2 and "no kept model for trial 0" in refused.stderr
