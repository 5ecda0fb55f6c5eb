"""A spec default is written in its model and its docs/specs.md row only: no docs page, docstring, comment, example,
benchmark or test says it again in prose. The shifted run (``shift.py``) holds the tests' code to that; this holds
the text to it: a line that says ``default`` beside a field's name and the field's default value is a second copy,
which would go stale the day the default changes (write "its default, docs/specs.md" or name the value you set)."""

from __future__ import annotations

import io
import re
import subprocess
import tokenize

import pytest
import shift
from pydantic_core import PydanticUndefined

pytestmark = pytest.mark.default  # it reads the defaults themselves: left out of the shifted run

TEXT = (".md", ".py", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg")
RECORDS = ("docs/specs.md", "docs/results.md", "benchmarks/results/")
"""The defaults' own rows, and records of what ran then (a recorded run says what its settings were)."""
SAID = re.compile(r"(?<![\w.%])(?<!%\()default(s|ing)?(?![\w(]|\s*[=\[])", re.IGNORECASE)
"""The word in text ("the default", "defaults to"), not the code of a default (``default=``, ``%(default)s``, ``field.default``)."""
NEAR = 60
"""How close (in characters) the name, the value and the word must be to read as one statement."""


def _written(value) -> list[str]:
    """The ways a default is written in text: ``true``/``True``, ``0.9``, ``1e-08``/``1e-8``, ``cosine``."""
    if isinstance(value, bool):
        return [str(value).lower(), str(value)]
    if isinstance(value, float):
        return sorted({repr(value), f"{value:g}", re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{value:g}")} - {""})
    return [str(value)]


def defaults() -> dict[str, set[str]]:
    """field name -> the written forms of its default(s) (a name shared by sections, such as ``name``, keeps each)."""
    out: dict[str, set[str]] = {}
    for model in shift.models():
        for name, field in model.model_fields.items():
            if field.default not in (PydanticUndefined, None) and not field.default_factory and isinstance(field.default, (bool, int, float, str)):
                out.setdefault(name, set()).update(_written(field.default))
    return out


def _files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=shift.ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [f for f in listed if f.endswith(TEXT) and not f.startswith(RECORDS)]


def copies() -> list[str]:
    """``file:line: text`` for each line that says ``default`` near a field's name and near that field's default value."""
    patterns = [(re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])"),
                 re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, forms)) + r")(?![\w-]|\.\d)"))
                for name, forms in defaults().items()]
    found = []
    for path in _files():
        for number, line in enumerate(_prose(path), 1):
            said = [m.start() for m in SAID.finditer(line)]
            if said and any(_near(line, name, value, said) for name, value in patterns):
                found.append(f"{path}:{number}: {line.strip()[:160]}")
    return found


def _prose(path: str) -> list[str]:
    """The file's lines; in Python, only its words (comments and the strings with a space in them), the code blanked out."""
    text = (shift.ROOT / path).read_text(errors="replace")
    if not path.endswith(".py"):
        return text.splitlines()
    original = text.splitlines()
    lines = [[" "] * len(line) for line in original]
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and " " in token.string):
            for row in range(token.start[0], token.end[0] + 1):
                line = original[row - 1]
                start = token.start[1] if row == token.start[0] else 0
                end = token.end[1] if row == token.end[0] else len(line)
                lines[row - 1][start:end] = line[start:end]
    return ["".join(chars) for chars in lines]


def _near(line: str, name: re.Pattern, value: re.Pattern, said: list[int]) -> bool:
    values = [m.start() for m in value.finditer(line)]
    return any(abs(n.start() - v) <= NEAR and any(abs(n.start() - w) <= NEAR for w in said)
               for n in name.finditer(line) for v in values)


def test_no_text_repeats_a_spec_default():
    found = copies()
    assert not found, "a spec default written again (say where it lives instead):\n" + "\n".join(found)


def test_a_default_written_again_is_found(tmp_path, monkeypatch):
    """The check finds a copy, a docstring that says the warmup's default, and not a line of code (nor a comment without the value)."""
    monkeypatch.setattr(shift, "ROOT", tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "x.py").write_text(f'"""The warmup (`warmup_fraction`, default {_written(defaults_of("warmup_fraction"))[0]}) comes first."""\nwarmup_fraction = 1  # default\n')
    subprocess.run(["git", "add", "x.py"], cwd=tmp_path, check=True)
    assert copies() == [f"x.py:1: {(tmp_path / 'x.py').read_text().splitlines()[0]}"]


def defaults_of(name: str):
    return next(m.model_fields[name].default for m in shift.models() if name in m.model_fields)
