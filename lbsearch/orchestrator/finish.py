"""The end of a study: Optuna's plots (and the Pareto front's, as it grows) and, for a ladder, the batch-scaling report, logged to the parent run; `lbsearch report`."""


from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lbsearch.spec import REPORT_B_CRIT, REPORT_LR_ALPHA, REPORT_LR_ALPHA_CI_HIGH, REPORT_LR_ALPHA_CI_LOW, REPORT_S_MIN, Session, reports_dir, tracking_home
from lbsearch.study import load_existing_study, objectives, pareto, stored_study, to_csv, trial_rows
from lbsearch.tracking import PARETO_CSV, PARETO_DIR, PARETO_PNG, pareto_tags, study_plots, tracker_for

if TYPE_CHECKING:
    from lbsearch.spec import Session, StudyConfig
    from lbsearch.tracking import Tracker


def finish_study(session: "Session", tracker: "Tracker", parent: str, study: optuna.Study, cfg: "StudyConfig") -> None:
    """At the end of a study: Optuna's plots on the parent run (``plots/``), and the batch-scaling
    report when the study has a batch ladder (``report/``, as ``lbsearch report`` writes it)."""
    folder = reports_dir(session.root, cfg.name) / "plots"
    made = study_plots(study, folder, cfg.experiment.metric.name)
    tracker.artifact_dir(parent, folder, "plots")
    drawn = [k.removesuffix(".png") for k, v in made.items() if not v.startswith("not drawn")]
    session.out(f"[study {cfg.name}] plots {', '.join(drawn) or '-'} in MLflow run {parent} (artifacts plots/) and {folder}")
    if cfg.batch_ladder:
        from lbsearch.orchestrator.finish import report

        report(dataclasses.replace(session, storage=session.storage_for(cfg)), cfg.name)


def report(session: Session, name: str, out: Path | None = None, targets: list[float] | None = None) -> int:
    """Write the batch-scaling report of a study and log it to the study's parent MLflow run; ``targets``:
    the loss targets of a language-model study (default: chosen from its curves)."""
    from lbsearch.science import REPORT_HTML, write_report

    study = load_existing_study(session, name)
    out = out or reports_dir(session.root, name)
    summary = write_report(study, out, targets)
    stored = stored_study(study)
    tracker = tracker_for(session, stored)
    parent = tracker.find_parent(name, tracking_home(stored)[0] if stored else None)
    sf, lf, rng = summary["steps_fit"], summary["lr_fit"], summary["b_simple_range"]
    if parent is not None:
        tracker.artifact_dir(parent, out, "report")
        tracker.metrics(parent, {REPORT_B_CRIT: sf.get("b_crit"), REPORT_S_MIN: sf.get("s_min"), REPORT_LR_ALPHA: lf.get("alpha"),
                                 REPORT_LR_ALPHA_CI_LOW: lf.get("ci_low"), REPORT_LR_ALPHA_CI_HIGH: lf.get("ci_high")})
    say = lambda text: session.out(f"[report {name}] {text}")  # noqa: E731
    say(f"{summary['trials']} trials over batch sizes {[r['batch_size'] for r in summary['per_batch_size']]}")
    say(f"B_crit {sf['b_crit']:.0f}, S_min {sf['s_min']:.0f} steps" if "b_crit" in sf else f"B_crit: {sf['error']}")
    say(f"lr exponent {lf['alpha']:.2f} ({int(100 * lf['confidence'])}% CI {lf['ci_low']:.2f} .. {lf['ci_high']:.2f})" if "alpha" in lf
        else f"lr exponent: {lf['error']}")
    say(f"B_simple {rng[0]:.0f} .. {rng[1]:.0f}" if rng else "B_simple: not measured")
    if "tokens" in summary:
        _say_tokens(say, summary["tokens"])
    say(f"{out / REPORT_HTML}" + (f" (also in MLflow run {parent}, artifacts report/)" if parent else ""))
    return 0


def _say_tokens(say, s: dict) -> None:
    """The language-model lines of ``report``: B_crit per target and B_simple per B, in tokens."""
    if "fits" not in s:
        say(f"tokens: {s['error']}")
        return
    for f in s["fits"]:
        ci = f.get("b_crit_tokens_ci") or [None, None]
        say(f"loss target {f['target']:.4g}: B_crit {f['b_crit_tokens']:,.0f} tokens ({f['b_crit']:.1f} sequences), 95% CI "
            + (f"{ci[0]:,.0f} .. {ci[1]:,.0f}" if ci[0] is not None else "none") if "b_crit" in f else f"loss target {f['target']:.4g}: {f['error']}")
    e = s["exponent"]
    say(f"B_crit vs target loss: slope {e['slope']:.2f}, alpha_B {e['alpha_b']:.2f}; {e['trend']}" if "slope" in e else f"B_crit exponent: {e['error']}")
    say("B_simple median per B (tokens, diagnostic): " + ", ".join(
        f"B={r['batch_size']} ({r['batch_tokens']:,} tokens): " + (f"{r['b_simple_tokens_median']:,.0f}" if r["b_simple_tokens_median"] is not None else "-")
        for r in s["per_batch_size"]))
    for w in s["warnings"]:
        say(f"warning: {w}")


def update_front(study: optuna.Study, tracker: "Tracker", parent: str, reports: Path) -> None:
    """The Pareto front on the parent run: a table, its trials as a tag and, from 2 front trials on, Optuna's plot."""
    rows = [r for r in trial_rows(study) if r["trial"] in {t.number for t in pareto(study)}]
    tracker.artifacts(parent, {PARETO_CSV: to_csv(rows)})
    tracker.tags(parent, pareto_tags([r["trial"] for r in rows]))
    if front_plot(study, reports / PARETO_DIR / PARETO_PNG):
        tracker.artifact_dir(parent, reports / PARETO_DIR, PARETO_DIR)


def front_plot(study: optuna.Study, path: Path) -> bool:
    """Optuna's Pareto-front plot as a PNG; False while the front has fewer than 2 trials."""
    if len(pareto(study)) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" note
        ax = ovm.plot_pareto_front(study, target_names=objectives(study))
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.set_size_inches(6, 4.5)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return True
