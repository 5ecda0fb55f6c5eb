"""The batch-scaling path end to end: a batch ladder study, the noise scale in MLflow, the report."""

from __future__ import annotations

import json

import pytest
from conftest import SPECS, cli, journal_study, mlflow_client, run_cli, tree
from optuna.trial import TrialState


def test_ladder_study_logs_noise_scale_and_writes_the_report(tmp_path):
    run_cli("run", str(SPECS / "tiny_ladder.yaml"), cwd=tmp_path, check=True)
    root = tmp_path / "mlruns"
    trials = journal_study(root, "tiny-ladder").get_trials()
    assert [t.params["train.batch_size"] for t in trials] == [16, 32, 64]  # trial i runs ladder[i mod 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    client = mlflow_client(root)
    for t in trials:
        hist = {k: client.get_metric_history(t.user_attrs["mlflow_run_id"], f"gns/{k}") for k in ("b_simple", "grad_sq", "trace_sigma")}
        if t.params["train.batch_size"] == 16:  # micro-batch limit 16: one batch size per step, nothing to measure
            assert not any(hist.values()) and "b_simple" not in t.user_attrs
            continue
        # accumulation 2 and 4: one value per evaluation. The unbiased |G|² estimate may be negative
        # while noise dominates (random init); B_simple is logged only where it is positive.
        assert len(hist["grad_sq"]) == len(hist["trace_sigma"]) == 3
        assert all(m.value > 0 for m in hist["trace_sigma"])
        positive = [g.value > 0 for g in hist["grad_sq"]]
        assert [m.step for m in hist["b_simple"]] == [g.step for g, ok in zip(hist["grad_sq"], positive) if ok]
        if hist["b_simple"]:
            assert t.user_attrs["b_simple"] == pytest.approx(hist["b_simple"][-1].value)
            assert t.user_attrs["b_simple"] > 0

    out = cli("report", "tiny-ladder", cwd=tmp_path, check=True).stdout
    assert "lr exponent" in out and "B_simple" in out
    report = root / "reports" / "tiny-ladder"
    summary = json.loads((report / "summary.json").read_text())
    assert [r["batch_size"] for r in summary["per_batch_size"]] == [16, 32, 64]
    assert all(r["steps_to_target"] == 320 // r["batch_size"] for r in summary["per_batch_size"])  # first evaluation
    # 320 samples to target at every B is perfect scaling: the fit says B_crit lies beyond the ladder
    assert "above this range" in summary["steps_fit"]["error"]
    assert summary["lr_fit"]["ci_low"] <= summary["lr_fit"]["alpha"] <= summary["lr_fit"]["ci_high"]
    pngs = {p.name for p in report.glob("*.png")}
    assert {"best_metric_vs_batch.png", "lr_vs_batch.png", "steps_to_target.png", "noise_scale.png"} <= pngs
    assert all((report / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    page = (report / "index.html").read_text()
    assert all(f'src="{p}"' in page for p in pngs) and "critical batch size" in page
    parent = client.search_runs([client.get_experiment_by_name("tiny-ladder").experiment_id], "tags.`lbsearch.role` = 'parent'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{p}" for p in pngs | {"index.html", "summary.json"}} <= logged
    assert parent.data.metrics["report/lr_alpha"] == pytest.approx(summary["lr_fit"]["alpha"])


def test_ladder_and_a_batch_size_search_dimension_conflict(tmp_path, specs):
    spec = specs / "tiny_ladder.yaml"
    spec.write_text(spec.read_text().replace("search_space:\n", "search_space:\n  train.batch_size: {type: categorical, choices: [16, 32]}\n"))
    before = tree(tmp_path / "mlruns")
    proc = run_cli("run", str(spec), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"lbsearch: error: {spec}: set the batch size either by `batch_ladder` or by `search_space.train.batch_size`")
    assert tree(tmp_path / "mlruns") == before


def test_grid_study_runs_its_whole_grid(tmp_path, specs):
    """Optuna's GridSampler stops Study.optimize when its grid is used up; under lbsearch's ask/tell
    the last trial must still be told and the study end cleanly."""
    spec = specs / "grid.yaml"
    spec.write_text("name: tiny-grid\nexperiment: tiny.yaml\nn_trials: 2\n"
                    "search_space:\n  optimizer.lr: {type: categorical, choices: [1.0e-3, 3.0e-3]}\n"
                    "sampler: {name: grid, seed: 0}\npruner: {name: none}\n"
                    "experiment_overrides: {train.budget_samples: 320, train.eval_every_samples: 320}\n")
    run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-grid").get_trials()
    assert sorted(t.params["optimizer.lr"] for t in trials) == [1e-3, 3e-3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
