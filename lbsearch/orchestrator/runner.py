"""One tracked trial, for every caller (search, reproduce, train): create the MLflow run, log the
resolved config, the plan and the datasets, run the trial process under MLflow's system-metrics
monitor (halving the micro-batch after an out-of-memory failure, B unchanged), record state and
reason, attach ``stdout.log``, end the run. The live progress display (``console``) hears of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import lbsearch.terminal as console
from lbsearch.orchestrator.launch import TRIAL_LOG, resolve_precision, run_trial_process
from lbsearch.orchestrator.script_trial import result_from_output, script_program
from lbsearch.orchestrator.teacher import find_teacher
from lbsearch.spec import (
    FOLDER,
    INTERRUPTED,
    PAUSED,
    RETRYABLE,
    TRACKING_LOST,
    VAL,
    ExperimentConfig,
    OptunaRef,
    Session,
    TrackingOutage,
    TrialPlan,
    TrialResult,
    WorkerSpec,
    discard,
    failure,
    make_plan,
    split_message,
)
from lbsearch.tracking import (
    CONFIG_JSON,
    LABELS_JSON,
    OUTBOX_FILE,
    REPRODUCE_SH,
    VERSIONS_JSON,
    Outbox,
    Tracker,
    TrackingError,
    dataset_inputs,
    distill_tags,
    end_tags,
    flatten,
    is_outage,
    label_tags,
    oom_retry_tags,
    save_outbox,
    versions,
)

__all__ = ["TrialRun", "Outcome", "resolved", "run_tracked", "trial_files", "MLFLOW_STATUS", "CONFIG_JSON", "REPRODUCE_SH", "VERSIONS_JSON", "LABELS_JSON"]

"""A trial run's artifacts: its resolved config, the command that re-runs it, the versions, the label mapping (and ``TRIAL_LOG``)."""

MLFLOW_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", INTERRUPTED: "KILLED"}
"""MLflow run status by trial state (an interrupted trial is a failed one whose run was killed)."""

_NOISE = ("Loading weights", "The following values were not passed", "To avoid this warning")


def resolved(exp: ExperimentConfig) -> ExperimentConfig:
    """Fill in what depends on the machine (``precision: auto``), so the saved config is exact."""
    exp = exp.model_copy(deep=True)
    exp.launcher.precision = resolve_precision(exp.launcher.precision, exp.launcher.cpu, exp.launcher.accelerate_config)
    return exp


def trial_files(session: Session, cfg: dict[str, Any], study: str | None, number: int | None) -> dict[str, str]:
    """The artifacts that make a run re-runnable: its resolved config, the command, the versions."""
    cmd = f"lbsearch reproduce {study} --trial {number}" if study else f"lbsearch train {CONFIG_JSON}"
    if session.root.resolve() != (Path.cwd() / "mlruns").resolve():
        cmd += f" --mlruns {shlex.quote(str(session.root))}"
    if session.storage:
        cmd += f" --storage {shlex.quote(session.storage)}"
    return {
        CONFIG_JSON: json.dumps(cfg, indent=1),
        REPRODUCE_SH: f"# re-run this trial from its resolved config and compare metrics\n{cmd}\n"
        f"# or train the config alone: lbsearch train {CONFIG_JSON}\n",
        VERSIONS_JSON: json.dumps(versions(), indent=1),
    }


@dataclass
class TrialRun:
    """What to run and where its MLflow run goes."""

    exp: ExperimentConfig
    """Resolved (``resolved()``); after an out-of-memory retry it holds the micro-batch limit that ran."""
    data: Any
    """``lbsearch.data.cache.PreparedData``; None for a script trial (``kind: script``), which loads its own data."""
    workdir: Path
    prefix: str
    """Shown before each line of the trial's output, e.g. ``[trial 3]``."""
    experiment_id: str
    run_name: str
    parent: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    optuna: OptunaRef | None = None
    save_model: bool = False
    """A complete trial saves its model in ``workdir/model`` (``TrialResult.model_dir``)."""
    resumable: bool = False
    """A re-run of this trial may resume from its checkpoints (a search trial): they are kept when it
    fails for a reason that is retried, and deleted otherwise."""
    stopper: Stopper | None = None
    """Told the trial process's pid while it runs, so that another thread can stop it."""
    teacher_dir: str | None = None
    """A distilled experiment's teacher folder (``find_teacher``, set by ``run_tracked``)."""
    pause_at_samples: int | None = None
    """``pruner: asha_promote``: the trial's rung; it stops there with a checkpoint, paused (kept for its promotion)."""
    executor: Callable[..., TrialResult] | None = None
    """What runs the trial's processes (``run_trial_process``'s signature): this host's by default, a Ray cluster's (``ray_executor.connect``)."""


@dataclass
class Outcome:
    run_id: str
    result: TrialResult
    plan: TrialPlan
    """The plan that ran (micro-batch limit known), or the planned one if the process never started training."""


class Stopper:
    """Stops a running trial's process group from another thread (a worker whose trial was re-run
    elsewhere): SIGTERM, as Ctrl-C would, so that it ends with a checkpoint and its run as KILLED."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.fired = False

    def started(self, pid: int) -> None:
        self.pid = pid

    def done(self) -> None:
        self.pid = None

    def stop(self) -> None:
        self.fired = True
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)


def run_tracked(session: Session, tracker: Tracker, run: TrialRun, on_run: Callable[[str], None] = lambda run_id: None) -> Outcome:
    """Run ``run`` as a tracked trial. ``on_run(run_id)`` is called as soon as the MLflow run exists.
    KeyboardInterrupt stops the trial process, ends the run as KILLED (``interrupted``) and is re-raised;
    any other error ends the run as FAILED with the error as its reason and is re-raised."""
    teacher = find_teacher(session, run.exp)  # a distilled experiment's teacher: a SpecError before any run exists
    if teacher is not None:  # the version joins the saved config: a reproduce runs with this teacher or refuses
        run.exp.distill.teacher_version, run.teacher_dir = teacher.version, str(teacher.folder)
        run.files = run.files | ({CONFIG_JSON: json.dumps(run.exp.model_dump(mode="json"), indent=1)} if CONFIG_JSON in run.files else {})
    plan = make_plan(run.exp)
    config = run.exp.model_dump(mode="json")
    tags = run.tags | distill_tags(teacher, run.exp.distill if teacher else None) | ({k: v for k, v in plan.split().items() if v is not None})
    run_id = tracker.child_run(run.experiment_id, run.parent, run.run_name, tags, flatten(config) | plan.params() | run.params)
    with ended_on_error(tracker, run_id, run.workdir, run.resumable, session.out):
        on_run(run_id)
        return _tracked(session, tracker, run, run_id, plan, config)


@contextlib.contextmanager
def ended_on_error(tracker: Tracker, run_id: str, workdir: Path, resumable: bool, say: Callable[[str], None]) -> Iterator[None]:
    """No run is left RUNNING: an error inside ends the run (KILLED and ``interrupted`` for Ctrl-C,
    FAILED with the error's reason otherwise) and goes on up. The trial's checkpoints stay only
    where an interrupted trial, or one that a tracking outage stopped, will be re-run from them (``resumable``)."""
    try:
        yield
    except BaseException as err:
        if not (resumable and (isinstance(err, (KeyboardInterrupt, TrackingOutage)) or is_outage(err))):  # all re-run from the checkpoint
            discard(workdir)
        try:
            _end(tracker, run_id, workdir, failure(err))
        except Exception as end_err:  # noqa: BLE001 - the first error is the one that goes up; this one is said
            say(f"MLflow run {run_id} could not be ended: {type(end_err).__name__}: {str(end_err).splitlines()[0][:200] if str(end_err) else ''}")
        raise


def _tracked(session: Session, tracker: Tracker, run: TrialRun, run_id: str, plan: TrialPlan, config: dict[str, Any]) -> Outcome:
    labels = getattr(run.data, "labels", None) or {}
    tracker.artifacts(run_id, run.files | ({LABELS_JSON: json.dumps(labels, indent=1)} if labels else {}))
    if labels.get("names"):  # the label mapping, as the model's id2label has it
        tracker.tags(run_id, label_tags(labels["task"], json.dumps(labels["names"])))
    try:  # the Datasets column is a view: a tracking error here never costs the trial
        if run.data is not None:
            tracker.datasets(run_id, dataset_inputs(run.exp.data, run.data))
    except TrackingError as err:
        session.out(f"{run.prefix} datasets not logged to MLflow: {str(err).splitlines()[0][:200]}")
    shown = console.active()
    shown.trial_start(run.prefix, plan.budget_samples, run.exp.metric.name)
    box = Outbox(tracker, session.out, run.prefix)  # metric rows and tags: never waited on, kept through an outage
    try:
        with tracker.system_metrics(run_id):
            result, plan = _run_with_oom_retries(session, box, run, run_id, plan)
        if run.exp.model_dump(mode="json") != config and CONFIG_JSON in run.files:  # reproduce runs what ran
            box.artifacts(run_id, {CONFIG_JSON: json.dumps(run.exp.model_dump(mode="json"), indent=1)})
        if not box.flush() and run.resumable:  # MLflow still down at the end: re-run from the checkpoint, once it answers
            session.out(f"{run.prefix} MLflow unreachable past the limit at the trial's end: it is re-run from its last checkpoint")
            result = TrialResult(state="failed", reason=TRACKING_LOST)
        if box.error is not None:  # an error that retrying cannot cure fails the trial, as it always did
            raise box.error
    except BaseException:
        _keep_unsent(session, box, run, run_id, wait_s=10.0)  # what a stopped trial said up to its checkpoint
        raise
    finally:
        shown.trial_end()
        if run.stopper is not None:
            run.stopper.done()
    if not (run.resumable and (result.state == "failed" and result.reason in RETRYABLE or result.reason == PAUSED)):  # a paused trial's is resumed
        discard(run.workdir)
    _end(box, run_id, run.workdir, result)
    _keep_unsent(session, box, run, run_id, wait_s=None if box.down_since is None else 0.0)
    return Outcome(run_id, result, plan)


def _keep_unsent(session: Session, box: Outbox, run: TrialRun, run_id: str, wait_s: float | None) -> None:
    """Stop the outbox; the calls MLflow did not take are saved in the trial's folder, for the next run of the study."""
    unsent = box.close(wait_s)
    if unsent:
        save_outbox(unsent, run.workdir)
        session.out(f"{run.prefix} {len(unsent)} MLflow calls of run {run_id} kept in {run.workdir / OUTBOX_FILE}: "
                    "the next `lbsearch run` of the study logs them")


def _end(tracker: Tracker | Outbox, run_id: str, workdir: Path, result: TrialResult) -> None:
    tracker.tags(run_id, end_tags(result))
    log = workdir / TRIAL_LOG
    if log.is_file():
        tracker.artifacts(run_id, {TRIAL_LOG: log.read_text()[-200_000:]})
    tracker.end(run_id, MLFLOW_STATUS[INTERRUPTED if result.reason in RETRYABLE else result.state])  # stopped from outside: KILLED


def _run_with_oom_retries(session: Session, box: Outbox, run: TrialRun, run_id: str, plan: TrialPlan) -> tuple[TrialResult, TrialPlan]:
    """Run the trial; on out-of-memory halve the micro-batch limit (B unchanged: more accumulation)
    and retry. ``run.exp`` is updated to the limit that finally ran. A tracking outage past its limit
    stops the trial (with a checkpoint) and fails it retryably."""
    retries = 0
    while True:
        try:
            result = _run_once(session, box, run, run_id, plan)
        except TrackingOutage as err:
            session.out(f"{run.prefix} stopped: {err}; it is re-run from its last checkpoint once MLflow answers")
            return TrialResult(state="failed", reason=TRACKING_LOST), plan
        if result.plan is not None:
            plan = TrialPlan.from_dict(result.plan)
            run.exp.launcher.max_micro_batch = plan.max_micro_batch  # a probed limit becomes part of the config
        if not result.oom or plan.micro_batch is None or plan.micro_batch == 1:
            return result, plan
        smaller = plan.with_limit(max(1, plan.micro_batch // 2))
        session.out(f"{run.prefix} out of memory at micro-batch {plan.micro_batch}: retrying with micro-batch "
                    f"{smaller.micro_batch} x accumulation {smaller.accumulation} (B = {plan.batch_size} unchanged)")
        run.exp.launcher.max_micro_batch = smaller.max_micro_batch
        retries += 1
        box.tags(run_id, oom_retry_tags(retries, smaller.split()))
        plan = smaller


def _run_once(session: Session, box: Outbox, run: TrialRun, run_id: str, plan: TrialPlan) -> TrialResult:
    on_line, last_json = _line_handler(session, box, run_id, run.prefix)
    if run.data is None:
        spec = WorkerSpec(experiment=run.exp.model_dump(mode="json"), optuna=run.optuna, tracking=True)
        return (run.executor or run_trial_process)(spec, run.workdir, on_line=on_line, on_start=_started(run), program=script_program(run.exp, plan, run.workdir),
                                 no_result=lambda code: _script_result(box, run_id, run, code, last_json.get("line")))
    spec = WorkerSpec(experiment=run.exp.model_dump(mode="json"), data_path=str(run.data.path), num_labels=run.data.num_labels,
                      pad_id=run.data.pad_id, vocab_size=run.data.vocab_size, labels=run.data.labels, optuna=run.optuna,
                      tracking=True, model_dir=str(run.workdir / "model") if run.save_model else None,
                      checkpoint_dir=str(run.workdir / FOLDER), teacher_dir=run.teacher_dir, pause_at_samples=run.pause_at_samples)
    return (run.executor or run_trial_process)(spec, run.workdir, on_line=on_line, on_start=_started(run))


def _started(run: TrialRun) -> Callable[[int], None]:
    return run.stopper.started if run.stopper is not None else lambda pid: None


def _script_result(box: Outbox, run_id: str, run: TrialRun, code: int, last_json: dict[str, Any] | None) -> TrialResult | None:
    """A script that left no result: its final metrics (metrics file or last JSON line) when it exited 0."""
    result = result_from_output(run.exp, run.workdir, code, last_json)
    if result is not None and result.validation:
        box.metrics(run_id, {VAL + k: v for k, v in result.validation.items()}, result.samples)  # MLflow's step: samples seen
    return result


def _line_handler(session: Session, box: Outbox, run_id: str, prefix: str) -> tuple[Callable[[str], None], dict[str, Any]]:
    """Show the trial's output; metric rows go to its MLflow run, the plan that runs to its tags (through
    ``box``: an outage past its limit raises ``TrackingOutage`` here, once). The last line that is a JSON
    object is kept (a script's final metrics) in the returned dict."""
    last: dict[str, Any] = {}

    def on_line(line: str) -> None:
        try:
            line, msg = split_message(line)  # text another rank wrote before the message is its own line
        except ValueError as err:  # cut: what it carried is lost, and said so
            line, msg = f"lbsearch: a message from the trial could not be read, and what it carried is not in MLflow ({err}): {line[:200]}", None
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                found = None
            if isinstance(found, dict):
                last["line"] = found
        if line.strip() and not line.startswith(_NOISE):
            session.out(f"{prefix} {line}")
        kind, payload = msg or (None, None)
        if kind == "metrics":
            box.metric_rows(run_id, payload)
            console.active().trial_metrics(payload)
        elif kind == "plan":
            box.tags(run_id, TrialPlan.from_dict(payload).split())
        elif kind == "tags":
            box.tags(run_id, payload)
        elif kind == "sync":  # a checkpoint: its rows in MLflow before the line that announces it is shown
            box.settle()
        box.check()

    return on_line, last
