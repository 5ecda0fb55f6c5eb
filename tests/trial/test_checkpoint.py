"""The orchestrator's side of checkpoints (torch-free): the newest whole checkpoint, a retry taking
over the checkpoints of the trial it re-runs, what must match for a checkpoint to be resumed, and
the spec's checks. The worker's side runs in tests/cli/test_resume.py."""

import json
import os
import signal
from pathlib import Path

import pytest

from lbsearch.spec import TRIALS
from lbsearch.spec.config import ExperimentConfig, SpecError
from lbsearch.spec.load import validate_experiment
from lbsearch.spec.workdir import FOLDER, INFO, KEEP_CHECKPOINTS, adopt, checkpoint_name, discard, fingerprint, latest, superseded
from lbsearch.trial.checkpoint import StopSignal


def _write(folder, step, whole=True):
    d = folder / checkpoint_name(step)
    d.mkdir(parents=True)
    if whole:
        (d / INFO).write_text(json.dumps({"step": step, "samples": 32 * step, "result": {"evals": []}}))
    return d


def test_the_newest_whole_checkpoint_counts(tmp_path):
    assert latest(tmp_path / "none") is None
    _write(tmp_path, 10)
    _write(tmp_path, 20)
    _write(tmp_path, 30, whole=False)  # killed while writing (a rename makes a folder whole; this one never was)
    (tmp_path / checkpoint_name(40, tmp=True)).mkdir()
    assert latest(tmp_path).name == checkpoint_name(20)


def test_a_new_whole_checkpoint_supersedes_all_but_the_newest_kept(tmp_path):
    assert superseded(tmp_path / "none") == []
    for step in (5, 10, 120):
        _write(tmp_path, step)
    (tmp_path / checkpoint_name(130, tmp=True)).mkdir()  # one being written is never deleted by a writer of another
    names = [p.name for p in superseded(tmp_path)]
    assert names == [checkpoint_name(5), checkpoint_name(10), checkpoint_name(120)][:3 - KEEP_CHECKPOINTS]
    assert latest(tmp_path).name not in names


def test_a_retry_takes_over_the_checkpoints_of_the_trial_it_reruns(tmp_path):
    trials = tmp_path / TRIALS / "s"
    _write(trials / "0003-abc123" / FOLDER, 20)
    (trials / "0013-def456").mkdir(parents=True)  # another trial whose number starts alike
    new = trials / "0007-ffffff"
    assert adopt(trials, None, new) is None and adopt(trials, 13, new) is None
    info = adopt(trials, 3, new)
    assert info["step"] == 20 and latest(new / FOLDER).name == checkpoint_name(20)
    assert not (trials / "0003-abc123" / FOLDER).exists()  # moved, not copied: one lineage, one folder
    assert adopt(trials, 7, trials / "0009-000000")["step"] == 20  # a retry of the retry finds it in turn
    discard(trials / "0009-000000")
    assert not (trials / "0009-000000" / FOLDER).exists()


def test_only_the_same_configuration_resumes():
    exp = ExperimentConfig(name="x").model_dump(mode="json")
    other = json.loads(json.dumps(exp))
    other["launcher"]["max_micro_batch"], other["train"]["checkpoint_every_samples"], other["train"]["stop_grace_s"] = 8, 640, 5
    assert fingerprint(other) == fingerprint(exp)  # an out-of-memory retry, another checkpoint cadence: the same training
    other["launcher"]["main_process_port"], other["launcher"]["main_process_ip"] = 29517, "10.0.0.1"
    assert fingerprint(other) == fingerprint(exp)  # the retry's rendezvous port (picked per trial): the same training
    other["optimizer"]["lr"] = 1.0
    assert fingerprint(other) != fingerprint(exp)


def test_checkpoint_fields_are_checked_with_file_and_field():
    with pytest.raises(SpecError, match=r"x.yaml: train.checkpoint_every_samples: .*greater than or equal to 1"):
        validate_experiment({"name": "x", "train": {"checkpoint_every_samples": 0}}, Path("x.yaml"))


def test_sigterm_ends_a_trial_at_once_before_training_and_at_a_step_boundary_during_it():
    old = signal.getsignal(signal.SIGTERM)
    try:
        stop = StopSignal()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        stop.defer = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.asked
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_checkpoint_is_fsynced_file_by_file_before_its_rename_and_its_parent_after(tmp_path, monkeypatch):
    """A checkpoint folder is whole after a power loss too, not only after a killed process."""
    from lbsearch.trial import checkpoint

    tmp = tmp_path / checkpoint_name(10, tmp=True)
    (tmp / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "sub/optimizer.bin", INFO):
        (tmp / name).write_text(name)
    synced = []
    real = checkpoint._fsync
    monkeypatch.setattr(checkpoint, "_fsync", lambda p: (synced.append((p, p.exists())), real(p)))
    checkpoint.durable_rename(tmp, tmp_path / checkpoint_name(10))
    assert (tmp_path / checkpoint_name(10) / "sub" / "optimizer.bin").is_file() and not tmp.exists()
    before = {p for p, existed in synced[:-1] if existed}
    assert before == {tmp / "model.safetensors", tmp / "sub" / "optimizer.bin", tmp / INFO, tmp / "sub", tmp}
    assert synced[-1] == (tmp_path, True)  # the rename itself, in the parent folder
