"""Every task kind x five model families through ``lbsearch train``, end to end: tiny random-init models
with the real MiniLM tokenizer on slices of data made from the real reviews. Each run reports exactly
its task's metric set, and its label mapping reaches MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import cli, mlflow_client, run_cli

from lbsearch.data.sources import load_frames
from lbsearch.spec import TEST, VAL
from lbsearch.spec.config import DataConfig
from lbsearch.spec.tasks import METRICS
from lbsearch.tracking import PACKING, START

EXAMPLES = Path(__file__).parent.parent.parent / "experiments" / "data"
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 160}
# family: (model_type, pooling, extra config). Pooling: each architecture's own head (a decoder's pools its
# last token through the pad id), or the family-free mean / last-token heads.
FAMILIES = {
    "bert": ("bert", "cls", {}),
    "distilbert": ("distilbert", "mean", {"hidden_dim": 64}),
    "modernbert": ("modernbert", "cls", {}),
    "gpt2": ("gpt2", "cls", {"n_inner": 64}),
    "llama": ("llama", "last", {}),
}
TASKS = {
    "labels_1_2": ("single_label", {"source": "reviews_1_2.csv"}, "f1_macro"),
    "pair": ("single_label", {"source": str(EXAMPLES / "rt_pairs.csv.bz2"), "text_column": "review_a",
                              "text_pair_column": "review_b", "label_column": "fresh_count"}, "mcc"),
    "multi_label": ("multi_label", {"source": str(EXAMPLES / "rt_mixed.csv.bz2"), "label_column": "verdicts",
                                    "label_delimiter": "|"}, "f1_micro"),
    "regression": ("regression", {"files": {s: str(EXAMPLES / f"rt_tomatometer_{s}.csv.bz2") for s in ("train", "validation", "test")},
                                  "label_column": "tomatometer", "label_scaling": "standard"}, "spearman"),
}
LABELS = {"labels_1_2": ["1", "2"], "pair": ["0", "1", "2"], "multi_label": ["fresh", "rotten"], "regression": ["tomatometer"]}
LAUNCHER = {"processes": 1, "pack": True}
"""What the assertions rely on: one process (a trial forked from the standby process, not `accelerate launch`), packing allowed."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One state folder for the whole matrix (one MLflow database), and the reviews with labels 1 and 2."""
    root = tmp_path_factory.mktemp("matrix")
    frames, labels, _ = load_frames(DataConfig(max_train_samples=300))
    frames["train"].assign(label=labels["train"] + 1).to_csv(root / "reviews_1_2.csv", index=False)
    return root


def _write_spec(workdir: Path, task: str, family: str, **config) -> str:
    kind, data, metric = TASKS[task]
    model_type, pooling, extra = FAMILIES[family]
    name = f"{task}-{family}"
    spec = {"name": name, "task": kind, "seed": 0,
            "data": data | {"max_length": 48, "max_train_samples": 128, "max_eval_samples": 48},
            "model": {"source": "random", "model_type": model_type, "pooling": pooling, "config": COMMON | extra | config},
            "optimizer": {"lr": 1e-3}, "train": {"batch_size": 32, "budget_samples": 64, "eval_every_samples": 64},
            "launcher": LAUNCHER | {"precision": "no", "max_micro_batch": 32}, "metric": {"name": metric}}
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", TASKS)
def test_task_by_family_trains_end_to_end(task, family, workdir, monkeypatch, standby_process):
    """``lbsearch train`` in this process, each trial forked from one standby process: the matrix pays the imports once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    kind, _, metric = TASKS[task]
    name = _write_spec(workdir, task, family)
    proc = cli("train", f"{name}.yaml", cwd=workdir, check=True)
    assert "forked from standby process" in mlflow_client(workdir / "mlruns").search_runs(
        [mlflow_client(workdir / "mlruns").get_experiment_by_name(f"train-{name}").experiment_id])[0].data.tags[START]
    assert f"validation {metric}" in proc.stdout
    client = mlflow_client(workdir / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name(f"train-{name}").experiment_id])
    assert run.info.status == "FINISHED"
    reported = {k.split("/", 1)[1] for k in run.data.metrics if k.startswith(VAL)}
    assert reported == set(METRICS[kind]), reported
    assert json.loads(run.data.tags["data.labels"]) == LABELS[task]  # labels 1 and 2 are 2 classes, not 3
    assert run.data.tags["data.task"] == kind
    # packing: on for the encoder's mean-pooled head; off for the architectures' own heads, and for the
    # decoder's last-token head (its causal mask is not the encoder's block mask: packing.unsupported)
    packing = run.data.tags[PACKING]
    assert packing == "on" if family == "distilbert" else packing.startswith("off: pooling cls" if FAMILIES[family][1] == "cls" else "off: "), packing


NO_DROPOUT = {"distilbert": {"dropout": 0.0, "attention_dropout": 0.0}}


# one family: distilbert's mean-pooled head, packed micro-batches on each process (the unpacked
# architectures' own heads over two processes: tests/cli/test_multiprocess.py)
@pytest.mark.parametrize("family", NO_DROPOUT)
def test_regression_over_two_processes_matches_one_process(family, tmp_path, monkeypatch):
    """The scaled targets, the gathered outputs and the unscaled metrics: 2 processes (gloo, no
    accumulation) and 1 process (accumulation 2) see the same batches and report the same metrics, up
    to the float rounding by which the two trained models differ (all-reduce vs accumulation order;
    the evaluation itself is exact on fixed outputs: tests/test_metrics.py)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    name = _write_spec(tmp_path, "regression", family, **NO_DROPOUT[family])
    for procs in (2, 1):
        run_cli("train", f"{name}.yaml", "--set=launcher.max_micro_batch=16", f"--set=launcher.processes={procs}", cwd=tmp_path, check=True)
    client = mlflow_client(tmp_path / "mlruns")
    runs = sorted(client.search_runs([client.get_experiment_by_name(f"train-{name}").experiment_id]), key=lambda r: r.info.start_time)
    assert [r.data.params["plan.processes"] for r in runs] == ["2", "1"]
    assert [r.data.tags[PACKING] for r in runs] == 2 * ["on" if family == "distilbert" else "off: pooling cls: the architecture's own head"]
    two, one = (r.data.metrics for r in runs)
    for key in [k for k in one if k.startswith((VAL, TEST))]:
        assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), key
