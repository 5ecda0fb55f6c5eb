"""The branch points of a reference trial that was re-run from its checkpoint: the points kept by the first run
and by the re-run are found together, under the re-run's folder (hard links, the first run's left as they are)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from lbsearch.orchestrator.branch import _points_folder
from lbsearch.spec import BRANCH_POINTS, INFO, RETRY_OF_ATTR, checkpoint_name, kept_points


def _kept(trials_dir: Path, folder: str, step: int, samples: int) -> None:
    point = trials_dir / folder / BRANCH_POINTS / checkpoint_name(step)
    point.mkdir(parents=True)
    (point / INFO).write_text(json.dumps({"samples": samples}))
    (point / "model.safetensors").write_bytes(b"w")


def test_points_of_a_rerun_and_of_the_run_it_continues(tmp_path):
    _kept(tmp_path, "0000-aaaaaa", 4, 32)   # trial 0 kept step 4, then was killed
    _kept(tmp_path, "0001-bbbbbb", 8, 64)   # trial 1 (retry_of 0) resumed and kept step 8
    _kept(tmp_path, "0002-cccccc", 4, 32)   # another trial's: not in the lineage
    trials = [SimpleNamespace(number=0, user_attrs={}), SimpleNamespace(number=1, user_attrs={RETRY_OF_ATTR: 0}),
              SimpleNamespace(number=2, user_attrs={})]
    folder = _points_folder(tmp_path, trials, 1)
    assert folder == tmp_path / "0001-bbbbbb" / BRANCH_POINTS
    assert sorted(kept_points(folder)) == [32, 64]
    assert (tmp_path / "0000-aaaaaa" / BRANCH_POINTS / checkpoint_name(4) / "model.safetensors").stat().st_nlink == 2  # linked, not copied
    assert sorted(kept_points(_points_folder(tmp_path, trials, 2))) == [32]
    assert _points_folder(tmp_path, trials, 5) is None
