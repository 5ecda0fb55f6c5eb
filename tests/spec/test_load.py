"""Loading specs: every shipped spec is valid, overrides reach their field, YAML is loaded safely.
(The table of malformed specs runs through the CLI: ``cli/test_spec_errors.py``.)"""

from pathlib import Path

import pytest

from lbsearch.spec.config import ExperimentConfig, SpecError, StudyConfig
from lbsearch.spec.load import apply_params, load_experiment, load_study, parse_set
from lbsearch.spec.plan import make_plan
from lbsearch.spec.script import ScriptExperimentConfig

ROOT = Path(__file__).parent.parent.parent
SHIPPED = sorted((ROOT / "studies").glob("*.yaml")) + sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "examples").glob("*/*.yaml"))


def test_there_are_shipped_specs():
    assert {p.parent.name for p in SHIPPED} == {"studies", "experiments", "accelerate", "hf_trainer", "lightning"}


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_every_shipped_spec_loads_and_plans(path):
    """No training: each study and experiment validates, and each study's search space gives valid
    experiments at its ends (``load_study`` checks them) whose plan splits B evenly."""
    if path.parent.name == "studies" or path.name == "study.yaml":
        study, exp_raw = load_study(path)
        assert isinstance(study, StudyConfig) and study.n_trials >= 1
        exp = study.experiment
    else:
        exp = load_experiment(path)
    assert isinstance(exp, (ExperimentConfig, ScriptExperimentConfig))
    plan = make_plan(exp)
    assert plan.steps >= 1 and plan.evals[-1] == (plan.steps, exp.train.budget_samples)
    if plan.micro_batch is not None:
        assert plan.micro_batch * plan.accumulation * plan.processes == exp.train.batch_size


def test_set_overrides_reach_the_experiment():
    cfg, _ = load_study(ROOT / "tests" / "specs" / "tiny_study.yaml",
                        parse_set(["experiment.train.budget_samples=640", "n_trials=5", "experiment.optimizer.lr=2e-3"]))
    assert cfg.n_trials == 5
    assert cfg.experiment.train.budget_samples == 640
    assert cfg.experiment.optimizer.lr == 2e-3


def test_parse_set_reads_values_as_yaml():
    assert parse_set(["a=1e-4", "b=null", "c=[1, 2]", "d=text"]) == {"a": 1e-4, "b": None, "c": [1, 2], "d": "text"}
    with pytest.raises(SpecError, match="expected key=value"):
        parse_set(["novalue"])


def test_apply_params_matches_dotted_keys_greedily():
    raw = {"model": {"config": {"hidden_size": 32}}, "search_space": {"optimizer.lr": {"low": 1}}}
    out = apply_params(raw, {"model.config.hidden_size": 64, "search_space.optimizer.lr.low": 2})
    assert out == {"model": {"config": {"hidden_size": 64}}, "search_space": {"optimizer.lr": {"low": 2}}}
    assert raw["model"]["config"]["hidden_size"] == 32  # a copy


def test_yaml_is_loaded_safely(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text("name: !!python/object/apply:os.system ['touch pwned']\nexperiment: x.yaml\nn_trials: 1\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_study(spec)
    assert not (tmp_path / "pwned").exists()
