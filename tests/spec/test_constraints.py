"""Constraints over params: parsed once, evaluated without eval, unknown names refused."""

import pytest

from lbsearch.spec.constraints import Constraint, parse


def test_expressions_over_dotted_params():
    c = Constraint("train.batch_size < 512 or optimizer.lr <= 1e-3")
    assert c({"train.batch_size": 256, "optimizer.lr": 5e-3})
    assert c({"train.batch_size": 512, "optimizer.lr": 1e-3})
    assert not c({"train.batch_size": 512, "optimizer.lr": 2e-3})
    assert c.names == {"train.batch_size", "optimizer.lr"}


def test_none_in_comparisons_membership_and_arithmetic():
    assert Constraint("train.clip_norm is None or train.clip_norm >= 0.5")({"train.clip_norm": None})
    assert not Constraint("train.clip_norm > 0.5")({"train.clip_norm": None})  # off compares as false
    assert Constraint("train.batch_size in [16, 32] and not optimizer.lr * train.batch_size > 1")({"train.batch_size": 32, "optimizer.lr": 1e-3})
    assert not Constraint("1 < x < 3")({"x": 3})


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "x.__class__()", "lambda: 1", "[i for i in x]", "x <"])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError):
        Constraint(text)


def test_names_must_be_searched():
    with pytest.raises(ValueError, match="'model.size', which is not searched"):
        parse(["model.size < 3"], {"optimizer.lr"})
