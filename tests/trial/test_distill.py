"""The distillation loss (``lbsearch.trial.distill``): T^2 KL(softmax(teacher / T) || softmax(student / T)) against its
definition, its zero, the temperature's effect on confident logits; the plain loss is the task's with nothing beside it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lbsearch.trial.distill import Plain, soft_loss
from lbsearch.trial.training import task_loss

STUDENT = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
TEACHER = torch.tensor([[4.0, -2.0, 0.0], [-1.0, 5.0, 1.0]])


def _by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) / sum(math.exp(u / t) for u in t_row) for v in t_row]
        q = [math.exp(v / t) / sum(math.exp(u / t) for u in s_row) for v in s_row]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return t * t * total / len(student)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 8.0])
def test_soft_loss_is_t_squared_kl_of_the_softened_distributions(t):
    assert soft_loss(STUDENT, TEACHER, t).item() == pytest.approx(_by_hand(STUDENT, TEACHER, t), rel=1e-5)


def test_soft_loss_is_zero_when_the_student_matches_the_teacher():
    assert soft_loss(TEACHER, TEACHER.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_temperature_changes_the_soft_loss_of_confident_logits():
    values = [soft_loss(STUDENT, TEACHER, t).item() for t in (1.0, 2.0, 4.0)]
    assert len({round(v, 6) for v in values}) == 3


def test_plain_loss_is_the_task_loss_and_logs_nothing_more():
    targets = torch.tensor([0, 1])
    plain = Plain("single_label")
    assert plain.loss(STUDENT, targets, np.array([0, 1])).item() == task_loss("single_label", STUDENT, targets).item()
    plain.close_step(1, 1)
    assert plain.row(1) == {}
