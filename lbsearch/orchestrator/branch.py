"""``lbsearch branch STUDY --trial N``: the critical batch size over training of a reference trial, by branching.

The branches of a reference trial are a study of their own, ``<study>-branch-<N>`` (or ``--name``): a grid over
the reference's kept branch points x k·B x seeds (``spec.branch.SEARCHED``), each trial a branch
(``spec.branch.branch_experiment``), run by the study loop like any other, so it is tracked in MLflow (tags
``lbsearch.branch.*``; in the reference study's experiment, its parent run under the reference trial's run:
``spec.branch.tracking_home``), resumable (the same command again runs what is left), reproducible (``lbsearch reproduce``)
and runs ``--parallel N`` (N placed workers, ``orchestrator.parallel``; the report once all are done). At its end the CBS report (``science.cbs``, ``science.cbs_report``) is written under
``mlruns/reports/<branch study>/cbs`` and logged to the branch study's parent run (artifacts ``cbs_report/``)."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from lbsearch.orchestrator.loop import run_study
from lbsearch.orchestrator.parallel import run_parallel, without_option
from lbsearch.science import cbs_table, default_eps, write_cbs_report
from lbsearch.spec import (
    BRANCH_TAGS,
    CBS_CBS,
    CBS_CI_HIGH,
    CBS_CI_LOW,
    CBS_TAGS,
    CONFIG_ATTR,
    FOLDER,
    RESUME_OF_ATTR,
    RETRY_OF_ATTR,
    RULES,
    SPEC_JSON,
    ExperimentConfig,
    Session,
    SpecError,
    StudyConfig,
    branch_experiment,
    branch_points_dir,
    fingerprint,
    kept_points,
    make_plan,
    reports_dir,
    sample_unit,
    tracking_home,
    trials_dir,
)
from lbsearch.study import RUN_ID, load_existing_study, stored_study
from lbsearch.tracking import tracker_for

__all__ = ["BranchArgs", "branch_study", "run_branches", "cbs_report"]


@dataclass(frozen=True)
class BranchArgs:
    """What ``lbsearch branch`` was asked (the option names are the fields named in errors)."""

    trial: int
    k: tuple[int, ...]
    seeds: int
    rule: str
    """The defaults of ``k``, ``seeds`` and ``rule`` are the command's (``lbsearch.cli.branch.add_branch``)."""
    delta: int | None = None
    """Tokens (language models) or samples (classifiers) each branch trains."""
    eps: float | None = None
    b_crit: float | None = None
    name: str | None = None


def _check(a: BranchArgs, B: int, unit: int) -> None:
    """The one-line refusals of a bad branch request, each naming its option."""
    if sorted(set(a.k)) != sorted(a.k) or min(a.k) < 1 or 1 not in a.k:
        raise SpecError(None, "--k", f"must be distinct whole multiples >= 1 of B that include 1 (the reference continued), got {list(a.k)}")
    if a.rule not in RULES:
        raise SpecError(None, "--rule", f"must be one of {', '.join(RULES)}, got {a.rule!r}")
    if a.seeds < 1:
        raise SpecError(None, "--seeds", f"must be at least 1, got {a.seeds}")
    if a.eps is not None and not a.eps > 0:
        raise SpecError(None, "--eps", f"must be > 0, got {a.eps}")
    what = "tokens" if unit > 1 else "samples"
    step = max(a.k) * B * unit
    if a.delta is None or a.delta < step or a.delta % step:
        raise SpecError(None, "--delta", f"must be a positive multiple of the largest k·B ({max(a.k)} x {B} x {unit} = {step:,} {what}) so that "
                        f"every branch trains exactly Δ {what}, got {a.delta}")


def _reference(session: Session, study_name: str, number: int) -> tuple[Any, dict[str, Any], Path]:
    """The reference trial, its resolved experiment and the folder of its kept branch points."""
    study = load_existing_study(session, study_name)
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found or CONFIG_ATTR not in found[0].user_attrs:
        raise SpecError(None, "--trial", f"study {study_name} has no trial {number} that ran")
    folder = _points_folder(trials_dir(session.root, study_name), study.get_trials(deepcopy=False), number)
    if folder is None:
        raise SpecError(None, "--trial", f"trial {number} of {study_name} kept no branch points: set `experiment.branching.keep_at` "
                        "(fractions of the budget, or tokens) and run it (docs/critical_batch.md)")
    return found[0], json.loads(found[0].user_attrs[CONFIG_ATTR]), folder


def _points_folder(folders_of: Path, trials: list, number: int) -> Path | None:
    """The ``branch_points`` folder of trial ``number``: where a trial re-run from another's checkpoint (``retry_of``,
    ``resume_of``) kept fewer points than the trials before it, theirs are linked into its folder so one folder holds them all."""
    by_number, lineage = {t.number: t for t in trials}, [number]
    while (t := by_number.get(lineage[-1])) is not None and (up := t.user_attrs.get(RETRY_OF_ATTR, t.user_attrs.get(RESUME_OF_ATTR))) is not None:
        lineage.append(up)
    folders = [branch_points_dir(p / FOLDER) for n in lineage for p in sorted(folders_of.glob(f"{n:04d}-*"))]
    found = [f for f in folders if kept_points(f)]
    if not found:
        return None
    mine = found[0]
    for other in found[1:]:  # an earlier run of the same lineage: its points, not already kept by a later one
        for p in kept_points(other).values():  # whole checkpoints only, found by their prefix (spec.workdir.PREFIX)
            if not (mine / p.name).exists():
                shutil.copytree(p, mine / p.name, copy_function=os.link)
    return mine


def branch_study(session: Session, study_name: str, a: BranchArgs) -> tuple[StudyConfig, dict[str, Any]]:
    """The branch study's config and raw experiment for ``a`` (a SpecError naming the option where it is refused)."""
    trial, ref, folder = _reference(session, study_name, a.trial)
    exp = ExperimentConfig.model_validate(ref)
    B, unit = exp.train.batch_size, sample_unit(exp.task, exp.data.max_length)
    _check(a, B, unit)
    points = sorted(kept_points(folder))
    ran = folder.parent / SPEC_JSON  # the experiment as the trial process hashed it (its launcher's machine settings filled in)
    key = fingerprint(json.loads(ran.read_text())["experiment"] if ran.is_file() else ref)
    source = {"checkpoints": str(folder.resolve()), "at_samples": points[0], "fingerprint": key, "reference": f"{study_name}#{a.trial}",
              "reference_seed": exp.seed, "reference_batch_size": B, "reference_run": trial.user_attrs.get(RUN_ID)}
    raw = branch_experiment(ref, make_plan(exp).lr, a.delta // unit, a.rule, source)
    space = {"branching.source.at_samples": points, "train.batch_size": [k * B for k in sorted(a.k)], "seed": [exp.seed + i for i in range(a.seeds)]}
    stored = stored_study(load_existing_study(session, study_name))
    cfg = StudyConfig.model_validate({
        "name": a.name or f"{study_name}-branch-{a.trial}", "experiment": raw, "n_trials": len(points) * len(a.k) * a.seeds,
        "search_space": {key: {"type": "categorical", "choices": v} for key, v in space.items()}, "sampler": {"name": "grid"},
        "pruner": {"name": "none"}, "save_model": "none", "tracking_uri": stored.tracking_uri if stored else None})
    return cfg, raw


def run_branches(session: Session, study_name: str, a: BranchArgs, parallel: int, argv: list[str] | None = None, report: bool = True) -> int:
    """Create or resume the branch study of ``a.trial``, run what is left of it, then write and log its CBS report.
    ``parallel`` > 1: ``lbsearch ARGV`` (this command) as that many placed workers, each running branches one at a time
    without a report (``report=False``); the report once all are done."""
    cfg, raw = branch_study(session, study_name, a)
    if parallel > 1:
        launcher = ExperimentConfig.model_validate(raw).launcher.model_dump()
        code = run_parallel([*without_option(argv or [], "--parallel"), "--parallel", "1", "--no-report"], parallel, launcher, f"lbsearch branch {study_name}")
        if code == 0:
            cbs_report(session, cfg, a)
        return code
    say = lambda text: session.out(f"[branch {cfg.name}] {text}")  # noqa: E731
    say(f"{cfg.n_trials} branches of {study_name}#{a.trial}: points {cfg.search_space['branching.source.at_samples'].choices} samples, "
        f"k {sorted(a.k)}, {a.seeds} seed(s), lr rule {a.rule}, Δ {a.delta:,}")
    ref_run = next((t.user_attrs.get(RUN_ID) for t in load_existing_study(session, study_name).get_trials(deepcopy=False)
                    if t.number == a.trial), None)
    if ref_run:  # the reference's run names its branch study (whose runs name the reference: lbsearch.branch.reference)
        tracker_for(session, cfg).tags(ref_run, {BRANCH_TAGS["study"]: cfg.name})
    code = run_study(session, cfg, raw)
    if code != 0 or not report:
        return code
    cbs_report(session, cfg, a)
    return 0


def _rows(study, B: int, unit: int) -> tuple[list[dict[str, Any]], dict[float, float]]:
    """The CBS rows of a branch study's complete trials, and B_simple at each point (the k = 1 branches' mean, in the unit)."""
    rows, simple = [], {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        p = t.params
        point, k = p["branching.source.at_samples"] * unit, p["train.batch_size"] / B
        rows.append({"point": point, "k": k, "batch": p["train.batch_size"] * unit, "seed": p["seed"], "loss": t.user_attrs.get("validation_loss")})
        b = t.user_attrs.get("b_simple_tokens" if unit > 1 else "b_simple")
        if k == 1 and b is not None:
            simple.setdefault(point, []).append(b)
    return rows, {t: sum(v) / len(v) for t, v in simple.items()}


def _machine() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"Measured on {name}."


def cbs_report(session: Session, cfg: StudyConfig, a: BranchArgs) -> Path:
    """The CBS report of a finished branch study: written under ``mlruns/reports/<study>/cbs`` and logged to its parent run."""
    study = load_existing_study(session, cfg.name)
    src, exp = cfg.experiment.branching.source, cfg.experiment
    unit = sample_unit(exp.task, exp.data.max_length)
    rows, b_simple = _rows(study, src.reference_batch_size, unit)
    if not rows:
        raise SpecError(None, cfg.name, "no branch completed: no CBS report (the trials' lines above say why)")
    try:
        if a.eps is None:
            default_eps(rows)  # one seed per branch has no spread to take ε from
    except ValueError as err:
        raise SpecError(None, "--eps", str(err)) from None
    try:
        summary = cbs_table(rows, a.eps)
    except ValueError as err:  # a point without its k = 1 branch (failed): the trials' lines say why
        raise SpecError(None, cfg.name, str(err)) from None
    out = reports_dir(session.root, cfg.name) / "cbs"
    page = write_cbs_report(summary, out, study=cfg.name, reference=src.reference, unit="tokens" if unit > 1 else "samples",
                            delta=exp.train.budget_samples * unit, b_simple=b_simple, b_crit=a.b_crit, machine=_machine())
    tracker = tracker_for(session, cfg)
    parent = tracker.find_parent(cfg.name, tracking_home(cfg)[0])
    if parent is not None:
        tracker.artifact_dir(parent, out, "cbs_report")
        for p in summary["points"]:
            tracker.metrics(parent, {CBS_CBS: p["cbs"], CBS_CI_LOW: p["cbs_ci"][0], CBS_CI_HIGH: p["cbs_ci"][1]}, int(p["point"]))
        tracker.tags(parent, {BRANCH_TAGS["reference"]: src.reference, BRANCH_TAGS["rule"]: a.rule, CBS_TAGS["eps"]: summary["eps"],
                              CBS_TAGS["trend"]: summary["trend"].get("verdict", summary["trend"].get("error"))})
    say = lambda text: session.out(f"[cbs {cfg.name}] {text}")  # noqa: E731
    say(f"ε {summary['eps']:.4g} ({summary['eps_how']})")
    for p in summary["points"]:
        say(f"t {p['point']:,.0f}: CBS {p['cbs']:,.0f} ({int(100 * summary['confidence'])}% interval {p['cbs_ci'][0]:,.0f} .. {p['cbs_ci'][1]:,.0f})"
            + (f", B_simple {b_simple[p['point']]:,.0f}" if p["point"] in b_simple else ""))
    tr = summary["trend"]
    say(f"trend: CBS ∝ t^{tr['slope']:.2f}, {tr['verdict']}" if "slope" in tr else f"trend: {tr['error']}")
    for w in summary["warnings"]:
        say(f"warning: {w}")
    say(f"{page}" + (f" (also in MLflow run {parent}, artifacts cbs_report/)" if parent else ""))
    return page
