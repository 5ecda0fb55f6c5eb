"""The shifted-defaults run (``shift.py``): every shift is valid and differs from its default, the fields it keeps
exist, and a process started with this folder on PYTHONPATH builds every nested spec section with the shifted values."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import shift

from lbsearch.spec import ExperimentConfig, StudyConfig

HERE = Path(__file__).parent
pytestmark = pytest.mark.default  # they compare the shifted values with the plain defaults: left out of the shifted run itself

_DUMP = """
import importlib
import json
from lbsearch.spec import StudyConfig
print(json.dumps(StudyConfig.model_validate({"name": "s", "experiment": {"name": "x"}, "n_trials": 1}).model_dump(mode="json")))
"""


def _sections(dump: dict) -> dict[str, dict]:
    """A minimal study's sections by model name (the nested ones built from their defaults)."""
    exp = dump["experiment"]
    return {"StudyConfig": dump, "SamplerConfig": dump["sampler"], "PrunerConfig": dump["pruner"], "ExecutorConfig": dump["executor"],
            "ExperimentConfig": exp, **{type(getattr(ExperimentConfig(name="x"), k)).__name__: exp[k]
                                        for k in ("model", "optimizer", "schedule", "train", "launcher", "data", "metric")}}


_CONSTANTS = """
import importlib, inspect, json, shift
from lbsearch.science.cbs import cbs_table
seen = {f"{m}.{n}": getattr(importlib.import_module(m), n) for m, values in shift.CONSTANTS.items() for n in values}
import lbsearch.spec
seen |= {"n_boot": inspect.signature(cbs_table).parameters["n_boot"].default, "reexport": lbsearch.spec.GPU_TOLERANCE}
print(json.dumps(seen))
"""


def test_a_process_started_with_the_folder_on_its_path_sees_every_constant_shifted_where_it_is_read():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    seen = json.loads(subprocess.run([sys.executable, "-c", _CONSTANTS], env=env, capture_output=True, text=True, check=True).stdout)
    for module, names in shift.CONSTANTS.items():
        for name in names:
            plain = getattr(importlib.import_module(module), name)
            value = shift.constant(plain)
            assert seen[f"{module}.{name}"] == (list(value) if isinstance(value, tuple) else value) != plain, f"{module}.{name}"
    assert seen["n_boot"] == seen["lbsearch.science.cbs.N_BOOT"]  # a keyword default that read the constant
    assert seen["reexport"] == seen["lbsearch.spec.outcome.GPU_TOLERANCE"]  # lbsearch.spec's re-export


def test_each_shift_is_another_valid_value_and_each_kept_field_exists():
    table = shift.shifts()
    assert len(table) >= 60
    for (model, name), (default, value) in table.items():
        assert value != default and model.model_fields[name].default == default
    fields = {f"{m.__name__}.{n}" for m in shift.models() for n in m.model_fields}
    assert set(shift.KEPT) <= fields
    assert not {f"{m.__name__}.{n}" for m, n in table} & set(shift.KEPT)


def test_a_process_started_with_the_folder_on_its_path_builds_every_section_shifted():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    shifted = _sections(json.loads(subprocess.run([sys.executable, "-c", _DUMP], env=env, capture_output=True, text=True, check=True).stdout))
    plain = _sections(StudyConfig.model_validate({"name": "s", "experiment": {"name": "x"}, "n_trials": 1}).model_dump(mode="json"))
    checked = 0
    for (model, name), (default, value) in shift.shifts().items():
        if model.__name__ in shifted:
            assert plain[model.__name__][name] == default and shifted[model.__name__][name] == value, f"{model.__name__}.{name}"
            checked += 1
    assert checked >= 50


_OPTIONS = """
import json, shift
print(json.dumps([[command, flags, default] for command, flags, default in shift.cli_defaults()]))
"""


def test_every_command_line_default_is_shifted_or_kept_with_a_reason():
    """An option's default is shifted in every process (its help prints the shifted one); a string default needs its other
    value named in ``OPTIONS`` (or a reason in ``KEPT_OPTIONS``), so an option added later is not silently left out."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    seen = json.loads(subprocess.run([sys.executable, "-c", _OPTIONS], env=env, capture_output=True, text=True, check=True).stdout)
    plain = shift.cli_defaults()
    assert [(c, f) for c, f, _ in seen] == [(c, f) for c, f, _ in plain]
    flags = {f[-1] for _, f, _ in plain if f}
    assert set(shift.OPTIONS) | set(shift.KEPT_OPTIONS) <= flags
    shifted = 0
    for (command, flag, default), (_, _, value) in zip(plain, seen):
        name = f"lbsearch {command} {flag[-1] if flag else ''}"
        if not flag or default in (None, argparse.SUPPRESS) or isinstance(default, (bool, list)) or flag[-1] in shift.KEPT_OPTIONS:
            continue  # unset, a switch, or kept (the constants' options are shifted through CONSTANTS)
        assert value != default, f"{name}: its default {default!r} is not shifted (name another value in OPTIONS, or a reason in KEPT_OPTIONS)"
        shifted += 1
    assert shifted >= 6
