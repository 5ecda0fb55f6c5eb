"""The batch-scaling path's refusals and the grid sampler end to end. (The ladder study itself, its noise
scale in MLflow and its report: tests/cli/test_mlflow_story.py, on the one ladder study; a study whose
steps-to-target and B_crit fits succeed: tests/cli/test_lm_report_study.py.)"""

from __future__ import annotations

from conftest import journal_study, run_cli, tree
from optuna.trial import TrialState


def test_ladder_and_a_batch_size_search_dimension_conflict(tmp_path, specs):
    spec = specs / "tiny_ladder.yaml"
    spec.write_text(spec.read_text().replace("search_space:\n", "search_space:\n  train.batch_size: {type: categorical, choices: [16, 32]}\n"))
    before = tree(tmp_path / "mlruns")
    proc = run_cli("run", str(spec), cwd=tmp_path, seed=False)
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
    proc = run_cli("run", str(spec), cwd=tmp_path, check=True)
    trials = journal_study(tmp_path / "mlruns", "tiny-grid").get_trials()
    assert sorted(t.params["optimizer.lr"] for t in trials) == [1e-3, 3e-3]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert "[study tiny-grid] done 2 · pruned 0 · failed 0 of 2 · best " in proc.stdout, proc.stdout
