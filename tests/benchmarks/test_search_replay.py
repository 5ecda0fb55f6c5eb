"""benchmarks/search_efficiency.py: a search table is resumed without retraining what it holds, a cached table still
matches once the spec gains a field, and a replay reports what a study would observe (a diverged trial told with its
reason, a run stopped at its first trial within tolerance, its compute the samples its trials saw)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import search_efficiency as se  # noqa: E402

from lbsearch.spec import DIVERGED_REASON
from lbsearch.spec.config import CategoricalParam, PrunerConfig, SamplerConfig  # noqa: E402

LM = json.loads((BENCH / "results" / "search_table_lm.json").read_text())
MINILM = json.loads((BENCH / "results" / "search_table.json").read_text())


def space_of(table: dict) -> dict[str, CategoricalParam]:
    return {k: CategoricalParam(type="categorical", choices=v) for k, v in table["settings"]["space"].items()}


def test_a_cached_table_matches_on_the_fields_it_records():
    recorded = {"experiment": {"train": {"batch_size": 16}}, "space": {"optimizer.lr": [0.001]}}
    assert se.same_settings(recorded, {"experiment": {"train": {"batch_size": 16, "new_field": None}}, "space": {"optimizer.lr": [0.001]}})
    assert not se.same_settings(recorded, {"experiment": {"train": {"batch_size": 32}}, "space": {"optimizer.lr": [0.001]}})
    assert not se.same_settings(recorded, {"experiment": {"train": {}}, "space": {"optimizer.lr": [0.001]}})  # a field gone
    assert not se.same_settings(recorded, {"experiment": {"train": {"batch_size": 16}}, "space": {"optimizer.lr": [0.001, 0.002]}})


def test_a_partial_table_trains_only_what_it_lacks_and_the_cell_comes_out_as_committed(tmp_path):
    """The committed LM table, one cell taken out and marked partial: the build trains that cell alone (the others keep
    their recorded wall times), and lbsearch's deterministic CPU training gives the committed curve again."""
    space = space_of(LM)
    missing = "train.batch_size=64 optimizer.lr=0.004 schedule.warmup_tokens=8192"
    partial = json.loads(json.dumps(LM)) | {"partial": True}
    del partial["configs"][missing]
    path = tmp_path / "table.json"
    path.write_text(json.dumps(partial))
    threads = torch.get_num_threads()
    torch.set_num_threads(LM["configs"][missing]["threads"])
    try:
        built = se.load_or_build(path, LM["settings"], False, space)
    finally:
        torch.set_num_threads(threads)
    assert not built["partial"] and set(built["configs"]) == set(LM["configs"])
    assert all(built["configs"][k]["wall_s"] == r["wall_s"] for k, r in LM["configs"].items() if k != missing)  # not retrained
    new, old = built["configs"][missing], LM["configs"][missing]
    assert new["state"] == old["state"] == "complete"
    assert [e["value"] for e in new["evals"]] == pytest.approx([e["value"] for e in old["evals"]], rel=1e-4)
    assert json.loads(path.read_text())["partial"] is False


def test_a_diverged_configuration_ends_pruned_with_its_reason():
    diverged = next(r for r in MINILM["configs"].values() if r["state"] != "complete")
    se.with_plans({"diverged": diverged}, MINILM["settings"])
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial, spent = study.ask(), []
    with pytest.raises(optuna.TrialPruned):
        se.observe(trial, diverged, spent)
    assert spent == [diverged["samples"]] and study.trials[0].user_attrs["reason"] == DIVERGED_REASON


@pytest.mark.parametrize("name", ["grid", "default"])
def test_a_replay_stops_at_its_first_trial_within_tolerance(name):
    space, configs = space_of(LM), LM["configs"]
    base = se.configured(LM["settings"], {})
    se.with_plans(configs, LM["settings"])
    best = min(r["value"] for r in configs.values() if r["state"] == "complete")
    search = se.searches((SamplerConfig(), PrunerConfig()))[name]
    runs = [se.replay(search, seed, configs, space, base, len(configs), best + 0.005) for seed in range(3)]
    for run in runs:
        samples = [t["samples"] for t in run["trials"]]
        assert run["samples_total"] == sum(samples) and len(run["trials"]) <= len(configs)
        if run["samples_to_best"] is not None:
            last = run["trials"][-1]
            assert run["trials_to_best"] == len(run["trials"]) and last["state"] == "complete" and last["samples"] == base.train.budget_samples
    if name == "grid":  # every configuration at most once: the grid always gets there
        assert all(r["samples_to_best"] is not None for r in runs)
