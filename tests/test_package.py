"""The shape of the package: rooms of a readable size in every sub-package, Optuna's private
attributes reached in one module only, and the views a person asks for first free of torch."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "lbsearch"
MODULES = sorted(PACKAGE.rglob("*.py"))
NAMES = [str(p.relative_to(PACKAGE)) for p in MODULES]


@pytest.mark.parametrize("path", MODULES, ids=NAMES)
def test_modules_and_functions_stay_small(path):
    src = path.read_text()
    assert len(src.splitlines()) <= 400, f"{path.name}: split it by what it holds"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, f"{path.name}: functions over 60 lines: {long}"


@pytest.mark.parametrize("path", MODULES, ids=NAMES)
def test_every_module_says_what_it_holds(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path}: a module docstring"


def test_optuna_private_attributes_are_reached_in_one_module():
    users = {str(p.relative_to(PACKAGE)) for p in MODULES for attr in ("._storage", "._trial_id", "._study_id") if attr in p.read_text()}
    assert users == {"study/access.py"}


def test_the_flat_layout_is_gone():
    """Only the public paths of the adapters stay at the top; everything else lives in a sub-package."""
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py", "api.py", "hf.py", "lightning.py"}
