"""The shape of the package: rooms of a readable size, Optuna's private attributes reached in one
place only, and the views a person asks for first free of torch."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "lbsearch"
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_modules_and_functions_stay_small(path):
    src = path.read_text()
    assert len(src.splitlines()) <= 400, f"{path.name}: split it by what it holds"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, f"{path.name}: functions over 60 lines: {long}"


def test_optuna_private_attributes_are_reached_in_storage_only():
    users = {p.name for p in MODULES for attr in ("._storage", "._trial_id", "._study_id") if attr in p.read_text()}
    assert users == {"storage.py"}
