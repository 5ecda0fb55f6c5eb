"""The shape of the package: rooms of a readable size in every sub-package, Optuna's private
attributes reached in one module only, and the views a person asks for first free of torch."""

import ast
from pathlib import Path

import pytest

from lbsearch.spec import outcome
from lbsearch.tracking import tags

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


def test_tag_names_and_retried_reasons_are_written_only_where_their_constant_is():
    """Every ``lbsearch.*`` tag name and every reason a trial is re-run for is spelled once: code, tests and benchmarks
    import the constant (a rename is one edit; a copy written out by hand would silently stop matching)."""
    facts = {getattr(tags, n): n for n in tags.__all__ if isinstance(getattr(tags, n), str) and getattr(tags, n).startswith("lbsearch.")}
    facts |= {getattr(outcome, n): n for n in ("WORKER_DIED", "INTERRUPTED", "TRACKING_LOST")}
    homes = {PACKAGE / "tracking" / "tags.py", PACKAGE / "spec" / "protocol.py", PACKAGE / "spec" / "outcome.py"}
    root = PACKAGE.parent
    files = [p for d in ("lbsearch", "tests", "benchmarks", "examples") for p in sorted((root / d).rglob("*.py")) if p not in homes]
    copies = [f"{p.relative_to(root)}:{n.lineno}: {n.value!r} (use {facts[n.value]})" for p in files for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in facts]
    assert not copies, "\n".join(copies)
