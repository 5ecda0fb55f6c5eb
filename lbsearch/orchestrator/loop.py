"""The search loop: ask Optuna for a trial, run it tracked, tell Optuna the result; repeat until
``n_trials`` count. Mirrors the study in MLflow: an experiment, a parent run, a child run per trial.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lbsearch.data import prepare_data
from lbsearch.orchestrator.budget import budget_reached, trials_left
from lbsearch.orchestrator.finish import finish_study, update_front
from lbsearch.orchestrator.promotion import ended_line, promote, resume, rung_plan, started
from lbsearch.orchestrator.ray_executor import connect
from lbsearch.orchestrator.runner import Stopper, TrialRun, resolved, run_tracked, trial_files
from lbsearch.orchestrator.standby import standby
from lbsearch.spec import (
    BATCH_KEY,
    BEST_TEST,
    BEST_VALUE,
    CONFIG_ATTR,
    HOST_ATTR,
    INTERRUPTED,
    METRIC_ATTR,
    PID_ATTR,
    RETRY_OF_ATTR,
    SPEC_ATTR,
    TRACKING_LOST,
    TRIALS_COMPLETE,
    TRIALS_FAIL,
    TRIALS_PRUNED,
    WARM_STARTED_ATTR,
    WORKER_DIED,
    Constraint,
    OptunaRef,
    Session,
    SpecError,
    StudyConfig,
    TrackingOutage,
    TrialPlan,
    TrialResult,
    apply_params,
    data_cache_dir,
    discard,
    is_script,
    reports_dir,
    tracking_home,
    trial_model_dir,
    trials_dir,
    validate_experiment,
)
from lbsearch.spec import parse as parse_constraints
from lbsearch.study import (
    RUN_ID,
    best_trial,
    best_value,
    configurations,
    continuation,
    counted,
    heartbeat,
    heartbeat_interval,
    host,
    is_multi,
    make_sampler,
    objective_values,
    open_storage,
    open_study,
    pareto,
    reason,
    recover,
    study_lock,
    suggest,
    summary,
    tell_once,
    to_csv,
    trial_id,
    trial_rows,
    uses_heartbeats,
)
from lbsearch.terminal import Progress, study_progress
from lbsearch.tracking import (
    BEST_ALIAS,
    KIND,
    TRIALS_CSV,
    Tracker,
    TrackingError,
    best_tags,
    description,
    drop_best,
    end_tags,
    git_commit,
    is_outage,
    keep_trial_model,
    mark_best,
    outage_limit,
    replay_outboxes,
    tracker_for,
    trial_tags,
    wait_for_tracking,
)

__all__ = ["run_study"]

DONE, WAIT = "done", "wait"


class _Search:
    """One worker's view of a study: the Optuna study, its MLflow parent run, the data."""

    def __init__(self, session: Session, cfg: StudyConfig, exp_raw: dict[str, Any], spec_file: Path | None) -> None:
        self.session, self.cfg, self.exp_raw = session, cfg, exp_raw
        self.executor = connect(cfg.executor, session.out) if cfg.executor.kind == "ray" else None  # Ray places the trials (ray_executor)
        # bad data is a spec error, before anything is created; a script trial loads its own data
        self.data = None if is_script(cfg.experiment) else prepare_data(cfg.experiment, data_cache_dir(session.root))
        self.digest = {"data.digest": self.data.digest} if self.data else {}
        self.study = open_study(session, cfg)
        self.study.set_user_attr(METRIC_ATTR, cfg.experiment.metric.name)
        self.study.set_user_attr(SPEC_ATTR, json.dumps({"study": cfg.model_dump(mode="json", exclude={"experiment"}), "experiment": exp_raw}))
        self.tracker: Tracker = tracker_for(session, cfg)
        home, nest_under = tracking_home(cfg)  # a branch study: the reference's experiment, under the reference trial's run
        self.exp_id = self.tracker.experiment(home)
        if home == cfg.name:  # a branch study leaves its reference's description alone
            self.tracker.experiment_tags(self.exp_id, KIND | {"mlflow.note.content": description(cfg, exp_raw)})
        self.parent = self.tracker.parent_run(self.exp_id, cfg.name, {
            "n_trials": cfg.n_trials, "sampler": cfg.sampler.name, "sampler.seed": cfg.sampler.seed, "pruner": cfg.pruner.name,
            "metric": cfg.experiment.metric.name, "search_space": json.dumps({k: v.model_dump() for k, v in cfg.search_space.items()}),
        }, nest_under)
        self.commit = git_commit(spec_file.parent if spec_file else None)
        self.tracker.tags(self.parent, {"optuna.version": optuna.__version__, "git.commit": self.commit} | self.digest)

    def _close_dead(self, t: optuna.trial.FrozenTrial) -> None:
        if t.user_attrs.get(RUN_ID):
            self.tracker.tags(t.user_attrs[RUN_ID], end_tags(TrialResult(state="failed", reason=WORKER_DIED)))
            self.tracker.end(t.user_attrs[RUN_ID], "KILLED")

    def ask(self) -> optuna.Trial | str:
        """The next trial, or ``DONE``, or ``WAIT`` while other machines' trials may yet die.
        Counting and asking happen under the study lock, so N workers never overshoot n_trials."""
        cfg, study = self.cfg, self.study
        with study_lock(self.session, cfg):
            replay_outboxes(self.tracker, list(trials_dir(self.session.root, cfg.name).glob("*")), self.session.out)  # an outage's calls
            recover(study, cfg.max_retries, self._close_dead)
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):  # dead and not re-run: its checkpoints go
                if reason(t) == WORKER_DIED and counted(t, cfg.max_retries):
                    for folder in trials_dir(self.session.root, cfg.name).glob(f"{t.number:04d}-*"):
                        discard(folder)
            if cfg.warm_start and not study.user_attrs.get(WARM_STARTED_ATTR):
                self._warm_start()
            trials = study.get_trials(deepcopy=False)
            running = sum(t.state == TrialState.RUNNING and not continuation(t) for t in trials)  # n_trials counts configurations
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            done = configurations(trials, cfg.max_retries)
            if stop := budget_reached(study):  # within one trial of the budget: the last one may pass it
                self.session.out(stop)
                return DONE
            if not waiting and promote(study, cfg, self.session.out):  # asha_promote: a paused trial goes on before a new one starts
                waiting = 1
            if done + running >= cfg.n_trials and not waiting:
                return DONE if done >= cfg.n_trials or not uses_heartbeats(study) else WAIT
            if sum(reason(t).startswith("constraint") for t in trials) >= 20 * cfg.n_trials:
                self.session.out(f"[study {cfg.name}] stopped: the sampler keeps suggesting params that `constraints` rule out")
                return DONE
            if cfg.batch_ladder and not waiting:  # the next rung; retries keep theirs
                study.enqueue_trial({BATCH_KEY: cfg.batch_ladder[(done + running) % len(cfg.batch_ladder)]}, skip_if_exists=False)
            # the next trial's number: the first waiting trial's, else a new one
            number = min((t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))), default=len(trials))
            study.sampler = make_sampler(cfg.sampler, cfg.space, number=number, constraints=cfg.constraints)
            trial = study.ask()
            trial.set_user_attr(HOST_ATTR, host())
            trial.set_user_attr(PID_ATTR, os.getpid())
            return trial

    def update_parent(self, step: int) -> None:
        """The parent run's trial table, counts and best trial; an MLflow error here is said, and the next trial updates it again."""
        try:
            self._update_parent(step)
        except TrackingError as err:
            self.session.out(f"[study {self.cfg.name}] the study's MLflow run not updated: {str(err).splitlines()[0][:200]}")

    def _update_parent(self, step: int) -> None:
        rows, best = trial_rows(self.study), best_trial(self.study)
        self.tracker.artifacts(self.parent, {TRIALS_CSV: to_csv(rows)})
        self.tracker.metrics(self.parent, {name: sum(r["state"] == s for r in rows) for s, name in (("complete", TRIALS_COMPLETE), ("pruned", TRIALS_PRUNED), ("fail", TRIALS_FAIL))}, step)
        if best is not None:
            metric = self.cfg.experiment.metric.name
            self.tracker.metrics(self.parent, {BEST_VALUE: best_value(self.study, best), BEST_TEST: best.user_attrs.get(f"test_{metric}")}, step)
            self.tracker.tags(self.parent, best_tags(best.number, best_value(self.study, best), best.user_attrs.get(RUN_ID, ""), best.params))
            if best.user_attrs.get(RUN_ID):
                mark_best(self.tracker, self.exp_id, self.cfg.name, best.user_attrs[RUN_ID])

    def run_one(self, trial: optuna.Trial, stopper: Stopper | None = None) -> None:
        cfg, prefix = self.cfg, f"[trial {trial.number}]"
        try:
            params = suggest(trial, cfg.space)
            exp = resolved(validate_experiment(apply_params(self.exp_raw, params), None))
        except SpecError as err:  # a combination the spec allows but the experiment refuses
            trial.set_user_attr("reason", f"invalid params: {err}")
            self.study.tell(trial, state=TrialState.FAIL)
            self.session.out(f"{prefix} failed: invalid params: {err}")
            return
        broken = next((c.text for c in self.constraints if not c(params)), None)
        if broken is not None:  # ruled out by the spec: told as pruned, never trained, not counted
            trial.set_user_attr("reason", f"constraint: {broken}")
            self.study.tell(trial, state=TrialState.PRUNED)
            self.session.out(f"{prefix} skipped: violates constraint `{broken}` ({', '.join(f'{k}={_fmt(v)}' for k, v in params.items())})")
            return
        config = exp.model_dump(mode="json")
        trial.set_user_attr(CONFIG_ATTR, json.dumps(config))
        tags = trial_tags(cfg.name, trial.number, trial_id(trial), self.commit, trial.user_attrs.get(RETRY_OF_ATTR)) | self.digest
        folders = trials_dir(self.session.root, cfg.name)
        workdir = folders / f"{trial.number:04d}-{uuid.uuid4().hex[:6]}"
        resumed = resume(self.study, folders, trial, workdir, self.session.out)
        rung, pause_at = rung_plan(self.study, cfg, trial, self.data is None)
        run = TrialRun(exp=exp, data=self.data, workdir=workdir, resumable=True, pause_at_samples=pause_at,
                       prefix=prefix, experiment_id=self.exp_id, run_name=f"trial-{trial.number}", parent=self.parent, tags=tags | resumed | rung,
                       params={f"search.{k}": v for k, v in trial.params.items()}, files=trial_files(self.session, config, cfg.name, trial.number),
                       optuna=None if is_multi(self.study) else  # Optuna takes intermediate values of single-objective studies only
                       OptunaRef(storage=self.session.storage_for(cfg), study_name=cfg.name, trial_id=trial_id(trial), pruner=cfg.pruner.model_dump()),
                       save_model=cfg.save_model != "none", stopper=stopper, executor=self.executor)
        self.session.out(f"{prefix} start {', '.join(f'{k}={_fmt(v)}' for k, v in params.items())}")
        t0 = time.time()
        try:
            out = run_tracked(self.session, self.tracker, run, on_run=lambda run_id: started(self.tracker, trial, run_id, resumed, self.session.out))
        except KeyboardInterrupt:
            self._tell(trial, TrialResult(state="failed", reason=INTERRUPTED))
            raise
        except TrackingError as err:  # the tracking server failed this trial, not the study
            self._tracking_failed(trial, err, prefix)
            return
        if stopper is not None and stopper.fired:  # re-run elsewhere: its checkpoints are of no use here
            discard(workdir)
        if exp.model_dump(mode="json") != config:  # the config that ran (probed or halved micro-batch), for reproduce
            trial.set_user_attr(CONFIG_ATTR, json.dumps(exp.model_dump(mode="json")))
        self._tell(trial, out.result, out.plan)
        r = out.result
        if r.model_dir:
            self._keep(trial.number, out.run_id, Path(r.model_dir))
        elif r.model_error:
            self._no_model(trial.number)
        value = f" {cfg.experiment.metric.name} {r.value:.4f}" if r.value is not None else ""
        self.session.out(f"{prefix} {ended_line(r, trial)}{value} in {time.time() - t0:.1f}s")

    def interrupted(self, trial: optuna.Trial) -> None:
        """Tell a trial this worker asked for as ``interrupted`` where it is still running (it is then re-run)."""
        if next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number).state == TrialState.RUNNING:
            self._tell(trial, TrialResult(state="failed", reason=INTERRUPTED))

    def _tracking_failed(self, trial: optuna.Trial, err: TrackingError, prefix: str) -> None:
        """MLflow failed the trial outside its training. An outage: the trial is re-run from its checkpoint,
        and the next one waits for MLflow (up to the outage limit; past it the study stops, resumable)."""
        why = f"tracking: {str(err).splitlines()[0][:200]}"
        self._tell(trial, TrialResult(state="failed", reason=TRACKING_LOST if is_outage(err) else why))
        if RUN_ID in trial.user_attrs:  # a second try at ending it (ended_on_error tried and said if it could not)
            try:
                self.tracker.end(trial.user_attrs[RUN_ID], "FAILED")
            except TrackingError as again:
                self.session.out(f"{prefix} MLflow run {trial.user_attrs[RUN_ID]} could not be ended: {str(again).splitlines()[0][:200]}")
        self.session.out(f"{prefix} failed ({why})")
        if is_outage(err) and not wait_for_tracking(self.tracker, outage_limit(), self.session.out):
            raise TrackingOutage(f"MLflow ({self.tracker.uri}) unreachable for {outage_limit():.0f} s: the study stops here; run the same "
                                "command again to resume it (its trials stopped by the outage are re-run from their checkpoints)")

    def _warm_start(self) -> None:
        """Enqueue the best ``top_k`` params of an earlier study (those of this study's space)."""
        ws = self.cfg.warm_start
        url = ws.storage or self.session.storage_for(self.cfg)
        try:
            source = optuna.load_study(study_name=ws.study, storage=open_storage(url))
        except KeyError:
            raise SpecError(None, "warm_start.study", f"no study {ws.study!r} in {url}") from None
        space = {p for k in self.cfg.space for p in (k, f"{k}:on")}
        ranked = sorted(pareto(source) if is_multi(source) else [t for t in source.trials if t.state == TrialState.COMPLETE],
                        key=lambda t: [(1 if d == optuna.study.StudyDirection.MINIMIZE else -1) * v for d, v in zip(source.directions, t.values)])
        for t in ranked[: ws.top_k]:
            self.study.enqueue_trial({k: v for k, v in t.params.items() if k in space}, user_attrs={"warm_start_of": f"{ws.study}#{t.number}"})
        self.study.set_user_attr(WARM_STARTED_ATTR, ws.study)
        self.session.out(f"[study {self.cfg.name}] warm start: the best {min(ws.top_k, len(ranked))} trials of {ws.study} run first")

    def _tell(self, trial: optuna.Trial, r: TrialResult, plan: TrialPlan | None = None) -> None:
        attrs: dict[str, Any] = {"reason": r.reason} if r.reason else {"reason": f"model not saved: {r.model_error}"} if r.model_error else {}
        for key in ("samples", "steps", "skipped_steps", "samples_to_target", "steps_to_target", "samples_per_s", "tokens_per_s", "mfu", "wall_s", "first_step_s", "b_simple",
                    "tokens_to_target", "b_simple_tokens"):
            if getattr(r, key) is not None:
                attrs[key] = getattr(r, key)
        for split in ("validation", "test"):
            attrs |= {f"{split}_{k}": v for k, v in (getattr(r, split) or {}).items()}
        if r.state == "complete":
            budget, steps = (plan.budget_samples, plan.steps) if plan else (r.samples, r.steps)
            told = tell_once(self.study, trial, attrs, objective_values(self.cfg.objective_list, r, budget, steps))
        else:
            told = tell_once(self.study, trial, attrs, state=TrialState.PRUNED if r.state == "pruned" else TrialState.FAIL)
        if not told:
            self.session.out(f"[trial {trial.number}] was finished meanwhile by another worker (this one's heartbeat was lost; "
                             f"it re-runs the trial): this result ({r.state}) is not told")
        elif r.state == "complete" and is_multi(self.study):
            update_front(self.study, self.tracker, self.parent, reports_dir(self.session.root, self.cfg.name))

    def _no_model(self, number: int) -> None:
        """A complete trial without its model: where it is the best, the registry's ``best`` alias (an
        earlier trial's model) goes, so that the registry, ``best`` and ``predict`` never name different trials."""
        with study_lock(self.session, self.cfg):
            best = best_trial(self.study)
            if best is not None and best.number == number and drop_best(self.tracker, self.cfg.name):
                self.session.out(f"[trial {number}] the best so far has no model: the registry's alias `{BEST_ALIAS}` is removed")

    def _keep(self, number: int, run_id: str, saved: Path) -> None:
        """Keep or delete the trial's saved model (``save_model``); the best one goes to MLflow's registry."""
        with study_lock(self.session, self.cfg):
            best = best_trial(self.study)
            try:
                folder = keep_trial_model(self.tracker, self.session.root, study=self.cfg.name, experiment_id=self.exp_id, number=number,
                                          run_id=run_id, saved=saved, policy=self.cfg.save_model, best=best.number if best else None)
            except OSError as err:  # moving it failed (a full disk): the models kept before stay as they were
                self.session.out(f"[trial {number}] model not kept ({type(err).__name__}: {str(err).splitlines()[0][:200]}); the models kept before are unchanged")
                return
            except TrackingError as err:  # the model is on disk; MLflow failed: the study goes on
                self.session.out(f"[trial {number}] model kept in {trial_model_dir(self.session.root, self.cfg.name, number)} but not logged to MLflow: "
                                 f"{str(err).splitlines()[0][:200]}")
                return
        if folder is not None:
            self.session.out(f"[trial {number}] model kept in {folder}" + (" (the best so far; registered in MLflow)" if best and best.number == number else ""))

    @functools.cached_property
    def constraints(self) -> list[Constraint]:
        return parse_constraints(self.cfg.constraints, set(self.cfg.space))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run_study(session: Session, cfg: StudyConfig, exp_raw: dict[str, Any], *, spec_file: Path | None = None, max_trials: int | None = None,
              use_standby: bool = True) -> int:
    """Create or resume the study and run trials until ``n_trials`` count or its ``budget`` is spent (0: done, 130: interrupted).
    On a terminal the study and the running trial are drawn as live bars above which the lines scroll.
    ``use_standby``: later trials forked from a standby process (``lbsearch.orchestrator.standby``)."""
    s = _Search(session, cfg, exp_raw, spec_file)
    ran, held = 0, None
    session.out(summary(s.study, cfg.n_trials))
    try:
        # a standby process pays a trial's imports once more, beside the first trial: worth it only for a second one
        forks = use_standby and trials_left(s.study, cfg, max_trials) > 1 and s.executor is None  # Ray's trials start on their nodes
        with study_progress(cfg.name, cfg.n_trials) as shown, standby(session.out) if forks else contextlib.nullcontext():
            _show(s, shown)
            while max_trials is None or ran < max_trials:
                trial = held = s.ask()
                if trial == DONE:
                    break
                if trial == WAIT:  # other machines' trials may yet die: stay until their heartbeats settle it
                    time.sleep(heartbeat_interval(s.study))
                    continue
                ran += 1
                stopper = Stopper()  # a worker whose trial another worker re-runs (its heartbeat was lost) stops its copy
                with heartbeat(s.study, trial, s.session.out, on_superseded=stopper.stop):
                    s.run_one(trial, stopper)
                s.update_parent(trial.number)
                _show(s, shown)
                session.out(summary(s.study, cfg.n_trials))
    except KeyboardInterrupt:
        if isinstance(held, optuna.Trial):  # Ctrl-C outside its tracked run (a line being printed): never left RUNNING
            s.interrupted(held)
        session.out(f"[study {cfg.name}] interrupted; run the same command again to resume")
        s.update_parent(len(s.study.trials))
        s.tracker.end(s.parent, "KILLED")
        return 130
    finish_study(session, s.tracker, s.parent, s.study, cfg)
    trials = s.study.get_trials(deepcopy=False)
    if (configurations(trials, cfg.max_retries) >= cfg.n_trials or budget_reached(s.study)) and not any(t.state == TrialState.RUNNING for t in trials):
        s.tracker.end(s.parent, "FINISHED")
    best = best_trial(s.study)
    if best is not None:
        m = cfg.experiment.metric.name
        session.out(f"[study {cfg.name}] best trial {best.number}: {m} {best_value(s.study, best):.4f} (test {best.user_attrs.get('test_' + m, float('nan')):.4f}) params {best.params}")
    return 0


def _show(s: _Search, shown: Progress) -> None:
    trials = s.study.get_trials(deepcopy=False)
    n = {state: sum(t.state == state for t in trials) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = best_trial(s.study)
    shown.study(counted=configurations(trials, s.cfg.max_retries), complete=n[TrialState.COMPLETE], pruned=n[TrialState.PRUNED],
                failed=n[TrialState.FAIL], best=f"{best.values[0]:.4f} (trial {best.number})" if best else None)
