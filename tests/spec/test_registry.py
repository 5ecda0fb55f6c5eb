"""The sampler and pruner names live in one registry: the config accepts exactly those, its error
quotes them, the study package builds each one, and docs/specs.md names each one."""

import re
from pathlib import Path

import optuna
import pytest
from pydantic import ValidationError

from lbsearch.spec import PrunerConfig, SamplerConfig, TrainConfig
from lbsearch.spec.registry import GROUPING_PRUNERS, PRUNERS, SAMPLERS, SCHEDULES
from lbsearch.study import pruner, sampler

DOCS = Path(__file__).parent.parent.parent / "docs" / "specs.md"


@pytest.mark.parametrize("names,model,builders", [(SAMPLERS, SamplerConfig, sampler.BUILDERS), (PRUNERS, PrunerConfig, pruner.BUILDERS)])
def test_the_config_accepts_exactly_the_registry_and_each_name_builds(names, model, builders):
    assert set(builders) == set(names)
    for name in names:
        assert model(name=name).name == name
    with pytest.raises(ValidationError) as err:
        model(name="successive")
    assert all(f"'{n}'" in str(err.value) for n in names)


def test_every_name_builds_an_optuna_object():
    for name in PRUNERS:
        built = pruner.make_pruner(PrunerConfig(name=name), TrainConfig())
        assert isinstance(built, optuna.pruners.BasePruner)
    for name in set(SAMPLERS) - {"grid"}:
        assert isinstance(sampler.make_sampler(SamplerConfig(name=name), {}), optuna.samplers.BaseSampler)


def test_group_by_is_refused_by_the_pruners_that_cannot_honour_it():
    for name in PRUNERS:
        if name in GROUPING_PRUNERS:
            assert PrunerConfig(name=name, group_by="train.batch_size").group_by == "train.batch_size"
        else:
            with pytest.raises(ValidationError, match=f"not `{name}`"):
                PrunerConfig(name=name, group_by="train.batch_size")


@pytest.mark.parametrize("field,names", [("sampler", SAMPLERS), ("pruner", PRUNERS)])
def test_the_docs_table_names_each(field, names):
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith(f"| `{field}` |"))
    quoted = set(re.findall(r"`(\w+)`", row))
    assert set(names) <= quoted, f"docs/specs.md's {field} row misses {set(names) - quoted}"


def test_the_docs_schedule_row_names_each_schedule():
    """A new ``schedule.name`` is a key of ``SCHEDULES``; the config accepts it from there, and docs/specs.md must name it."""
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith("| `schedule` | `name`"))
    missing = set(SCHEDULES) - set(re.findall(r"`(\w+)`", row))
    assert not missing, f"docs/specs.md's schedule row misses {missing}"


def test_each_lr_scaling_rule_is_accepted_applied_and_documented():
    """A rule added to ``LR_SCALING`` is accepted by the config, scales lr by its exponent in the plan
    (at B = 4 x the reference: 4^alpha), and docs/specs.md's ``lr_scaling`` row names it."""
    from lbsearch.spec.config import OptimizerConfig
    from lbsearch.spec.plan import lr_for_batch
    from lbsearch.spec.registry import LR_SCALING

    row = next(line for line in DOCS.read_text().splitlines() if "`lr_scaling`" in line and line.startswith("|"))
    for name, alpha in LR_SCALING.items():
        opt = OptimizerConfig(lr=1e-3, reference_batch_size=32, lr_scaling=name)
        assert lr_for_batch(opt, 128) == pytest.approx(1e-3 * 4**alpha)
        assert f"`{name}`" in row, f"docs/specs.md's lr_scaling row misses {name}"
    with pytest.raises(ValidationError):
        OptimizerConfig(lr_scaling="cube")
