"""Script experiments (``kind: script``): loading and refusing them, the values a script receives and
how they reach it, and its final metrics when it ignores the API."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import SPECS, tree

from lbsearch.cli.main import main
from lbsearch.orchestrator.script_trial import result_from_output, script_argv, script_env
from lbsearch.spec import PARAMS_ENV, PARAMS_JSON, SPEC_ENV, SPEC_JSON
from lbsearch.spec.load import load_experiment, load_study
from lbsearch.spec.plan import make_plan
from lbsearch.spec.script import ScriptExperimentConfig, trial_values


def test_the_test_specs_load_with_the_script_made_absolute():
    exp = load_experiment(SPECS / "tiny_script.yaml")
    assert isinstance(exp, ScriptExperimentConfig)
    assert Path(exp.script.command).is_absolute() and exp.script.command.endswith("examples/accelerate/train.py")
    study, _ = load_study(SPECS / "tiny_script_study.yaml")
    assert study.experiment.metric.direction == "minimize"


def _exp(**over) -> ScriptExperimentConfig:
    raw = {"kind": "script", "name": "x", "script": {"command": "train.py --epochs 3", "params_as": "flags"}, "params": {"dropout": 0.1, "tag": "a b"},
           "optimizer": {"lr": 5e-5},
           "train": {"batch_size": 64, "budget_samples": 8000, "clip_norm": None}, "launcher": {"processes": 2, "max_micro_batch": 8}, "metric": {"name": "f1"}}
    for key, value in over.items():
        raw[key] = raw.get(key, {}) | value if isinstance(value, dict) else value
    return ScriptExperimentConfig.model_validate(raw)


def test_values_flags_and_environment():
    exp = _exp()
    values = trial_values(exp, make_plan(exp))
    assert values["batch_size"] == 64 and values["micro_batch"] == 8 and values["accumulation"] == 4 and values["processes"] == 2
    assert values["dropout"] == 0.1 and values["clip_norm"] is None
    argv = script_argv(exp, values, Path("/t") / PARAMS_JSON)
    assert argv[:3] == ["train.py", "--epochs", "3"]
    assert "--clip_norm" not in argv and argv[argv.index("--tag") + 1] == "a b" and argv[argv.index("--lr") + 1] == "5e-05"
    env_exp = _exp(script={"command": "train.py --config {params_file}", "params_as": "env", "values": ["lr", "dropout"]})
    vals = trial_values(env_exp, make_plan(env_exp))
    assert vals == {"lr": 5e-05, "dropout": 0.1}
    assert script_argv(env_exp, vals, Path("/t") / PARAMS_JSON) == ["train.py", "--config", f"/t/{PARAMS_JSON}"]
    assert script_env(env_exp, vals, Path("/t") / SPEC_JSON, Path("/t") / PARAMS_JSON) == {
        SPEC_ENV: f"/t/{SPEC_JSON}", PARAMS_ENV: f"/t/{PARAMS_JSON}", "LBSEARCH_LR": "5e-05", "LBSEARCH_DROPOUT": "0.1"}


def test_final_metrics_of_a_script_that_ignores_the_api(tmp_path):
    exp = _exp()
    r = result_from_output(exp, tmp_path, 0, {"f1": 0.8, "note": "x"})
    assert r.state == "complete" and r.value == 0.8 and r.validation == {"f1": 0.8} and r.samples == 8000 and r.steps == 125
    assert result_from_output(exp, tmp_path, 0, {"eval_f1": 0.7}).value == 0.7  # an HF Trainer's names
    assert result_from_output(exp, tmp_path, 1, {"f1": 0.8}) is None  # a crash fails the trial with its output
    assert "lack a finite `f1`" in result_from_output(exp, tmp_path, 0, {"f1": float("nan")}).reason
    assert "printed no JSON line" in result_from_output(exp, tmp_path, 0, None).reason
    file_exp = _exp(script={"command": "t.py", "metrics_file": "m.json"})
    assert "could not be read" in result_from_output(file_exp, tmp_path, 0, None).reason
    (tmp_path / "m.json").write_text(json.dumps({"f1": 0.6}))
    assert result_from_output(file_exp, tmp_path, 0, None).value == 0.6


BAD = [
    ("no-kind", "kind: script\n", "", "tiny_script.yaml: kind", "needs `kind: script`"),
    ("params-redefine-lr", "params: {model: tiny,", "params: {lr: 0.1, model: tiny,", "tiny_script.yaml", "`params` must not redefine"),
    ("probe", "max_micro_batch: 16", "max_micro_batch: null", "tiny_script.yaml", "cannot probe its micro-batch"),
    ("script-missing", "accelerate/train.py\n", "accelerate/nope.py\n", "tiny_script.yaml: script.command", "script not found"),
    ("unknown-value", "values: [seed,", "values: [sed,", "tiny_script.yaml", "`script.values` names ['sed']"),
    ("bad-params-as", "  values:", "  params_as: argv\n  values:", "tiny_script.yaml: script.params_as", "'flags', 'env' or 'json'"),
    ("unknown-key", "  values:", "  valeus: [lr]\n  values:", "tiny_script.yaml: script.valeus", "did you mean `values`"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_script_spec_one_line_exit_2_nothing_written(case, specs, tmp_path, capsys):
    _, old, new, where, message = case
    path = specs / "tiny_script.yaml"
    text = path.read_text().replace("../../examples", str(SPECS.parents[1] / "examples"))
    assert old in text
    path.write_text(text.replace(old, new, 1))
    mlruns = tmp_path / "mlruns"
    code = main(["run", str(specs / "tiny_script_study.yaml"), "--mlruns", str(mlruns)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert where in err and message in err, err
    assert tree(mlruns) == {}


def test_searching_a_script_param(specs, tmp_path, capsys):
    study = specs / "tiny_script_study.yaml"
    study.write_text(study.read_text().replace("search_space:", "search_space:\n  params.max_length: {type: categorical, choices: [32, 48]}")
                     .replace("experiment: tiny_script.yaml", f"experiment: {SPECS / 'tiny_script.yaml'}"))
    cfg, _ = load_study(study)
    assert "params.max_length" in cfg.space
    study.write_text(study.read_text().replace("params.max_length:", "params.max_length.x:"))
    assert main(["run", str(study), "--mlruns", str(tmp_path / "m")]) == 2
    assert "not a field of the experiment" in capsys.readouterr().err


def test_the_example_reads_a_null_clip_norm_left_out_of_its_flags_as_no_clipping(monkeypatch):
    """A searched ``clip_norm: null`` (clipping off) is left out of a script's flags: the example must not clip then."""
    spec = importlib.util.spec_from_file_location("example_train", SPECS.parents[1] / "examples" / "accelerate" / "train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    exp = load_experiment(SPECS.parents[1] / "examples" / "accelerate" / "experiment.yaml")
    for clip, seen in ((None, None), (0.5, 0.5)):
        off = exp.model_copy(update={"train": exp.train.model_copy(update={"clip_norm": clip})})
        monkeypatch.setattr(sys, "argv", script_argv(off, trial_values(off, make_plan(off)), Path(PARAMS_JSON)))
        assert example.parse_args().clip_norm == seen
