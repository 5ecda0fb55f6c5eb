"""The docs name code that exists: every upper-case constant written in backquotes in README.md, CONTRIBUTING.md and
docs/*.md is defined, imported or spelled somewhere in the code, and every path into the repository or the package
resolves. A renamed constant or module that a doc still names fails here, so the docs that tell a reader where to make
a change cannot point at what is gone. A renamed value (a metric's, a tag's, a file's name) is not checked: the docs
say it to users on purpose, and ``git grep`` lists where."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
CONSTANT = re.compile(r"[A-Z][A-Z0-9_]{2,}")
EXTERNAL = {"TORCH_EXTENSIONS_DIR"}
"""Names of other programs that no file here spells (torch's extension cache)."""
DERIVED = re.compile(r"LBSEARCH_[A-Z_]+")
"""A script trial's environment variables, one per value it receives (``LBSEARCH_LR``): made from the value's name."""
TOP = ("lbsearch", "tests", "benchmarks", "docs", "examples", "studies", "experiments", "scripts")


def _tracked() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / p for p in listed]


def _known_names() -> set[str]:
    """What the code defines or imports, the upper-case words of its strings and of the scripts and specs (environment
    variables, Ray's and MLflow's names), and the shell variables of the docs' own recipes."""
    known: set[str] = set()
    for path in _tracked():
        if path.suffix == ".py" and path.is_file():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Name):
                    known.add(node.id)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    known.add(node.name)
                elif isinstance(node, ast.alias):
                    known.add(node.asname or node.name.rsplit(".", 1)[-1])
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    known.update(CONSTANT.findall(node.value))
        elif path.suffix in (".sh", ".yaml", ".toml") and path.is_file():
            known.update(CONSTANT.findall(path.read_text()))
    for doc in DOCS:  # a shell variable of a recipe the doc gives (``$OPTUNA_URL``)
        known.update(re.findall(r"\$\{?([A-Z][A-Z0-9_]{2,})", doc.read_text()))
    return known


def _quoted(doc: Path) -> list[tuple[int, str]]:
    text = doc.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in re.finditer(r"`([^`\s]+)`", text)]


@pytest.fixture(scope="module")
def known() -> set[str]:
    return _known_names()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_constant_a_doc_names_is_in_the_code(doc, known):
    missing = [f"{doc.relative_to(ROOT)}:{line}: {token}" for line, token in _quoted(doc)
               if CONSTANT.fullmatch(token) and token not in known and token not in EXTERNAL and not DERIVED.fullmatch(token)]
    assert not missing, "named in the docs, but nowhere in the code:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_names_exists(doc):
    """A path into the repository (``tests/spec/test_specs_doc.py``) or the package (``spec/config.py``), a module's
    name after it where one follows (``spec/config.py`` of ``spec/config.py:SamplerConfig`` and the like)."""
    packages = {p.name for p in (ROOT / "lbsearch").iterdir() if (p / "__init__.py").is_file()}
    missing = []
    for line, token in _quoted(doc):
        path = token.split(":", 1)[0].rstrip(".,")
        if "/" not in path or "*" in path or "<" in path or path.split("/", 1)[0] not in (*TOP, *packages):
            continue
        if not re.search(r"\.(py|md|yaml|sh|toml|json|html|png)$|/$", path):
            continue
        bases = (ROOT, ROOT / "lbsearch", ROOT / "tests")
        if not any((base / path).exists() for base in bases):
            missing.append(f"{doc.relative_to(ROOT)}:{line}: {token}")
    assert not missing, "named in the docs, but not in the repository:\n" + "\n".join(missing)
