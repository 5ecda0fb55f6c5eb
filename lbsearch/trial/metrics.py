"""The task's metrics from the model's outputs, computed by scikit-learn and SciPy.

Always called with every example's outputs in the split's own order (the evaluator gathers them from
all ranks first), so a metric is the library's value on the whole split, bit for bit, whatever the
number of processes. The names and directions are ``lbsearch.spec.tasks.METRICS``.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["task_metrics"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _single(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    k = logits.shape[1]
    z = logits - logits.max(1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
    pred, classes = logits.argmax(1), list(range(k))
    f1 = {avg: skm.f1_score(y, pred, labels=classes, average=avg, zero_division=0) for avg in ("macro", "micro", "weighted")}
    return {
        "loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "accuracy": skm.accuracy_score(y, pred),
        "f1": f1["macro"],
        "f1_macro": f1["macro"],
        "f1_micro": f1["micro"],
        "f1_weighted": f1["weighted"],
        "mcc": skm.matthews_corrcoef(y, pred),
        "auroc": _auroc(y, _softmax(logits), classes),
    }


def _auroc(y: np.ndarray, probs: np.ndarray, classes: list[int]) -> float:
    """Binary: the positive class's score; more classes: one-vs-rest, macro. Undefined (NaN) when an
    evaluation split lacks a class."""
    from sklearn.metrics import roc_auc_score

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the NaN says it
            if len(classes) == 2:
                return roc_auc_score(y, probs[:, 1])
            return roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=classes)
    except ValueError:
        return float("nan")


def _multi(logits: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn import metrics as skm

    pred = (1 / (1 + np.exp(-logits)) >= threshold).astype(np.int64)
    truth = y.astype(np.int64)
    # binary cross-entropy with logits, stable: max(x, 0) - x*y + log(1 + exp(-|x|)), mean over examples and labels
    bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    return {
        "loss": float(bce.mean()),
        "f1_micro": skm.f1_score(truth, pred, average="micro", zero_division=0),
        "f1_macro": skm.f1_score(truth, pred, average="macro", zero_division=0),
        "exact_match": skm.accuracy_score(truth, pred),  # subset accuracy: every label right
    }


def _regression(logits: np.ndarray, y: np.ndarray, shift: float, scale: float) -> dict[str, float]:
    from scipy import stats
    from sklearn import metrics as skm

    out = logits[:, 0]
    pred = out * scale + shift
    with warnings.catch_warnings():  # a constant prediction has no correlation: NaN, said once by the value itself
        warnings.simplefilter("ignore")
        pearson, spearman = stats.pearsonr(y, pred).statistic, stats.spearmanr(y, pred).statistic
    return {
        "loss": float(np.mean((out - (y - shift) / scale) ** 2)),  # the training loss: MSE on the scaled target
        "pearson": float(pearson),
        "spearman": float(spearman),
        "rmse": skm.root_mean_squared_error(y, pred),
        "mae": skm.mean_absolute_error(y, pred),
    }


def task_metrics(task: str, logits: np.ndarray, labels: np.ndarray, *, threshold: float, shift: float = 0.0,
                 scale: float = 1.0) -> dict[str, float]:
    """Every metric of ``task`` for a whole split.

    Args:
        task: ``single_label``, ``multi_label`` or ``regression``.
        logits: The model's outputs, ``(n, outputs)``, as float64.
        labels: Class ids ``(n,)``, a 0/1 matrix ``(n, classes)`` or values ``(n,)`` in the labels' own units.
        threshold: Multi-label: the probability at which a class is predicted (the spec's ``metric.threshold``).
        shift, scale: Regression: the model's output o stands for ``o * scale + shift``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if task == "single_label":
        m = _single(logits, np.asarray(labels, dtype=np.int64))
    elif task == "multi_label":
        m = _multi(logits, np.asarray(labels, dtype=np.float64), threshold)
    else:
        m = _regression(logits, np.asarray(labels, dtype=np.float64), shift, scale)
    return {k: float(v) for k, v in m.items()}
