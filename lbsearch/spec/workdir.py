"""The folders both processes see: a trial's working folder (the checkpoints' layout, adopting a retried trial's checkpoints, discarding them) and where kept models lie."""


from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

FOLDER = "checkpoints"
"""The checkpoints' folder inside a trial's working folder."""
CONFIG_JSON = "config.json"
"""A trial's resolved config as a file: an artifact of its MLflow run (``lbsearch.orchestrator.runner.trial_files``), which
``lbsearch train`` takes as an experiment. In ``spec`` because the CLI's help names it and the CLI imports no MLflow to start."""
SPEC_JSON, RESULT_JSON = "spec.json", "result.json"
"""The files of a trial's working folder that the orchestrator writes and reads: the ``WorkerSpec`` every rank reads
(other machines' ``lbsearch join`` looks for it, ``lbsearch.orchestrator.nodes``; a branch study reads the reference
trial's), and rank 0's ``TrialResult``."""


INFO = "lbsearch.json"
"""A checkpoint's own position (step, samples, readings), in each ``step-<S>`` folder."""
KEPT_FILE = "lbsearch.json"
"""A kept model's facts beside its weights (task, labels, max_length, metrics; a compressed variant's recipe): written by
``trial.model.save_model``, read by ``load_model``, ``predict``, ``compress`` and a distillation teacher."""
BEST_ALIAS = "best"
"""The registered model's alias of a study's best trial's version (``best_uri``); a distillation teacher may be named by it."""


def registered_name(study: str) -> str:
    """The name under which a study's best models are registered in MLflow's Model Registry: the study's own."""
    return study


def best_uri(study: str) -> str:
    """The study's best kept model in the Model Registry: ``models:/<study>@best``."""
    return f"models:/{registered_name(study)}@{BEST_ALIAS}"


PREFIX = "step-"
"""A checkpoint's folder is ``step-<S>`` (S zero-padded to 8 digits, so that names sort as steps), written
as ``.tmp-step-<S>`` and renamed when whole (``lbsearch.trial.checkpoint``)."""


def checkpoint_name(step: int, tmp: bool = False) -> str:
    """The folder name of the checkpoint taken at ``step`` (``tmp``: while it is written)."""
    return f"{'.tmp-' if tmp else ''}{PREFIX}{step:08d}"


KEEP_CHECKPOINTS = 1
"""How many whole checkpoints a running trial keeps, the newest ones (a resume needs only the newest); the older ones are
deleted once a new one is whole (``superseded``)."""


def superseded(folder: Path) -> list[Path]:
    """The checkpoints under ``folder`` that a new whole one makes old: all but the newest ``KEEP_CHECKPOINTS``."""
    found = sorted(folder.glob(f"{PREFIX}*")) if folder.is_dir() else []
    return found[:-KEEP_CHECKPOINTS]


def latest(folder: Path) -> Path | None:
    """The newest whole checkpoint under ``folder`` (a trial's ``checkpoints``), or None."""
    found = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / INFO).is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def adopt(trials_dir: Path, number: int | None, workdir: Path) -> dict[str, Any] | None:
    """Move the checkpoints of trial ``number`` (in ``trials_dir``) into ``workdir``, for its re-run.
    Returns the newest checkpoint's ``lbsearch.json``, or None where there is none (another machine's
    folder, a trial that never wrote one)."""
    if number is None:
        return None
    for old in sorted(trials_dir.glob(f"{number:04d}-*/{FOLDER}")):
        found = latest(old)
        if found is None:
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        old.rename(workdir / FOLDER)
        return json.loads((workdir / FOLDER / found.name / INFO).read_text())
    return None


def discard(workdir: Path) -> None:
    shutil.rmtree(workdir / FOLDER, ignore_errors=True)


def fingerprint(experiment: dict[str, Any]) -> str:
    """What must match for a checkpoint to be resumed: the resolved experiment, less the micro-batch
    limit (an out-of-memory retry changes it; the state does not depend on it), where the ranks meet
    (node 0's address and port, picked per trial; this node's rank) and the checkpoint settings."""
    exp = json.loads(json.dumps(experiment))
    for key in ("max_micro_batch", "main_process_ip", "main_process_port", "machine_rank"):
        exp["launcher"].pop(key, None)
    for key in ("checkpoint_every_samples", "checkpoint_every_minutes", "checkpoint_on_stop", "stop_grace_s"):
        exp["train"].pop(key, None)
    return hashlib.sha256(json.dumps(exp, sort_keys=True).encode()).hexdigest()[:16]


CACHE = "cache"
"""The state folder's folder of prepared data (``data_cache_dir``). A trial finds it as its data folder's parent. State folders
already used keep theirs under the old name: after a rename their data is prepared again, and their cached teacher logits,
probed micro-batches and measured CPU peaks are measured again."""


def data_cache_dir(root: Path) -> Path:
    """Where the tokenized data (``data-<digest>`` folders), the corpora, the probed micro-batches and the measured
    CPU peaks are kept: ``<mlruns>/cache``."""
    return root / CACHE


TRIALS = "trials"
"""The folder of the trials' working folders in the state folder: ``<mlruns>/trials/<study>/<NNNN>-<id>/`` (a rename leaves the
checkpoints, outboxes and branch points of a state folder already used unfound)."""


def trials_dir(root: Path, owner: str) -> Path:
    """The working folders of a study's trials (or of ``lbsearch train``'s ``train-<name>``, of ``reproduce``'s runs)."""
    return root / TRIALS / owner


REPORTS = "reports"
"""The folder of the studies' reports in the state folder: ``<mlruns>/reports/<study>/`` (the batch-scaling report, ``plots/``,
``pareto/``, a branch study's ``cbs/``)."""


def reports_dir(root: Path, owner: str) -> Path:
    """Where a study's reports are written (each is also logged to the study's parent MLflow run)."""
    return root / REPORTS / owner


def models_dir(root: Path, owner: str) -> Path:
    """Where the models of a study (or of ``lbsearch train``'s ``train-<name>``) are kept."""
    return root / "models" / owner


def trial_model_dir(root: Path, study: str, number: int) -> Path:
    return models_dir(root, study) / f"trial-{number}"
