"""Which models stay (``save_model``), on a real MLflow sqlite store with its Model Registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbsearch.spec import TRIALS
from lbsearch.spec.session import default_tracking_uri
from lbsearch.spec.workdir import models_dir
from lbsearch.tracking import MODEL, MODEL_ID_TAG, TRIAL
from lbsearch.tracking.kept import BEST_ALIAS, keep_trial_model, registered_name
from lbsearch.tracking.tracker import Tracker


def _trial(tracker: Tracker, exp_id: str, root: Path, number: int) -> tuple[str, Path]:
    saved = root / TRIALS / f"{number:04d}" / "model"
    saved.mkdir(parents=True)
    (saved / "config.json").write_text(f'{{"trial": {number}}}')
    return tracker.child_run(exp_id, None, f"trial-{number}", {}, {}), saved


@pytest.mark.parametrize("policy", ["best", "all"])
def test_keep_policy(tmp_path, policy):
    root = tmp_path / "mlruns"
    tracker = Tracker(default_tracking_uri(root), root)
    exp_id = tracker.experiment("s")
    runs = {}
    for number, best in [(0, 0), (1, 0), (2, 2)]:  # trial 1 is not the best; trial 2 beats trial 0
        run_id, saved = _trial(tracker, exp_id, root, number)
        runs[number] = run_id
        kept = keep_trial_model(tracker, root, study="s", experiment_id=exp_id, number=number, run_id=run_id, saved=saved, policy=policy, best=best)
        assert not saved.exists()
        assert (kept is not None) == (policy == "all" or number == best)
    folders = sorted(p.name for p in models_dir(root, "s").iterdir())
    versions = {str(v.version): v for v in tracker.client.search_model_versions(f"name = '{registered_name('s')}'")}
    best = tracker.client.get_model_version_by_alias(registered_name("s"), BEST_ALIAS)
    assert best.run_id == runs[2] and best.tags[TRIAL] == "2"
    if policy == "best":
        assert folders == ["trial-2"] and list(versions) == ["2"]
        assert [p.parent.parent.name for p in (root / "artifacts" / "s" / "models").rglob("config.json")] == [best.tags[MODEL_ID_TAG]]
    else:
        assert folders == ["trial-0", "trial-1", "trial-2"] and sorted(versions) == ["1", "2"]
    assert tracker.client.get_run(runs[2]).data.tags[MODEL] == str(models_dir(root, "s") / "trial-2")


def test_the_previous_best_stays_until_the_registry_points_at_the_new_one(tmp_path):
    """MLflow refuses the new best's model (here: its run is gone from the store): the previous best's
    folder, its registered version and the alias stay; the new model is kept on disk beside it."""
    from mlflow.exceptions import MlflowException

    root = tmp_path / "mlruns"
    tracker = Tracker(default_tracking_uri(root), root)
    exp_id = tracker.experiment("s")
    run0, saved0 = _trial(tracker, exp_id, root, 0)
    keep_trial_model(tracker, root, study="s", experiment_id=exp_id, number=0, run_id=run0, saved=saved0, policy="best", best=0)
    run1, saved1 = _trial(tracker, exp_id, root, 1)
    tracker.client.delete_run(run1)
    with pytest.raises(MlflowException):
        keep_trial_model(tracker, root, study="s", experiment_id="999999", number=1, run_id=run1, saved=saved1, policy="best", best=1)
    assert sorted(p.name for p in models_dir(root, "s").iterdir()) == ["trial-0", "trial-1"]
    assert tracker.client.get_model_version_by_alias(registered_name("s"), BEST_ALIAS).run_id == run0
