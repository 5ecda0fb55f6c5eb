"""Every shipped experiment runs through ``lbsearch train`` as shipped (its model and data), on a slice."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import mlflow_client, run_cli

from lbsearch.spec import TEST
from lbsearch.spec.load import load_experiment
from lbsearch.spec.tasks import LM_TASKS, METRICS

EXPERIMENTS = sorted((Path(__file__).parent.parent.parent / "experiments").glob("*.yaml"))
SLICE = ["data.max_train_samples=64", "data.max_eval_samples=32", "train.batch_size=32", "train.budget_samples=32",
         "train.eval_every_samples=32"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("examples")


def test_there_is_an_example_per_task_kind():
    assert {load_experiment(p).task for p in EXPERIMENTS} == set(METRICS)
    assert any(load_experiment(p).data.text_pair_column for p in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_example_trains_on_a_slice(path, workdir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    exp = load_experiment(path)
    cut = SLICE
    if exp.task in LM_TASKS:  # a language model's budget counts tokens: two steps of 8 sequences
        length = exp.data.max_length
        cut = ["data.max_train_samples=64", "data.max_eval_samples=16", f"data.eval_tokens={4 * length}", "train.batch_size=8",
               f"train.budget_tokens={16 * length}", f"train.eval_every_tokens={8 * length}", f"schedule.warmup_tokens={length}"]
    run_cli("train", str(path), *[f"--set={s}" for s in cut], cwd=workdir, check=True)
    client = mlflow_client(workdir / "mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name(f"train-{exp.name}").experiment_id])
    assert run.info.status == "FINISHED"
    assert {k.split("/", 1)[1] for k in run.data.metrics if k.startswith(TEST)} == set(METRICS[exp.task])
