"""The trial's side of ``pruner: asha_promote`` (``lbsearch.trial.rung``), through the real training loop
(``lbsearch.trial.worker.train``) in this process on the tiny model: a trial given a rung stops at its first evaluation
there, paused, with a checkpoint of that step; where the checkpoint cannot be written (a full disk, injected) it is not
paused but trains on to its budget, as a trial without a rung does."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import SPECS, prepare_once, worker_spec

from lbsearch.spec import FOLDER, PAUSED, ExperimentConfig, checkpoint_name, latest
from lbsearch.spec.workdir import INFO
from lbsearch.trial.worker import train

pytestmark = pytest.mark.usefixtures("fresh_accelerator")


def _experiment() -> ExperimentConfig:
    raw = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    raw["train"] |= {"budget_samples": 320, "eval_every_samples": 160}  # B = 32: 10 steps, evaluations at steps 5 and 10
    raw["launcher"] |= {"peak_tflops": 1.0}  # no CPU peak measurement
    return ExperimentConfig.model_validate(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_once(tmp_path_factory, "rung", _experiment())


def _spec(prepared, folder, pause_at: int | None):
    return worker_spec(prepared, _experiment(), checkpoint_dir=str(folder), pause_at_samples=pause_at)


def test_a_trial_pauses_at_its_rung_with_a_checkpoint_of_that_step(prepared, tmp_path):
    lines: list[str] = []
    result = train(_spec(prepared, tmp_path / FOLDER, 100), log=lambda *a: lines.append(" ".join(map(str, a))))
    assert (result.state, result.reason, result.steps, result.samples) == ("pruned", PAUSED, 5, 160)  # the first evaluation at or past 100
    found = latest(tmp_path / FOLDER)
    assert found is not None and found.name == checkpoint_name(5)
    assert json.loads((found / INFO).read_text())["step"] == 5
    assert "paused at step 5 (160 samples), its rung (100 samples)" in lines
    assert [e["nominal_samples"] for e in result.evals] == [160]


def test_a_rung_whose_checkpoint_cannot_be_written_is_trained_through(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("LBSEARCH_INJECT_CHECKPOINT_ERROR_AT", "5")
    lines: list[str] = []
    result = train(_spec(prepared, tmp_path / FOLDER, 160), log=lambda *a: lines.append(" ".join(map(str, a))))
    assert (result.state, result.steps) == ("complete", 10)
    assert "not paused at its rung (160 samples): no checkpoint to resume from; it trains on" in lines
    assert latest(tmp_path / FOLDER) is None
