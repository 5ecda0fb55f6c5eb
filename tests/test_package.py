"""The shape of the package: rooms of a readable size in every sub-package, Optuna's private
attributes reached in one module only, and the views a person asks for first free of torch."""

import ast
from pathlib import Path

import pytest

from lbsearch.orchestrator import launch
from lbsearch.science import cbs_report, report
from lbsearch.spec import outcome, protocol, workdir
from lbsearch.tracking import outbox, story, tags
from lbsearch.trial import model

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


FILE_NAMES = {"TRIALS_CSV": story, "PARETO_CSV": story, "REPRODUCE_SH": story, "VERSIONS_JSON": story, "LABELS_JSON": story,
              "TRIAL_LOG": launch, "REPORT_HTML": report, "CBS_HTML": cbs_report, "QUANTIZED_FILE": model, "KEPT_FILE": workdir,
              "INFO": workdir, "OUTBOX_FILE": outbox}
"""The file names lbsearch writes, each a constant in its module (``CONFIG_JSON`` is left out: a Hugging Face model folder's
``config.json`` is another file of the same name)."""


def test_tag_names_retried_reasons_and_file_names_are_written_only_where_their_constant_is():
    """Every ``lbsearch.*`` tag name, every reason a trial is re-run for, every file name lbsearch writes and a checkpoint folder's prefix are spelled once:
    code, tests and benchmarks import the constant (a rename is one edit; a copy written out by hand would silently stop matching)."""
    facts = {getattr(tags, n): n for n in tags.__all__ if isinstance(getattr(tags, n), str) and getattr(tags, n).startswith("lbsearch.")}
    facts |= {getattr(outcome, n): n for n in ("WORKER_DIED", "INTERRUPTED", "TRACKING_LOST")}
    files = {}
    for name, module in FILE_NAMES.items():
        files.setdefault(getattr(module, name), []).append(name)
    homes = {Path(m.__file__) for m in (tags, protocol, outcome, *FILE_NAMES.values())}
    root = PACKAGE.parent
    paths = [p for d in ("lbsearch", "tests", "benchmarks", "examples") for p in sorted((root / d).rglob("*.py")) if p.resolve() not in homes]
    copies = [f"{p.relative_to(root)}:{n.lineno}: {n.value!r} (use {_constant_for(n.value, facts, files)})"
              for p in paths for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Constant) and isinstance(n.value, str) and _constant_for(n.value, facts, files)]
    assert not copies, "\n".join(copies)


def _constant_for(text: str, facts: dict, files: dict) -> str:
    """The constant a string literal should have imported, or '' (a checkpoint folder's name: ``workdir.PREFIX``, or
    ``checkpoint_name(step)``, so that a path part ``step-00000005`` or a glob ``step-*`` follows a rename too; prose that
    describes the layout, a string with a space, may name it)."""
    last = text.rsplit("/", 1)[-1]
    if not any(c.isspace() for c in text) and any(part.startswith((workdir.PREFIX, ".tmp-" + workdir.PREFIX)) for part in text.split("/")):
        return "PREFIX or checkpoint_name"
    return facts.get(text) or " or ".join(files.get(last, []))
