"""Metrics equal scikit-learn's and SciPy's own functions on fixed predictions, in one process and in two
(gathered from both ranks over gloo: exactly equal, not approximately)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from lbsearch.orchestrator.launch import free_port
from lbsearch.spec.tasks import METRICS
from lbsearch.trial.metrics import task_metrics

SCRIPT = Path(__file__).parent.parent / "scripts" / "evaluate_fixed.py"
THRESHOLD = 0.5  # multi-label: the one tests/scripts/evaluate_fixed.py gives the Evaluator
N = 37  # odd: the two ranks' shards differ in size


def _fixed(task: str, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(N, 1 if task == "regression" else k)).astype(np.float32).astype(np.float64)
    if task == "single_label":
        labels = rng.integers(0, k, N)
    elif task == "multi_label":
        labels = (rng.random((N, k)) < 0.4).astype(np.float32)
    else:
        labels = 3.0 + 2.0 * logits[:, 0] + rng.normal(size=N)
    return logits, labels


def _library(task: str, logits: np.ndarray, labels: np.ndarray, shift: float = 0.0, scale: float = 1.0) -> dict[str, float]:
    """The same metrics, each straight from the library's documented function."""
    if task == "single_label":
        pred, probs = logits.argmax(1), np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        classes = list(range(logits.shape[1]))
        auroc = skm.roc_auc_score(labels, probs[:, 1]) if len(classes) == 2 else skm.roc_auc_score(labels, probs, multi_class="ovr", labels=classes)
        f1 = {a: skm.f1_score(labels, pred, labels=classes, average=a, zero_division=0) for a in ("macro", "micro", "weighted")}
        return {"loss": skm.log_loss(labels, probs, labels=classes), "accuracy": skm.accuracy_score(labels, pred), "f1": f1["macro"],
                "f1_macro": f1["macro"], "f1_micro": f1["micro"], "f1_weighted": f1["weighted"],
                "mcc": skm.matthews_corrcoef(labels, pred), "auroc": auroc}
    if task == "multi_label":
        pred = (1 / (1 + np.exp(-logits)) >= THRESHOLD).astype(int)
        return {"loss": skm.log_loss(labels.ravel(), 1 / (1 + np.exp(-logits.ravel()))),
                "f1_micro": skm.f1_score(labels, pred, average="micro", zero_division=0),
                "f1_macro": skm.f1_score(labels, pred, average="macro", zero_division=0), "exact_match": skm.accuracy_score(labels, pred)}
    pred = logits[:, 0] * scale + shift
    return {"loss": skm.mean_squared_error((labels - shift) / scale, logits[:, 0]), "pearson": stats.pearsonr(labels, pred).statistic,
            "spearman": stats.spearmanr(labels, pred).statistic, "rmse": skm.root_mean_squared_error(labels, pred),
            "mae": skm.mean_absolute_error(labels, pred)}


CASES = [("single_label", 2), ("single_label", 4), ("multi_label", 3), ("regression", 1)]


@pytest.mark.parametrize("task,k", CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_metrics_equal_the_librarys_functions(task, k):
    logits, labels = _fixed(task, k)
    shift, scale = (3.0, 2.0) if task == "regression" else (0.0, 1.0)
    ours = task_metrics(task, logits, labels, threshold=THRESHOLD, shift=shift, scale=scale)
    assert set(ours) == set(METRICS[task])
    ref = _library(task, logits, labels, shift, scale)
    for name, value in ref.items():
        # the loss is computed in closed form (log-softmax / stable BCE): equal to the library's to rounding;
        # every other metric is the library's own value, exactly
        assert ours[name] == (pytest.approx(value, rel=1e-12) if name == "loss" else value), name


def test_labels_that_never_occur_keep_auroc_undefined_not_wrong():
    logits, labels = _fixed("single_label", 3)
    ours = task_metrics("single_label", logits, np.where(labels == 2, 0, labels), threshold=THRESHOLD)  # class 2 absent
    assert np.isnan(ours["auroc"]) and ours["accuracy"] == skm.accuracy_score(np.where(labels == 2, 0, labels), logits.argmax(1))


def test_two_processes_give_exactly_the_one_process_value(tmp_path):
    """The real Evaluator under ``accelerate launch`` with 2 CPU processes (gloo) and with 1, every task."""
    cases = tmp_path / "cases"
    cases.mkdir()
    expected = {}
    for task, k in CASES:
        logits, labels = _fixed(task, k, seed=1)
        shift, scale = (3.0, 2.0) if task == "regression" else (0.0, 1.0)
        lengths = np.random.default_rng(2).integers(0, 9, N)  # the evaluator shards the length-sorted split
        np.savez(cases / f"{task}-{k}.npz", logits=logits, labels=labels, lengths=lengths, shift=shift, scale=scale)
        expected[f"{task}-{k}"] = task_metrics(task, logits, labels, threshold=THRESHOLD, shift=shift, scale=scale)
    got = {}
    for procs in (2, 1):
        launch = ["--multi_gpu"] if procs > 1 else ["--cpu"]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs), "--num_machines", "1", *launch,
               "--mixed_precision", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
               "--dynamo_backend", "no", str(SCRIPT), str(cases), str(tmp_path / f"out{procs}.json")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[procs] = json.loads((tmp_path / f"out{procs}.json").read_text())
    assert got[2]["world"] == 2 and got[1]["world"] == 1
    assert got[2]["metrics"] == got[1]["metrics"] == expected  # exactly: gathered, then one library call on the whole split
