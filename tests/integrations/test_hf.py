"""The HF Trainer adapter: a live trial's ``TrainingArguments`` give a real ``Trainer`` the schedule lbsearch's own loop runs,
step by step (warmup, linear or cosine decay, to ``schedule.min_lr_ratio`` of the peak)."""

from __future__ import annotations

import pytest
import torch
from test_api import EXP, _live, fresh  # noqa: F401  (fresh: autouse, a new trial per test)
from transformers import Trainer, TrainingArguments

from lbsearch.hf import training_arguments
from lbsearch.spec import ScriptExperimentConfig
from lbsearch.trial.training import make_scheduler


def _lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("ratio", [0.0, 0.1])
def test_the_trainers_schedule_is_the_built_in_loops(tmp_path, monkeypatch, name, ratio):
    exp = EXP | {"schedule": {"name": name, "warmup_fraction": 0.06, "min_lr_ratio": ratio}}
    trial, _ = _live(tmp_path, monkeypatch, experiment=exp)
    kwargs = training_arguments(trial)
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, **kwargs))
    trainer.create_optimizer_and_scheduler(num_training_steps=kwargs["max_steps"])
    ours = make_scheduler(ScriptExperimentConfig.model_validate(exp).schedule, torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=kwargs["learning_rate"]),
                          kwargs["warmup_steps"], kwargs["max_steps"])
    theirs = _lrs(trainer.lr_scheduler, kwargs["max_steps"] + 1)  # the lr of every step, and after the last
    assert theirs == pytest.approx(_lrs(ours, kwargs["max_steps"] + 1), rel=1e-9, abs=1e-15)
    floor = ratio if name != "constant" else 1.0
    assert theirs[-1] == pytest.approx(floor * kwargs["learning_rate"], rel=1e-9, abs=1e-15)  # decays to the floor (0 without one)
