"""The public trial API: a do-nothing trial by hand; a live one from a spec (reports, pruning points,
divergence, the result), all in this process against a real Optuna journal."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

from lbsearch.integrations import api
from lbsearch.spec import DIVERGED_REASON, EVAL, PROGRESS_SAMPLES, PROGRESS_STEP, RESULT_JSON, SPEC_JSON, TEST, TRAIN_LOSS, VAL
from lbsearch.spec.config import PrunerConfig
from lbsearch.spec.protocol import OptunaRef, WorkerSpec, parse_message, read_result
from lbsearch.spec.script import SPEC_ENV, ScriptExperimentConfig
from lbsearch.study.access import trial_id
from lbsearch.study.storage import open_storage

EXP = {"kind": "script", "name": "t", "script": {"command": "train.py"}, "params": {"dropout": 0.1},
       "train": {"batch_size": 32, "budget_samples": 960, "eval_every_samples": 320, "divergence_factor": 4.0},
       "optimizer": {"lr": 1e-3, "lr_scaling": "sqrt", "reference_batch_size": 16}, "schedule": {"name": "linear", "warmup_fraction": 0.06},
       "launcher": {"processes": 1, "precision": "no", "max_micro_batch": 16}, "metric": {"name": "loss"}}


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(api, "_current", None)
    for k in (SPEC_ENV, "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def test_by_hand_every_call_does_nothing(tmp_path, capsys):
    trial = api.current(defaults={"lr": 0.1, "batch_size": 8})
    assert not trial.active and trial.is_main and trial.plan is None and trial.config == {}
    assert trial.values == {"lr": 0.1, "batch_size": 8} and trial.get("lr") == 0.1 and trial.get("nope", 3) == 3
    trial.log({TRAIN_LOSS: float("nan")}, samples=8)
    trial.report({"loss": 0.5}, samples=8)
    assert trial.should_stop() is False and trial.stop_reason is None
    trial.finish({"loss": 0.5})
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []
    assert api.current() is trial


def _live(tmp_path, monkeypatch, pruner: str = "median", experiment: dict | None = None) -> tuple[api.Trial, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    t = study.ask()
    ref = OptunaRef(storage=url, study_name="s", trial_id=trial_id(t), pruner=PrunerConfig(name=pruner, n_startup_trials=0, n_warmup_samples=0).model_dump())
    spec = WorkerSpec(experiment=ScriptExperimentConfig.model_validate(experiment or EXP).model_dump(mode="json"), optuna=ref,
                      tracking=True, result=str(tmp_path / RESULT_JSON))
    (tmp_path / SPEC_JSON).write_text(spec.model_dump_json())
    monkeypatch.setenv(SPEC_ENV, str(tmp_path / SPEC_JSON))
    return api.current(defaults={"dropout": 0.5, "mine": 1}), study


def test_a_live_trial_has_its_values_and_plan(tmp_path, monkeypatch, capsys):
    trial, _ = _live(tmp_path, monkeypatch)
    assert trial.active and trial.plan.micro_batch == 16 and trial.plan.accumulation == 2
    assert trial.values["lr"] == pytest.approx(1e-3 * (32 / 16) ** 0.5)  # after the sqrt scaling rule
    assert trial.values["dropout"] == 0.1 and trial.values["mine"] == 1  # the trial's params over the defaults
    assert trial.values["warmup_steps"] == 2 and trial.values["steps"] == 30
    kinds = [parse_message(line)[0] for line in capsys.readouterr().out.splitlines() if parse_message(line)]
    assert kinds == ["plan"]


def test_reports_go_to_optuna_at_the_nominal_points_and_the_result_is_written(tmp_path, monkeypatch, capsys):
    trial, study = _live(tmp_path, monkeypatch)
    trial.log({TRAIN_LOSS: 0.7}, samples=32)
    trial.report({"loss": 0.69, "accuracy": 0.5}, samples=160)  # before the first evaluation point: logged only
    trial.report({"loss": 0.6, "accuracy": 0.6}, samples=320)
    trial.report({"loss": 0.59}, samples=352)  # the same point again: not reported twice
    trial.report({"loss": 0.5, "accuracy": 0.7}, samples=960)
    assert trial.should_stop() is False
    trial.finish(test={"loss": 0.55})
    frozen = study.trials[0]
    assert frozen.intermediate_values == {320: 0.6, 960: 0.5}
    r = read_result(tmp_path / RESULT_JSON)
    assert r.state == "complete" and r.value == 0.5 and r.samples == 960 and r.steps == 30 and r.test == {"loss": 0.55}
    rows = [(k, v, s) for line in capsys.readouterr().out.splitlines() if (m := parse_message(line)) and m[0] == "metrics" for k, v, _, s in m[1]]
    # MLflow's step is samples seen (trials of different B line up at equal data); the optimizer step is progress/step
    assert {(EVAL + "loss", 0.6, 320), (EVAL + "loss", 0.5, 960), (VAL + "loss", 0.5, 960), (TEST + "loss", 0.55, 960)} <= set(rows)
    assert {(TRAIN_LOSS, 0.7, 32), (PROGRESS_SAMPLES, 32.0, 32), (PROGRESS_STEP, 1.0, 32)} <= set(rows)


def test_an_explicit_optimizer_step_is_a_metric_and_samples_stay_the_mlflow_step(tmp_path, monkeypatch, capsys):
    exp = EXP | {"metric": {"name": "loss", "target": 0.65}}
    trial, _ = _live(tmp_path, monkeypatch, experiment=exp)
    trial.log({TRAIN_LOSS: 0.7}, samples=40, step=3)  # e.g. an HF Trainer's global_step that B does not give
    trial.report({"loss": 0.6}, samples=320, step=11)
    rows = [(k, v, s) for line in capsys.readouterr().out.splitlines() if (m := parse_message(line)) and m[0] == "metrics" for k, v, _, s in m[1]]
    assert {(PROGRESS_STEP, 3.0, 40), (EVAL + "loss", 0.6, 320), ("steps_to_target", 11.0, 320), ("samples_to_target", 320.0, 320)} <= set(rows)


def test_pruned_and_diverged_stop_the_trial(tmp_path, monkeypatch):
    trial, study = _live(tmp_path, monkeypatch)
    other = study.ask()  # a finished trial that did much better at 320 samples
    other.report(0.1, 320)
    study.tell(other, 0.1)
    trial.report({"loss": 0.9}, samples=320)
    assert trial.should_stop() is True and trial.stop_reason == "pruned"
    trial.finish()
    assert read_result(tmp_path / RESULT_JSON).state == "pruned"


def test_divergence(tmp_path, monkeypatch):
    trial, _ = _live(tmp_path, monkeypatch, pruner="none")
    trial.log({TRAIN_LOSS: 0.7}, samples=32)
    assert not trial.should_stop()
    trial.log({TRAIN_LOSS: 2.7}, samples=64)  # below divergence_factor (4) x the first loss
    assert not trial.should_stop()
    trial.log({TRAIN_LOSS: float("inf")}, samples=96)
    assert trial.should_stop() and trial.stop_reason == DIVERGED_REASON
    trial.finish()
    assert read_result(tmp_path / RESULT_JSON).reason == DIVERGED_REASON


def test_finish_without_the_metric_fails_the_trial(tmp_path, monkeypatch):
    trial, _ = _live(tmp_path, monkeypatch)
    trial.finish({"accuracy": 0.8})
    r = read_result(tmp_path / RESULT_JSON)
    assert r.state == "failed" and "finish() got no `loss`" in r.reason


def test_only_rank_0_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    trial, _ = _live(tmp_path, monkeypatch)
    trial.report({"loss": 0.5}, samples=960)
    trial.finish()
    assert not (tmp_path / RESULT_JSON).exists()
    assert "@@lbsearch" not in capsys.readouterr().out


def test_the_api_imports_no_torch():
    code = "import sys, lbsearch.api; t = lbsearch.api.current(); print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() == "[]"


def test_a_budget_that_b_does_not_divide_is_reported_at_the_budget(tmp_path, monkeypatch):
    exp = EXP | {"train": {"batch_size": 64, "budget_samples": 1000, "eval_every_samples": 320}}
    trial, study = _live(tmp_path, monkeypatch, experiment=exp)
    assert trial.plan.evals == ((5, 320), (10, 640), (15, 1000))
    for step in (5, 10, 15):
        trial.report({"loss": 1.0 / step}, samples=step * 64)
    assert list(study.trials[0].intermediate_values) == [320, 640, 1000]  # the last step (960 samples) stands for the budget
