"""The shape of the package: rooms of a readable size in every sub-package, Optuna's private
attributes reached in one module only, and the views a person asks for first free of torch."""

import ast
import re
from pathlib import Path

import pytest

import lbsearch.tracking as tracking
from lbsearch.cli import compress as compress_cli
from lbsearch.data import cache
from lbsearch.orchestrator import launch
from lbsearch.science import cbs_report, lm_figures, report
from lbsearch.spec import attributes, branch, metric_names, outcome, protocol, script, workdir
from lbsearch.study import sampler, views
from lbsearch.tracking import compressed, outbox, story, tags, tracker
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


FILE_NAMES = {"TRIALS_CSV": story, "PARETO_CSV": story, "PARETO_PNG": story, "PARETO_DIR": story, "REPRODUCE_SH": story, "VERSIONS_JSON": story, "LABELS_JSON": story,
              "TRIAL_LOG": launch, "REPORT_HTML": report, "CBS_HTML": cbs_report, "QUANTIZED_FILE": model, "KEPT_FILE": workdir,
              "INFO": workdir, "OUTBOX_FILE": outbox, "BRANCH_POINTS": branch, "SPEC_JSON": workdir, "RESULT_JSON": workdir,
              "META_FILE": cache, "SUMMARY_JSON": report, "CBS_JSON": cbs_report, "PARAMS_JSON": script}
FILE_NAMES |= {name: report for name in ("BEST_PNG", "LR_PNG", "STEPS_PNG", "NOISE_PNG", "IMPORTANCES_PNG", "PARALLEL_PNG")} | {
    name: lm_figures for name in ("LM_CURVES_PNG", "LM_STEPS_PNG", "LM_B_CRIT_PNG")} | {name: cbs_report for name in ("CBS_LOSSES_PNG", "CBS_OVER_TRAINING_PNG")} | {
    name: story for name in ("HISTORY_PNG", "PARAM_IMPORTANCES_PNG", "PARALLEL_PLOT_PNG", "INTERMEDIATE_PNG")}
"""The file names lbsearch writes, each a constant in its module (``CONFIG_JSON`` is left out: a Hugging Face model folder's
``config.json`` is another file of the same name)."""


def test_tag_metric_reason_and_file_names_are_written_only_where_their_constant_is():
    """Every ``lbsearch.*`` tag name, every metric name lbsearch logs (an evaluation metric's: ``EVAL`` + its name), every reason a trial is
    re-run for, every file name lbsearch writes and a checkpoint folder's prefix are spelled once:
    code, tests and benchmarks import the constant (a rename is one edit; a copy written out by hand would silently stop matching)."""
    facts = {getattr(tracking, n): n for n in tracking.__all__ if isinstance(getattr(tracking, n), str) and getattr(tracking, n).startswith("lbsearch.")}
    facts |= {getattr(outcome, n): n for n in ("WORKER_DIED", "INTERRUPTED", "TRACKING_LOST", "PROMOTED_STATE")}
    facts |= {outcome.PAUSED: "PAUSED (the reason) or PAUSED_STATE (the state a row and the lbsearch.state tag show)"}
    facts |= {compress_cli.ORIGINAL: "ORIGINAL (lbsearch.cli.compress)", compress_cli.INT8: "INT8 (lbsearch.cli.compress)"}
    facts |= {tag: f"BRANCH_TAGS[{key!r}]" for key, tag in branch.BRANCH_TAGS.items()}
    facts |= {tag: f"CBS_TAGS[{key!r}]" for key, tag in branch.CBS_TAGS.items()}
    facts |= {getattr(metric_names, n): n for n in metric_names.__all__} | {sampler.DIVERGED: "DIVERGED (lbsearch.study.sampler)"}
    facts |= {getattr(tags, n): n for n in ("BEST_TRIAL_TAG", "BEST_VALUE_TAG", "BEST_RUN_TAG", "DISTILL_LOGITS", "PARETO_TRIALS_TAG")} | {attributes.RUN_ID: "RUN_ID"}
    files = {}
    for name, module in FILE_NAMES.items():
        files.setdefault(getattr(module, name), []).append(name)
    homes = {Path(m.__file__) for m in (tags, protocol, outcome, compressed, tracker, metric_names, sampler, views, attributes, compress_cli, *FILE_NAMES.values())}
    root = PACKAGE.parent
    paths = [p for d in ("lbsearch", "tests", "benchmarks", "examples") for p in sorted((root / d).rglob("*.py"))]
    copies = []
    for p in paths:
        tree = ast.parse(p.read_text())
        defined = _definitions(tree) if p.resolve() in homes else set()  # a constant's own module spells it where it defines it
        copies += [f"{p.relative_to(root)}:{n.lineno}: {n.value[:80]!r} (use {_constant_for(n.value, facts, files)})"
                   for n in _literals(tree) if id(n) not in defined and _constant_for(n.value, facts, files)]
    assert not copies, "\n".join(copies)


def _definitions(tree: ast.Module) -> set[int]:
    """The literals of a module's constants as it defines them (``TRAIN_LOSS = "train/loss"``, ``A, B = "a", "b"``)."""
    upper = lambda t: t.id.isupper() if isinstance(t, ast.Name) else isinstance(t, ast.Tuple) and all(upper(e) for e in t.elts)  # noqa: E731
    return {id(n) for node in tree.body if isinstance(node, ast.Assign) and all(upper(t) for t in node.targets) for n in ast.walk(node.value)}


PREFIXES = (metric_names.EVAL, metric_names.VAL, metric_names.TEST)
"""The metric prefixes a task metric's name follows (``EVAL + "accuracy"``)."""


def _literals(tree: ast.Module) -> list[ast.Constant]:
    """The string literals of a module, without its docstrings and the docstrings of its attributes (prose, which may name a
    reason or a file) and its ``__all__`` (names)."""
    docs = {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    docs |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}  # a bare string: prose
    docs |= {id(n) for node in tree.body if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
             for n in ast.walk(node.value)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def _constant_for(text: str, facts: dict, files: dict) -> str:
    """The constant a string literal should have imported, or '' (a checkpoint folder's name: ``workdir.PREFIX``, or
    ``checkpoint_name(step)``, so that a path part ``step-00000005`` or a glob ``step-*`` follows a rename too; prose that
    describes the layout, a string with a space, may name it; a script, a string of several lines, may not quote any of them)."""
    last = text.rsplit("/", 1)[-1]
    if any(c.isspace() for c in text) and "\n" not in text:  # a sentence (a message, a description): a metric's name inside it
        named = [facts[name] for name in facts if "/" in name and re.search(rf"(?<![\w/]){re.escape(name)}(?![\w/])", text)]
        if named:
            return " or ".join(named) + " in an f-string"
    if "\n" in text:  # a script a test runs: a name quoted inside it
        quoted = [name for name in (*facts, *files) if f'"{name}"' in text or f"'{name}'" in text]
        quoted += [p for p in PREFIXES if f'"{p}' in text or f"'{p}" in text]
        return " or ".join(facts.get(name) or " or ".join(files[name]) for name in quoted)
    if not any(c.isspace() for c in text) and any(part.startswith((workdir.PREFIX, ".tmp-" + workdir.PREFIX)) for part in text.split("/")):
        return "PREFIX or checkpoint_name"
    if f"@{workdir.BEST_ALIAS}" in text and not any(c.isspace() for c in text):
        return "best_uri or BEST_ALIAS"
    prefix = next((p for p in PREFIXES if text.startswith(p) and text[len(p):].isidentifier()), None)
    if prefix:
        return f"{facts[prefix]} + the metric's name"
    if text.startswith("lbsearch.") and text[len("lbsearch."):].isidentifier() and text not in facts and not (PACKAGE / text[len("lbsearch."):]).exists() \
            and not (PACKAGE / f"{text[len('lbsearch.'):]}.py").exists():
        return "a constant for this tag, in lbsearch/tracking/tags.py"
    return facts.get(text) or " or ".join(files.get(last, []))


def test_the_state_folders_are_named_once():
    """The state folder's ``trials``, ``reports`` and ``cache`` folders are ``spec.workdir.TRIALS``, ``REPORTS`` and ``CACHE`` (``trials_dir``,
    ``reports_dir``, ``data_cache_dir``), and a trial's checkpoints folder is ``FOLDER``: no path built with ``/`` and no glob spells them
    (a rename is one edit; a copy would find nothing, and a test of an empty glob would pass on it)."""
    root, found, names = PACKAGE.parent, [], {workdir.TRIALS, workdir.REPORTS, workdir.FOLDER, workdir.CACHE}
    paths = [p for d in ("lbsearch", "tests", "benchmarks", "examples") for p in sorted((root / d).rglob("*.py")) if p.resolve() != Path(workdir.__file__)]
    for path in paths:
        for n in ast.walk(ast.parse(path.read_text())):
            joined = isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and bool(names & {getattr(n.left, "value", None), getattr(n.right, "value", None)})
            globbed = isinstance(n, ast.Call) and getattr(n.func, "attr", "") in ("glob", "rglob", "ignore_patterns") and any(
                isinstance(c, ast.Constant) and isinstance(c.value, str) and bool(names & set(c.value.split("/"))) for a in n.args for c in ast.walk(a))
            if joined or globbed:
                found.append(f"{path.relative_to(root)}:{n.lineno} (use TRIALS / trials_dir, REPORTS / reports_dir, CACHE / data_cache_dir or FOLDER)")
    assert not found, "\n".join(found)


ATTRIBUTES = {getattr(attributes, n): n for n in attributes.__all__ if isinstance(getattr(attributes, n), str)} | {
    v: f"RESUMED_FROM[{k!r}]" for k, v in attributes.RESUMED_FROM.items()}
"""The Optuna user attributes lbsearch keeps on trials and studies, by name (``lbsearch.spec.attributes``)."""


def _attribute_keys(tree: ast.Module) -> list[ast.Constant]:
    """The string literals a module uses as a user attribute's name: ``user_attrs["x"]``, ``user_attrs.get("x")``,
    ``"x" in ....user_attrs``, ``set_user_attr("x", ...)``, ``user_attrs={"x": ...}`` and ``user_attrs == {"x": ...}``."""
    keys = []
    for n in ast.walk(tree):
        owner = n.value if isinstance(n, ast.Subscript) else n.func.value if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
            and n.func.attr == "get" else n.comparators[0] if isinstance(n, ast.Compare) else n.func if isinstance(n, ast.Call) else None
        key = n.slice if isinstance(n, ast.Subscript) else n.left if isinstance(n, ast.Compare) else (n.args or [None])[0] if isinstance(n, ast.Call) else None
        if getattr(owner, "attr", "") in ("user_attrs", "set_user_attr") and isinstance(key, ast.Constant):
            keys.append(key)
        if isinstance(n, ast.keyword) and n.arg == "user_attrs" and isinstance(n.value, ast.Dict):
            keys += [k for k in n.value.keys if isinstance(k, ast.Constant)]
        if isinstance(n, ast.Compare) and any(getattr(o, "attr", "") == "user_attrs" for o in [n.left, *n.comparators]):
            keys += [k for o in [n.left, *n.comparators] if isinstance(o, ast.Dict) for k in o.keys if isinstance(k, ast.Constant)]
    return keys


def test_the_user_attributes_are_named_once():
    """A trial's or a study's user attribute is read and set by its constant (``lbsearch.spec.attributes``), never by its
    name written out (``"rung"``, ``"config"``: words too common for the literal guard above), so a rename is one edit."""
    root, found = PACKAGE.parent, []
    for path in [p for d in ("lbsearch", "tests", "benchmarks", "examples") for p in sorted((root / d).rglob("*.py"))]:
        found += [f"{path.relative_to(root)}:{k.lineno}: {k.value!r} (use {ATTRIBUTES[k.value]})" for k in _attribute_keys(ast.parse(path.read_text()))
                  if k.value in ATTRIBUTES]
    assert not found, "\n".join(found)
