"""docs/specs.md lists every field with its default in parentheses; the models in lbsearch/spec are where the
defaults live. These tests read the doc's tables and fail when a documented field does not exist or its
documented default differs from the model's, so a default changed in the code without the doc (or the other
way round) is caught here and the error names the row."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from lbsearch.spec import ExperimentConfig, StudyConfig

pytestmark = pytest.mark.default  # the rows' defaults against the models': left out where tests/shifted/shift.py shifts them

DOC = Path(__file__).resolve().parents[2] / "docs" / "specs.md"
FIELD = re.compile(r"`(\w+)`(?: \(([^)]*)\))?")
UNSET = {"unset", "null", "none"}
STUDY_KEYS_OF_THE_LOADER = {"experiment_overrides", "launcher"}  # read by spec/load.py before the model


def _table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under ``## heading``."""
    text = DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _documented(cell: str) -> list[tuple[str, str | None]]:
    """(field, documented default or None) for each backticked name at the start of a field cell."""
    return [(m.group(1), m.group(2)) for m in FIELD.finditer(cell)]


def _value(text: str):
    text = text.strip()
    if text.startswith("`"):
        return text.strip("`")  # a name, as written in YAML
    if text.lower() in UNSET:
        return None
    try:
        return float(text) if re.fullmatch(r"[-+]?\d+(\.\d*)?e[-+]?\d+", text) else yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _default(model: type[BaseModel], name: str):
    info = model.model_fields[name]
    return info.default_factory() if info.default_factory is not None else info.default


def _section_model(name: str) -> type[BaseModel]:
    """The model of an experiment section, dotted for a nested one (``train.batch_schedule``); an optional section
    (``distill: DistillConfig | None``) gives its model."""
    model: type[BaseModel] = ExperimentConfig
    for part in name.split("."):
        annotation = model.model_fields[part].annotation
        model = next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
    return model


def _experiment_rows() -> list[tuple[type[BaseModel], str, str | None, str]]:
    out, model = [], ExperimentConfig
    for section, field, *_ in _table("Experiment fields"):
        if section:
            model = ExperimentConfig if section == "(top)" else _section_model(section.strip("`"))
        out += [(model, name, default, f"{section or model.__name__} | {field}") for name, default in _documented(field)]
    return out


def _study_rows() -> list[tuple[type[BaseModel], str, str | None, str]]:
    """A study field, and for a section (`sampler`, `pruner`, `warm_start`, ...) its own fields in the meaning cell (the default
    is the first thing in the parentheses: `patience` (2, patient) says 2)."""
    out = []
    for field, meaning, *_ in _table("Study fields"):
        (name, default), = _documented(field)[:1]
        out.append((StudyConfig, name, default, field))
        model = next((a for a in (StudyConfig.model_fields[name].annotation, *get_args(StudyConfig.model_fields[name].annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None) if name in StudyConfig.model_fields else None
        if model is not None:  # a section (`sampler`, `pruner`, `warm_start`, ...): its own fields' defaults in the meaning cell
            out += [(model, sub, None if d is None else d.split(",")[0], f"{name} | {sub}")
                    for sub, d in _documented(meaning) if d is not None and sub in model.model_fields or sub == "name"]
    return out


ROWS = _experiment_rows() + _study_rows()


def test_the_doc_tables_were_read():
    names = {(model.__name__, name) for model, name, _, _ in ROWS}
    assert ("TrainConfig", "budget_samples") in names and ("StudyConfig", "heartbeat_interval") in names
    assert ("DistillConfig", "temperature") in names and ("BatchSchedule", "lr_scaling") in names
    assert len(ROWS) > 60


@pytest.mark.parametrize("model,name,documented,row", ROWS, ids=[f"{m.__name__}.{n}" for m, n, _, _ in ROWS])
def test_each_documented_field_exists_and_its_default_is_the_models(model, name, documented, row):
    if model is StudyConfig and name in STUDY_KEYS_OF_THE_LOADER:
        return
    assert name in model.model_fields, f"docs/specs.md row `{row}` names {name}, which {model.__name__} has not"
    if documented is None or not re.fullmatch(r"[`\w.+\-{}\[\]]+", documented):
        return  # no default given, or a default said in words ("3 intervals")
    want = _default(model, name)
    got = _value(documented)
    if isinstance(want, float) and isinstance(got, (int, float)):
        assert float(got) == pytest.approx(want, rel=0, abs=0), f"docs/specs.md row `{row}`: documented {documented}, the model's default is {want}"
    else:
        assert got == want, f"docs/specs.md row `{row}`: documented {documented}, the model's default is {want!r}"
