"""Checkpoints of a running trial, and the re-run of a trial that resumes from them.

A trial's checkpoints live in its working folder, ``mlruns/trials/<study>/<NNNN>-<id>/checkpoints/``,
one folder per checkpoint, ``step-<S>/``: Accelerate's ``save_state`` (model, optimizer, the LR
schedule registered with ``register_for_checkpointing``, the GradScaler, every rank's RNG states)
plus ``lbsearch.json``, the trial's own position: the optimizer step (the sample stream is a pure
function of the seed and B, so the step is its position), the noise-scale EMAs, the first loss, the
clipped and skipped counters, the evaluations so far and the work counters. A checkpoint is written
to a temporary folder and renamed, so a ``step-*`` folder is always whole; the older ones are then
deleted. A trial that ends for good (complete, pruned, or failed for a reason that is not retried)
leaves none.

The orchestrator's side (torch-free): ``adopt`` moves the checkpoints of the trial that a retry
re-runs into the retry's folder; ``discard`` deletes them. The worker's side: ``Checkpoints``
(when to save, saving, resuming) and ``StopSignal`` (SIGTERM).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from lbsearch.spec import INFO, checkpoint_name, fingerprint, latest, superseded
from lbsearch.trial.branch import keep_point, kept_steps, start_branch
from lbsearch.trial.distributed import stop_code

__all__ = ["latest", "fingerprint", "StopSignal", "Checkpoints"]

_RESULT_KEYS = ("evals", "samples_to_target", "steps_to_target", "b_simple")


class StopSignal:
    """SIGTERM in a trial process: before training (or with ``checkpoint_on_stop: false``) the trial
    ends at once as ``interrupted``; while training it is ``asked`` to stop at the next step boundary,
    after a checkpoint."""

    def __init__(self, install: bool = True) -> None:
        self.defer = self.asked = False
        if install:
            signal.signal(signal.SIGTERM, self)

    def __call__(self, signum, frame) -> None:
        if not self.defer:
            raise KeyboardInterrupt("SIGTERM")
        self.asked = True


class Checkpoints:
    """A trial's checkpoints, worker side: ``resume()`` before the first step, ``after_step(step)``
    after each (True: stop now, a checkpoint was written on SIGTERM)."""

    def __init__(self, trial, folder: str | None, stop: StopSignal | None = None) -> None:
        tr, self.trial = trial.exp.train, trial
        self.folder = Path(folder) if folder else None
        self.every = tr.checkpoint_every_samples if self.folder else None
        self.every_s = tr.checkpoint_every_minutes * 60 if self.folder and tr.checkpoint_every_minutes and not self.every else None
        self.stop = stop if stop is not None else StopSignal(install=False)
        self.stop.defer = bool(self.folder) and tr.checkpoint_on_stop
        self.t_last = time.time()
        self.key = fingerprint(trial.exp.model_dump(mode="json"))
        self.keep = kept_steps(trial, self.folder)  # branch points: checkpoints kept (lbsearch.trial.branch)
        trial.acc.register_for_checkpointing(trial.scheduler)  # not prepared: Accelerate would step it once per rank

    def resume(self) -> int:
        """Load the newest checkpoint of this trial's folder, if any; returns the step it was taken at (0: none)."""
        t, found = self.trial, latest(self.folder) if self.folder else None
        if found is None:
            return start_branch(t)  # a branch's first run starts from the reference's checkpoint
        info = json.loads((found / INFO).read_text())
        if info["fingerprint"] != self.key or info["processes"] != t.acc.num_processes:
            t.say(f"checkpoint {found} is of another configuration: training from step 0")
            return 0
        t.acc.load_state(str(found))
        _restore(t, info)
        t.say(f"resumed from checkpoint at step {info['step']} ({info['samples']} samples)")
        return info["step"]

    def due(self, step: int) -> bool:
        """Whether ``checkpoint_every_samples`` or a branch point falls due at ``step`` (a read point of the trial, as every checkpoint's step is)."""
        seen = self.trial.plan.samples_at
        return bool(self.every) and seen(step) // self.every > seen(step - 1) // self.every and step < self.trial.plan.steps or step in self.keep

    def after_step(self, step: int, read: bool = True) -> bool:
        """Write a checkpoint if one is due; time and SIGTERM are looked at on read steps only (``read``)."""
        t = self.trial
        if step >= t.plan.steps or not read:
            return False  # the trial ends here anyway, or the step's values are still on the device
        due = int(self.due(step))
        if self.every_s is not None or self.stop.defer:  # time and signals can differ across ranks: all take the largest
            asked = 2 if self.stop.asked else 1 if self.every_s is not None and time.time() - self.t_last >= self.every_s else 0
            due = stop_code(t.acc, max(due, asked)) if t.acc.num_processes > 1 else max(due, asked)
        if due:
            self.save(step, "on SIGTERM" if due == 2 else "")
        return due == 2

    def save(self, step: int, why: str = "") -> bool:
        """Write a checkpoint whole or not at all (True: written). A write error (a full disk) on any rank costs this
        checkpoint only: every rank hears of it at the same point (``_agreed``), the earlier checkpoint
        stays and the trial trains on, saying so. (Under FSDP a rank that fails inside Accelerate's
        sharded save, between its collectives, still stops the trial: its peers wait in them.)"""
        t, t0 = self.trial, time.time()
        try:
            self._write(step)
        except OSError as err:
            if t.acc.is_main_process:
                shutil.rmtree(self.folder / checkpoint_name(step, tmp=True), ignore_errors=True)
            t.say(f"checkpoint at step {step} not written ({type(err).__name__}: {err}); the trial goes on, its last whole checkpoint kept")
            return False
        self.t_last = time.time()
        t.rep.sync()  # the metric rows up to the checkpoint are in MLflow before the checkpoint is announced (and a kill can lose them)
        t.say(f"checkpoint at step {step} ({t.plan.samples_at(step)} samples) {why + ' ' if why else ''}in {time.time() - t0:.2f}s")
        return True

    def _write(self, step: int) -> None:
        acc, tmp, final = self.trial.acc, self.folder / checkpoint_name(step, tmp=True), self.folder / checkpoint_name(step)

        def start() -> None:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)

        def publish() -> None:
            if acc.is_main_process:
                _maybe_inject_write_error(step)
                (tmp / INFO).write_text(json.dumps(_position(self.trial, step) | {"fingerprint": self.key, "processes": acc.num_processes}))
                shutil.rmtree(final, ignore_errors=True)
                durable_rename(tmp, final)
                keep_point(self.folder, final, step, self.keep)
                for old in superseded(self.folder):
                    shutil.rmtree(old, ignore_errors=True)

        def state() -> None:
            _maybe_inject_write_error(f"{step}@{acc.process_index}")
            acc.save_state(str(tmp))

        _agreed(acc, start)  # each stage ends with every rank knowing whether all wrote their part
        _agreed(acc, state)
        _agreed(acc, publish)


def _agreed(acc, stage) -> None:
    """Run one stage of a save on every rank; a write error on any rank raises ``OSError`` on every
    rank, after the same collective, so that all leave the save together (none waits for a peer
    that gave up)."""
    err: OSError | None = None
    try:
        stage()
    except OSError as e:
        err = e
    if acc.num_processes > 1:
        if stop_code(acc, 1 if err else 0) and err is None:
            err = OSError(errno.EIO, "another rank could not write its part of the checkpoint")
    if err is not None:
        raise err


def durable_rename(tmp: Path, final: Path) -> None:
    """Rename a folder written in full into place so that it survives a power loss too: its files and
    itself are fsynced before the rename, the parent after it."""
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            _fsync(path)
    for folder in sorted({p for p in tmp.rglob("*") if p.is_dir()} | {tmp}, reverse=True):
        _fsync(folder)
    tmp.rename(final)
    _fsync(final.parent)


def _maybe_inject_write_error(at: int | str) -> None:
    """Tests set LBSEARCH_INJECT_CHECKPOINT_ERROR_AT=N[,M...] to make the checkpoints of those steps fail to
    write (a full disk): ``N`` while the main rank publishes it, ``N@R`` while rank R writes its state."""
    if str(at) in os.environ.get("LBSEARCH_INJECT_CHECKPOINT_ERROR_AT", "").split(","):
        raise OSError(errno.ENOSPC, f"No space left on device (injected at step {at})")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _position(t, step: int) -> dict[str, Any]:
    """The trial's own state at a step boundary (JSON floats round-trip exactly)."""
    return {"step": step, "samples": t.plan.samples_at(step), **t.readings.state(), "last_eval": t.last_eval,
            "work": [float(w) for w in t.work], "train_s": t.t_train, "gns": t.gns.noise.state(), "result": {k: t.result[k] for k in _RESULT_KEYS if k in t.result}}


def _restore(t, info: dict[str, Any]) -> None:
    t.readings.load(info, info["step"])
    t.last_eval, t.t_train = info["last_eval"], info["train_s"]
    t.gns.noise.load(info["gns"])
    t.result |= info["result"] | {"steps": info["step"], "samples": info["samples"]}
    # the work since the last evaluation was timed in the process that died: counted neither in the total nor at the next evaluation
    work = info["work"]
    t.work[:] = [0.0, 0.0, work[2] - work[0], work[3] - work[1]]
    t.t_mark, t.samples_mark = time.time(), info["samples"]
