"""The dependency rule of docs/architecture.md, read from every ``import`` in the package with ``ast``:
imports inside functions and under ``TYPE_CHECKING`` count like any other.

- a package imports only the packages its row of ``MAY_IMPORT`` names (lower floors), never one
  on its own floor or above;
- no import loop, between packages or between the modules of one package;
- code outside a package reaches it through its public face (``lbsearch.<package>``, its
  ``__init__.py``), never through a module of it, and never a ``_private`` name;
- torch and MLflow are imported only where the table says; Ray (an optional extra) only inside the
  functions of ``orchestrator/ray_executor.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "lbsearch"

MAY_IMPORT = {  # the table of docs/architecture.md, floor by floor
    "spec": set(),
    "terminal": {"spec"},
    "data": {"spec"},
    "study": {"spec"},
    "link": {"spec", "study"},
    "tracking": {"spec", "data"},
    "science": {"spec"},
    "trial": {"spec", "data", "link"},
    "integrations": {"spec", "link"},
    "orchestrator": {"spec", "terminal", "data", "study", "tracking", "science"},
    "cli": {"spec", "terminal", "data", "study", "tracking", "science", "orchestrator", "trial"},
    "": {"integrations"},  # lbsearch/api.py, hf.py, lightning.py: the public paths of the adapters
}
TORCH = {"trial", "integrations"}
"""Packages that may import torch, transformers and accelerate at module level."""
IN_FUNCTIONS = {
    "torch": {"orchestrator/launch.py", "cli/commands.py", "tracking/tracker.py"},  # a GPU and its bf16 support; the versions a run records
    "transformers": {"data/tokenizer.py", "data/corpus.py"},  # tokenizers (no torch)
    "accelerate": {"spec/accelerate_file.py", "orchestrator/launch.py"},  # Accelerate's own check of its config file and parser of launch flags
    "mlflow": set(),
    "ray": {"orchestrator/ray_executor.py"},  # the optional extra: the one module that places trials on a Ray cluster
}
"""Modules that may import the library inside a function only: importing them loads nothing heavy."""
MLFLOW = {"tracking"}


def _package(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["lbsearch", *parts])


def imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(module, names, line, at module level) for every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            out.append((node.module, [a.name for a in node.names], node.lineno, id(node) in top))
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module(p): p for p in FILES}


def _target(module: str, names: list[str]) -> list[str]:
    """The lbsearch modules an import statement loads (``from lbsearch.x import y`` where y is a module counts as y)."""
    if not module.startswith("lbsearch"):
        return []
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return [module, *subs]  # `from pkg import mod` runs pkg's __init__ first: an edge to both


def edges() -> list[tuple[str, str, int]]:
    return [(mod, t, line) for mod, path in MODULES.items() for m, names, line, _ in imports(path) for t in _target(m, names)]


def _pkg_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def test_every_sub_package_is_in_the_table():
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(MAY_IMPORT) - {""}


def test_packages_import_only_lower_floors():
    wrong = [f"{MODULES[a].relative_to(PACKAGE)}:{line} imports {b}"
             for a, b, line in edges() if _pkg_of(a) != _pkg_of(b) and _pkg_of(b) not in MAY_IMPORT[_pkg_of(a)]]
    assert not wrong, "imports against the table in docs/architecture.md:\n" + "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_loops_between_modules():
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges():
        if a != b and not (a == "lbsearch" or b == "lbsearch"):  # lbsearch/__init__.py imports nothing
            graph.setdefault(a, set()).add(b)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_loops_between_packages():
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges():
        if _pkg_of(a) != _pkg_of(b):
            graph.setdefault(_pkg_of(a), set()).add(_pkg_of(b))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_other_packages_use_the_public_face_only():
    faces = {}
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        faces[init.parent.name] = next(ast.literal_eval(n.value) for n in tree.body
                                       if isinstance(n, (ast.Assign, ast.AnnAssign)) and getattr(getattr(n, "target", None) or n.targets[0], "id", "") == "__all__")
    wrong = []
    for path in FILES:
        me = _package(path)
        for module, names, line, _ in imports(path):
            parts = module.split(".")
            if parts[0] != "lbsearch" or len(parts) < 2 or parts[1] == me or parts[1] not in faces or path.parent == PACKAGE:
                continue
            if len(parts) > 2 or any(n not in faces[parts[1]] for n in names):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line}: from {module} import {', '.join(names)}")
    assert not wrong, "reach another package through its __init__ (__all__):\n" + "\n".join(wrong)


def test_every_face_names_what_it_imports():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init}: say what the package holds"
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        listed = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                      and getattr(getattr(n, "target", None) or n.targets[0], "id", "") == "__all__")
        assert set(listed) == imported, init
        assert not [n for n in listed if n.startswith("_")], init


@pytest.mark.parametrize("library,allowed", [("torch", TORCH), ("transformers", TORCH), ("accelerate", TORCH), ("mlflow", MLFLOW),
                                                   ("ray", set())])
def test_heavy_libraries_stay_in_their_packages(library, allowed):
    wrong = []
    for path in FILES:
        rel = str(path.relative_to(PACKAGE))
        for module, _, line, top in imports(path):
            if module.split(".")[0] != library or _package(path) in allowed:
                continue
            if not top and rel in IN_FUNCTIONS[library]:
                continue
            wrong.append(f"{rel}:{line}: {module}")
    assert not wrong, f"{library} imported outside {sorted(allowed)}:\n" + "\n".join(wrong)


def test_the_two_processes_meet_only_through_the_wire_format():
    """The orchestrator never loads trial-process code, and the trial process never loads orchestrator code."""
    trial_side, orchestrator_side = {"trial", "integrations", "link"}, {"orchestrator", "tracking", "science"}
    wrong = [f"{a} imports {b}" for a, b, _ in edges()
             if (_pkg_of(a) in orchestrator_side and _pkg_of(b) in trial_side) or (_pkg_of(a) in trial_side and _pkg_of(b) in orchestrator_side)]
    assert not wrong, wrong


def test_the_rule_catches_a_loop(tmp_path, monkeypatch):
    """The checks above would fail on a loop: study -> orchestrator (a floor above) and back."""
    graph = {"spec": set(), "study": {"spec", "orchestrator"}, "orchestrator": {"study"}}
    assert _cycle(graph) == ["orchestrator", "study", "orchestrator"]
