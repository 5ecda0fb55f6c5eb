"""Loading specs: YAML files and ``--set`` overrides into validated experiments and studies.

Every error names the file and the field: ``studies/x.yaml: search_space.optimizer.lr.low: ...``;
an unknown key lists the valid ones.
"""

from __future__ import annotations

import copy
import difflib
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lbsearch.spec.config import CategoricalParam, ExperimentConfig, FloatParam, IntParam, SpecError, StudyConfig
from lbsearch.spec.registry import BUILTIN_DATASETS, BUILTIN_MODELS
from lbsearch.spec.script import ScriptExperimentConfig, ScriptStudyConfig, experiment_model, is_script

__all__ = ["parse_set", "apply_params", "validate_experiment", "load_experiment_raw", "load_experiment", "load_study"]

_DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".bz2", ".gz")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(path, None, "file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(path, None, f"malformed YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(path, None, f"expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set a.b=value`` items; values are read as YAML (``1e-4``, ``null``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(None, "--set", f"expected key=value, got {item!r}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        # YAML 1.1 reads 1e-4 (no dot) as a string; on a command line it is a number
        out[key.strip()] = float(parsed) if isinstance(parsed, str) and _EXPONENT.fullmatch(parsed) else parsed
    return out


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c``; keys that themselves contain dots (``search_space.optimizer.lr.high``) are
    matched greedily against the keys present."""
    keys = dotted.split(".")
    node = raw
    while len(keys) > 1:
        n = next((n for n in range(len(keys) - 1, 1, -1) if ".".join(keys[:n]) in node), 1)
        key, keys = ".".join(keys[:n]), keys[n:]
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise SpecError(None, dotted, f"`{key}` is not a section")
        node = nxt
    node[keys[0]] = value


def apply_params(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted ``params`` key set to its value."""
    raw = copy.deepcopy(raw)
    for key, value in params.items():
        _set_path(raw, key, value)
    return raw


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The valid keys of the section at ``loc`` (for "unknown key" messages)."""
    cls: Any = model
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            if part in ("float", "int", "categorical"):  # discriminated union tag in the loc
                cls = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}[part]
                continue
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = args[0] if args else ann
    if isinstance(cls, type) and issubclass(cls, BaseModel):  # the model's own fields first, then a section's mixins' (`executor`)
        own = getattr(cls, "__annotations__", {})
        return sorted(cls.model_fields, key=lambda name: name not in own)
    return None


def _raise_validation(path: Path | None, model: type[BaseModel], err: ValidationError, prefix: str = "") -> None:
    errors = err.errors()
    # an unknown key is usually a misspelt one, which then also shows up as "missing": report the typo
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    if loc and loc[0] == "search_space":  # drop pydantic's union-member tag
        loc = tuple(p for i, p in enumerate(loc) if not (i == 2 and p in ("float", "int", "categorical")))
    field = ".".join(str(p) for p in loc)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    kind = first["type"]
    if kind == "extra_forbidden":
        valid = _field_names(model, tuple(first["loc"])[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid or [], n=1)
        msg = "unknown key" + (f" (did you mean `{close[0]}`?)" if close else "") + (f"; valid keys: {', '.join(valid)}" if valid else "")
    elif kind == "missing":
        msg = "required field is missing"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if "input" in first and kind not in ("value_error",) and not isinstance(first["input"], dict):
            msg += f", got {first['input']!r}"
    raise SpecError(path, field or None, msg) from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make local data/model paths in an experiment absolute, relative to its spec file."""

    def local(value: Any) -> Any:
        if not isinstance(value, str) or value in (*BUILTIN_DATASETS, *BUILTIN_MODELS, "random"):
            return value
        candidate = (base / value).expanduser()
        looks_local = value.startswith((".", "/", "~")) or value.lower().endswith(_DATA_SUFFIXES)
        if candidate.exists() or (looks_local and not Path(value).is_absolute()):
            return str(candidate.resolve())
        return value

    data = raw.get("data")
    if isinstance(data, dict):
        if "source" in data:
            data["source"] = local(data["source"])
        if isinstance(data.get("files"), dict):
            data["files"] = {k: local(v) for k, v in data["files"].items()}
    model = raw.get("model")
    if isinstance(model, dict):
        for key in ("source", "tokenizer"):
            if key in model:
                model[key] = local(model[key])
    launcher = raw.get("launcher")
    if isinstance(launcher, dict) and isinstance(launcher.get("accelerate_config"), str):
        launcher["accelerate_config"] = str((base / launcher["accelerate_config"]).resolve())
    script = raw.get("script")
    if isinstance(script, dict) and isinstance(script.get("command"), str):
        script["command"] = _resolve_command(script["command"], base)


def _resolve_command(command: str, base: Path) -> str:
    """A script trial runs in its own folder: make the script's path absolute, relative to the spec file."""
    argv = shlex.split(command)
    if argv and argv[0] != "-m" and not Path(argv[0]).expanduser().is_absolute():
        argv[0] = str((base / argv[0]).expanduser().resolve())
    return shlex.join(argv)


def _check_local_sources(path: Path | None, exp: ExperimentConfig | ScriptExperimentConfig) -> None:
    """Missing local files are spec errors, found before anything runs."""
    _check_accelerate_config(exp.launcher.model_dump())
    if isinstance(exp, ScriptExperimentConfig):
        script = shlex.split(exp.script.command)[0]
        if script != "-m" and not Path(script).is_file():
            raise SpecError(path, "script.command", f"script not found: {script}")
        return
    src = exp.data.source
    if exp.data.files:
        for split, file in exp.data.files.items():
            if not Path(file).is_file():
                raise SpecError(path, f"data.files.{split}", f"file not found: {file}")
    elif src not in BUILTIN_DATASETS and Path(src).is_absolute() and not Path(src).exists():
        raise SpecError(path, "data.source", f"file not found: {src}")
    for key in ("source", "tokenizer"):
        value = getattr(exp.model, key)
        if value and value not in BUILTIN_MODELS + ("random",) and Path(value).is_absolute() and not Path(value).is_dir():
            raise SpecError(path, f"model.{key}", f"model folder not found: {value}")
    if exp.model.source == "random" and not exp.model.config:
        raise SpecError(path, "model.config", "a `random` model needs its architecture in `config` (e.g. hidden_size)")


def _check_accelerate_config(launcher: dict[str, Any]) -> None:
    """The accelerate config must be readable, and agree with the launcher fields it also sets."""
    from lbsearch.spec.accelerate_file import file_conflict, read_config

    if not launcher.get("accelerate_config"):
        return
    try:
        conflict = file_conflict(launcher, read_config(launcher["accelerate_config"]))
    except ValueError as err:
        raise SpecError(None, "launcher.accelerate_config", str(err)) from None
    if conflict:
        raise SpecError(None, f"launcher.{conflict[0]}", f"{conflict[1]} ({launcher['accelerate_config']})")


def validate_experiment(raw: dict[str, Any], path: Path | None = None, prefix: str = "") -> ExperimentConfig:
    """An experiment of lbsearch's own training, or of ``kind: script`` (``lbsearch.spec.script``)."""
    model = experiment_model(raw)
    if isinstance(raw, dict) and "script" in raw and not is_script(raw):
        raise SpecError(path, f"{prefix}.kind" if prefix else "kind", "an experiment with a `script` section needs `kind: script`")
    try:
        exp = model.model_validate(raw)
    except ValidationError as err:
        _raise_validation(path, model, err, prefix)
    try:
        _check_local_sources(path, exp)
    except SpecError as err:
        raise SpecError(path, f"{prefix}.{err.field}" if prefix else err.field, err.message) from None
    return exp


def _split_overrides(overrides: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    inner = {k[len(prefix) + 1 :]: v for k, v in overrides.items() if k.startswith(prefix + ".")}
    outer = {k: v for k, v in overrides.items() if not k.startswith(prefix + ".")}
    return inner, outer


def load_experiment_raw(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    path = Path(path)
    raw = apply_params(_read_yaml(path), overrides or {})
    _resolve_paths(raw, path.parent)
    return raw


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate an experiment spec; ``overrides`` are dotted ``--set`` keys."""
    path = Path(path)
    return validate_experiment(load_experiment_raw(path, overrides), path)


def _check_search_space(path: Path, study: StudyConfig, exp_raw: dict[str, Any]) -> None:
    """Each searched field must exist, and each end of its range must give a valid experiment."""
    for key, param in study.search_space.items():
        field = f"search_space.{key}"
        parts = key.split(".")
        names = _field_names(experiment_model(exp_raw), tuple(parts[:-1]))
        parent_is_dict = (parts[0] == "model" and len(parts) >= 3 and parts[1] == "config") or (
            parts[0] == "params" and len(parts) == 2 and is_script(exp_raw))
        if not parent_is_dict and (names is None or parts[-1] not in names):
            raise SpecError(path, field, f"`{key}` is not a field of the experiment")
        if isinstance(param, CategoricalParam):
            probes = list(param.choices)
        else:
            probes = [param.low, param.high] + ([None] if isinstance(param, FloatParam) and param.optional else [])
        for value in probes:
            try:
                validate_experiment(apply_params(exp_raw, {key: value}), None)
            except SpecError as err:
                raise SpecError(path, field, f"value {value!r} gives an invalid experiment: {err}") from None
    if study.sampler.name == "grid":
        bad = [k for k, p in study.search_space.items() if not isinstance(p, CategoricalParam)]
        if bad:
            raise SpecError(path, f"search_space.{bad[0]}", "the grid sampler needs `type: categorical` for every parameter")


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[StudyConfig, dict[str, Any]]:
    """Load a study spec and its experiment.

    Args:
        path: The study YAML. Its ``experiment`` is a path relative to it; its optional
            ``experiment_overrides`` (dotted fields) change that experiment for this study.
        overrides: Dotted ``--set`` keys; ``experiment.*`` keys go to the experiment.

    Returns:
        The validated study, and the experiment as raw (path-resolved) data, to which trial
        params are applied.
    """
    path = Path(path)
    raw = _read_yaml(path)
    exp_over, study_over = _split_overrides(overrides or {}, "experiment")
    raw = apply_params(raw, study_over)
    spec_over = raw.pop("experiment_overrides", None) or {}
    if not isinstance(spec_over, dict) or not all(isinstance(k, str) for k in spec_over):
        raise SpecError(path, "experiment_overrides", "expected a mapping of dotted experiment fields to values, e.g. {train.budget_samples: 8000}")
    exp_over = spec_over | exp_over  # --set experiment.* wins over the spec's own overrides
    exp_ref = raw.get("experiment")
    if isinstance(exp_ref, str):
        exp_path = (path.parent / exp_ref).resolve()
        if not exp_path.is_file():
            raise SpecError(path, "experiment", f"experiment file not found: {exp_ref}")
        exp_raw = load_experiment_raw(exp_path, exp_over)
        exp_file: Path = exp_path
    elif isinstance(exp_ref, dict):
        exp_raw = apply_params(exp_ref, exp_over)
        _resolve_paths(exp_raw, path.parent)
        exp_file = path
    else:
        raise SpecError(path, "experiment", "required: the path of an experiment YAML (or an inline mapping)")
    launcher = raw.get("launcher")
    if launcher is not None:  # the study's launcher section overrides the experiment's
        if not isinstance(launcher, dict):
            raise SpecError(path, "launcher", "expected a mapping")
        exp_raw = apply_params(exp_raw, {f"launcher.{k}": v for k, v in launcher.items()})
    validate_experiment(exp_raw, exp_file if exp_file != path else path, "" if exp_file != path else "experiment")
    study_raw = {k: v for k, v in raw.items() if k != "launcher"}
    study_raw["experiment"] = exp_raw
    model = ScriptStudyConfig if is_script(exp_raw) else StudyConfig
    try:
        study = model.model_validate(study_raw)
    except ValidationError as err:
        _raise_validation(path, model, err)
    _check_search_space(path, study, exp_raw)
    return study, exp_raw


RECORDED_DEFAULTS: dict[tuple[str, str], Any] = {("launcher", "pack"): False}
"""Fields added with a new default behaviour, and the value a config recorded without them ran with."""


def as_recorded(raw: dict[str, Any]) -> dict[str, Any]:
    """A resolved config recorded by a trial, as it ran: a field it lacks from ``RECORDED_DEFAULTS``
    takes its old behaviour, so that ``reproduce`` re-runs an older trial exactly."""
    out = dict(raw)
    for (section, field), value in RECORDED_DEFAULTS.items():
        if isinstance(out.get(section), dict) and field not in out[section]:
            out[section] = {**out[section], field: value}
    return out
