"""The suite with every spec default shifted: finds a test that relies on a default without saying so.

A spec field's default is written in its model and its docs/specs.md row only. For that to hold, no test
may depend on a default it does not set: a test that does would break (or, worse, quietly test something
else) the day the default changes. This runs the suite with every default of every spec model shifted to
another valid value at once (the next allowed value, the other bool, an int doubled, a float x1.5), the module
constants that are settings too (``CONSTANTS``) and the defaults of the command-line options (``option``), in the test process and in every process it starts (`sitecustomize.py`
here, on PYTHONPATH)::

    .venv/bin/python tests/shifted/shift.py            # the table of shifts, then the whole suite shifted
    .venv/bin/python tests/shifted/shift.py --table    # the table only
    .venv/bin/python tests/shifted/shift.py tests/spec # pytest's arguments: a part of the suite

Tests marked ``default`` check a default itself (docs/specs.md's rows against the models) and are left out.
A few fields are not shifted (``KEPT``, each with its reason). CI runs it after the suite (.ci/run)."""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import inspect
import os
import pkgutil
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined

import lbsearch.spec
from lbsearch.spec.registry import LR_SCALING

ROOT = Path(__file__).resolve().parents[2]

KEPT = {
    "ExecutorConfig.kind": "`ray` needs a Ray cluster; the Ray executor's tests set it",
    "LauncherConfig.compile": "torch.compile on every trial would take the suite from minutes to hours",
    "ExperimentConfig.task": "a dataset is of one task: the next task refuses every spec's data",
    "DataConfig.label_scaling": "regression only: any other task refuses it",
    "FloatParam.optional": "an optional parameter may be drawn unset, which a required field (`optimizer.lr`) refuses",
    "FloatParam.log": "a log range needs `low > 0`: a range from 0 is refused",
    "IntParam.log": "a log range needs `low > 0`: a range from 0 is refused",
    "BatchSchedule.kind": "each kind needs fields of its own (`at_samples`, `ramp_samples`, ...) that a spec sets with the kind",
}

CONSTANTS = {
    "lbsearch.spec.workdir": ("KEEP_CHECKPOINTS",),
    "lbsearch.spec.outcome": ("GPU_TOLERANCE",),
    "lbsearch.tracking.outbox": ("OUTAGE_DEFAULT_S",),
    "lbsearch.science.cbs": ("N_BOOT", "CONFIDENCE", "EPS_SPREADS"),
    "lbsearch.science.lm_report": ("N_RESAMPLES", "CONFIDENCE"),
    "lbsearch.cli.main": ("SPARSITIES", "REPEATS", "UI_PORT"),
}
"""The module constants that are settings like a spec default (docs/architecture.md, "Common changes"), each shifted by
``constant`` from its own value (a new value there needs no edit here): set in its module as that module is imported, and in
the functions' keyword defaults that read it."""


def constant(value: Any) -> Any:
    """A constant's other value: the other bool; an int halved (a count: the run stays quick), 1 → 2; a share in (0, 1) moved
    away from its nearer end (0.95 → 0.9, 0.01 → 0.02); another float x1.5; a tuple without its last item."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value // 2 if value > 1 else value + 1
    if isinstance(value, float):
        return round(value * 2 if value <= 0.5 else 1 - (1 - value) * 2, 12) if 0 < value < 1 else value * 1.5
    return value[:-1] if isinstance(value, tuple) and len(value) > 1 else value


OPTIONS = {"--rule": lambda rule: _next(list(LR_SCALING), rule), "--k": lambda ks: ks.rsplit(",", 1)[0] if "," in ks else f"{ks},2"}
"""The command-line options (``lbsearch.cli``) whose default is a string, each with how it is shifted (the next lr-scaling rule;
the multiples without the largest); an option with an int default takes it doubled (1 for 0), a float x1.5 (``option``)."""


def _next(choices: list[Any], value: Any) -> Any:
    return choices[(choices.index(value) + 1) % len(choices)]

KEPT_OPTIONS = {
    "--mlruns": "the state folder: every test passes its own",
    "--host": "another address would expose the UI beyond this machine",
    "--port": "`UI_PORT`, shifted in CONSTANTS",
    "--repeats": "`REPEATS`, shifted in CONSTANTS",
    "--sparsity": "`SPARSITIES`, shifted in CONSTANTS",
}


def option(flags: list[str], default: Any) -> Any:
    """The shifted default of the command-line option ``flags`` (unchanged: unset, a switch, a list or kept)."""
    name = flags[-1] if flags else ""
    if not name.startswith("--") or name in KEPT_OPTIONS or default in (None, argparse.SUPPRESS) or isinstance(default, (bool, list)):
        return default
    if name in OPTIONS:
        return OPTIONS[name](default)
    if isinstance(default, int):
        return default * 2 or 1
    return default * 1.5 or 0.1 if isinstance(default, float) else default


def cli_defaults() -> list[tuple[str, list[str], Any]]:
    """(command, option flags, default) of every option of every ``lbsearch`` command."""
    from lbsearch.cli.main import build_parser  # here, not at the top: every process imports this module as it starts

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, action.option_strings, action.default) for name, parser in commands.items() for action in parser._actions]


def _shift_options() -> None:
    """Every option that ``lbsearch.cli`` adds to a parser gets its shifted default (its help prints that one)."""
    add = argparse._ActionsContainer.add_argument

    def shifted(container, *args, **kwargs):
        action = add(container, *args, **kwargs)
        if sys._getframe(1).f_globals.get("__name__", "").startswith("lbsearch.cli"):
            action.default = option(action.option_strings, action.default)
        return action

    argparse._ActionsContainer.add_argument = shifted


def models() -> list[type[BaseModel]]:
    """Every pydantic model a spec file is read into (the wire format's models are not spec fields)."""
    found: dict[type, None] = {}
    names = (f"lbsearch.spec.{m.name}" for m in pkgutil.iter_modules(lbsearch.spec.__path__) if m.name != "protocol")
    for module in map(importlib.import_module, names):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__:
                found[value] = None
    return sorted(found, key=lambda m: (m.__module__, m.__qualname__))


def _candidates(default: Any, annotation: Any) -> list[Any]:
    choices = [c for a in (annotation, *typing.get_args(annotation)) if typing.get_origin(a) is typing.Literal
               for c in typing.get_args(a)]
    if choices:
        return [choices[(choices.index(default) + 1) % len(choices)]] if default in choices and len(choices) > 1 else []
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int):
        return [default * 2, default + 1] if default else [1]
    if isinstance(default, float):
        return [default * 1.5, default * 0.5] if default else [0.1, 0.01]
    return []  # a free string (a model or dataset name, a column): no other value is known to be valid


def shifts() -> dict[tuple[type[BaseModel], str], tuple[Any, Any]]:
    """(model, field) -> (default, shifted value) for each field that has a scalar default and another valid value."""
    out = {}
    for model in models():
        for name, field in model.model_fields.items():
            if f"{model.__name__}.{name}" in KEPT or field.default in (PydanticUndefined, None) or field.default_factory:
                continue
            valid = TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)
            for value in _candidates(field.default, field.annotation):
                try:
                    out[model, name] = field.default, valid.validate_python(value)
                    break
                except ValidationError:
                    continue
    return out


def _set(module: ModuleType, names: tuple[str, ...]) -> None:
    for name in names:
        old = getattr(module, name)
        value = constant(old)
        setattr(module, name, value)
        for fn in (f for f in vars(module).values() if inspect.isfunction(f) and f.__module__ == module.__name__):
            fn.__kwdefaults__ = fn.__kwdefaults__ and {k: value if v is old else v for k, v in fn.__kwdefaults__.items()}
            fn.__defaults__ = fn.__defaults__ and tuple(value if v is old else v for v in fn.__defaults__)
        for other in (m for n, m in list(sys.modules.items()) if n.startswith("lbsearch") and m is not module):
            if getattr(other, name, None) is old:  # a re-export bound before the shift
                setattr(other, name, value)


class _Constants(importlib.abc.MetaPathFinder):
    """Sets a module's shifted constants as soon as the module has run."""

    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name in CONSTANTS else None
        if spec is not None:
            run = spec.loader.exec_module
            spec.loader.exec_module = lambda module: (run(module), _set(module, CONSTANTS[name]))
        return spec


def apply() -> None:
    """Shift the defaults in this process: each model's field, then every model rebuilt (nested ones first); the constants
    of modules already imported at once, the others as they are imported; the command-line options as they are added."""
    for name, names in CONSTANTS.items():
        if name in sys.modules:
            _set(sys.modules[name], names)
    sys.meta_path.insert(0, _Constants())
    _shift_options()
    table = shifts()
    for (model, name), (_, value) in table.items():
        model.model_fields[name].default = value
    ordered = models()
    for _ in range(4):  # a model's schema holds its nested models' schemas as they were when it was built
        for model in ordered:
            model.model_rebuild(force=True)


def main(args: list[str]) -> int:
    table = shifts()
    for (model, name), (default, value) in table.items():
        print(f"{model.__name__}.{name}: {default!r} -> {value!r}")
    for field, why in KEPT.items():
        print(f"{field}: not shifted ({why})")
    for module, names in CONSTANTS.items():
        print("\n".join(f"{module}.{name}: {getattr(importlib.import_module(module), name)!r} -> {constant(getattr(importlib.import_module(module), name))!r}"
                         for name in names))
    for command, flags, default in cli_defaults():
        if option(flags, default) != default:
            print(f"lbsearch {command} {flags[-1]}: {default!r} -> {option(flags, default)!r}")
    for name, why in KEPT_OPTIONS.items():
        print(f"{name}: not shifted ({why})")
    if args[:1] == ["--table"]:
        return 0
    here = str(Path(__file__).resolve().parent)  # absolute: the CLI runs the tests start have other working folders
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    print(f"{len(table)} defaults and {sum(map(len, CONSTANTS.values()))} constants shifted; the suite runs without the tests marked `default`", flush=True)
    return subprocess.call(["bash", "scripts/test.sh", "-m", "not default", *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
