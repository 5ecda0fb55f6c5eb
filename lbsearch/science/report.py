"""``lbsearch report STUDY``: the batch-scaling report of a finished (or running) study.

One HTML page with PNGs, also logged to the study's parent MLflow run (under ``report/``):

- best metric vs B;
- the best learning rate vs B, with the fitted exponent α of lr* ∝ B^α and its confidence interval;
- steps-to-target vs B (the fewest over each B's trials) with the fit S = S_min (1 + B_crit / B);
- the gradient noise scale B_simple of the trials beside the fitted B_crit;
- Optuna's parameter importances and parallel coordinates;
- language-model studies: B in sequences and tokens, B_crit at several loss targets with bootstrap
  intervals, its exponent against the loss, and B_simple in tokens (``lbsearch.science.lm_report``).
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lbsearch.science.scaling import fit_power, fit_steps
from lbsearch.spec import CONFIG_ATTR, LM_TASKS, METRIC_ATTR, experiment_model, make_plan

__all__ = ["REPORT_HTML", "SUMMARY_JSON", "FIGURES", "TrialPoint", "collect", "summarize", "write_report"]

REPORT_HTML, SUMMARY_JSON = "index.html", "summary.json"
"""The report's page, beside its PNGs, and its figures as JSON (the fits, the best trial of each batch size), in the report folder."""
FIGURES = BEST_PNG, LR_PNG, STEPS_PNG, NOISE_PNG, IMPORTANCES_PNG, PARALLEL_PNG = (
    "best_metric_vs_batch.png", "lr_vs_batch.png", "steps_to_target.png", "noise_scale.png", "importances.png", "parallel_coordinates.png")
"""The report's figures (each with a paragraph that reads it, ``_readings``); a language model's come from ``lm_figures``."""


@dataclass(frozen=True)
class TrialPoint:
    number: int
    state: str
    batch_size: int
    lr: float
    value: float | None
    steps_to_target: int | None
    b_simple: float | None


def collect(study: optuna.Study) -> list[TrialPoint]:
    """Complete and pruned trials with what the report needs (B and lr from the config that ran)."""
    points, metric = [], study.user_attrs.get(METRIC_ATTR, "accuracy")
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if CONFIG_ATTR not in t.user_attrs:
            continue
        raw = json.loads(t.user_attrs[CONFIG_ATTR])
        plan = make_plan(experiment_model(raw).model_validate(raw))
        points.append(TrialPoint(
            number=t.number, state=t.state.name.lower(), batch_size=plan.batch_size, lr=plan.lr,
            value=t.user_attrs.get(f"validation_{metric}", t.values[0]) if t.state == TrialState.COMPLETE else None, steps_to_target=t.user_attrs.get("steps_to_target"),
            b_simple=t.user_attrs.get("b_simple"),
        ))
    return points


def summarize(points: list[TrialPoint], maximize: bool) -> dict[str, Any]:
    """Per-B table and the fits; a fit that the data cannot support is reported as its reason."""
    by_b: dict[int, list[TrialPoint]] = defaultdict(list)
    for p in points:
        by_b[p.batch_size].append(p)
    sign = 1 if maximize else -1
    rows = []
    for b in sorted(by_b):
        done = [p for p in by_b[b] if p.value is not None]
        best = max(done, key=lambda p: sign * p.value) if done else None
        hit = [p.steps_to_target for p in by_b[b] if p.steps_to_target is not None]
        noise = [p.b_simple for p in by_b[b] if p.b_simple is not None]
        rows.append({"batch_size": b, "trials": len(by_b[b]), "complete": len(done), "best_value": best.value if best else None,
                     "best_lr": best.lr if best else None, "best_trial": best.number if best else None,
                     "steps_to_target": min(hit) if hit else None, "samples_to_target": min(hit) * b if hit else None,
                     "b_simple_median": sorted(noise)[len(noise) // 2] if noise else None})
    out: dict[str, Any] = {"per_batch_size": rows}
    reached = [(r["batch_size"], r["steps_to_target"]) for r in rows if r["steps_to_target"] is not None]
    try:
        f = fit_steps(*zip(*reached)) if reached else fit_steps([], [])
        out["steps_fit"] = {"s_min": f.s_min, "b_crit": f.b_crit, "e_min": f.e_min, "n": f.n}
    except ValueError as err:
        out["steps_fit"] = {"error": str(err)}
    tuned = [(r["batch_size"], r["best_lr"]) for r in rows if r["best_lr"] is not None]
    try:
        f = fit_power(*zip(*tuned)) if tuned else fit_power([], [])
        out["lr_fit"] = {"alpha": f.alpha, "ci_low": f.alpha_low, "ci_high": f.alpha_high, "confidence": f.confidence, "coef": f.coef, "n": f.n}
    except ValueError as err:
        out["lr_fit"] = {"error": str(err)}
    noise = [p.b_simple for p in points if p.b_simple is not None]
    out["b_simple_range"] = [min(noise), max(noise)] if noise else None
    return out


class _Figures:
    """The report's PNGs under ``out``: each ``plot_*`` draws one and records (file, caption)."""

    def __init__(self, points: list[TrialPoint], summary: dict[str, Any], metric: str, target: float | None, out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        self.points, self.summary, self.metric, self.target, self.out = points, summary, metric, target, out
        self.rows = summary["per_batch_size"]
        self.best = [r for r in self.rows if r["best_value"] is not None]
        self.done = [p for p in points if p.value is not None]
        self.made: list[tuple[str | None, str]] = []

    def _axes(self):
        import matplotlib.pyplot as plt

        return plt.subplots(figsize=(5.5, 3.8))

    def save(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        sizes = [r["batch_size"] for r in self.rows]
        for ax in fig.axes:  # the batch sizes themselves as ticks, no crowded minor labels
            if ax.get_yscale() == "log" and not (math.isfinite(ax.dataLim.y0) and ax.dataLim.y1 > 0):
                ax.set_yscale("linear")  # nothing measured (no target reached, no noise scale): an empty log axis cannot be laid out
            if ax.get_xscale() == "log" and sizes:
                ax.set_xticks(sizes, [str(b) for b in sizes])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        plt.close(fig)
        self.made.append((name, caption))

    def plot_metric(self) -> None:
        fig, ax = self._axes()
        ax.scatter([p.batch_size for p in self.done], [p.value for p in self.done], s=14, alpha=0.5, label="complete trials")
        ax.plot([r["batch_size"] for r in self.best], [r["best_value"] for r in self.best], "o-", color="C3", label="best per B")
        if self.target is not None:
            ax.axhline(self.target, ls=":", color="gray", label=f"target {self.target:g}")
        ax.set(xscale="log", xlabel="effective batch size B (samples per optimizer step)", ylabel=f"validation {self.metric}", title=f"Best validation {self.metric} at each batch size")
        ax.legend(fontsize=8)
        self.save(fig, BEST_PNG, f"Best validation {self.metric} at each batch size (dots: every complete trial).")

    def plot_lr(self) -> None:
        import numpy as np

        fig, ax = self._axes()
        ax.scatter([p.batch_size for p in self.done], [p.lr for p in self.done], c=[p.value for p in self.done], s=16, cmap="viridis", alpha=0.8)
        ax.plot([r["batch_size"] for r in self.best], [r["best_lr"] for r in self.best], "o", color="C3", ms=8, mfc="none", label="best lr per B")
        lf = self.summary["lr_fit"]
        if "alpha" in lf:
            xs = np.geomspace(min(r["batch_size"] for r in self.best), max(r["batch_size"] for r in self.best), 50)
            ax.plot(xs, lf["coef"] * xs ** lf["alpha"], color="C3", label=f"lr ∝ B^{lf['alpha']:.2f} [{lf['ci_low']:.2f}, {lf['ci_high']:.2f}]")
        ax.set(xscale="log", yscale="log", xlabel="effective batch size B (samples per optimizer step)", ylabel="peak learning rate (after scaling)", title="Best learning rate at each batch size")
        ax.legend(fontsize=8)
        self.save(fig, LR_PNG, "Learning rate of every complete trial (colour: metric); circles: the best per B; line: the power-law fit "
                  f"with its {int(100 * lf.get('confidence', 0.95))}% interval on the exponent.")

    def plot_steps(self) -> None:
        import numpy as np

        fig, ax = self._axes()
        hit = [r for r in self.rows if r["steps_to_target"] is not None]
        ax.plot([r["batch_size"] for r in hit], [r["steps_to_target"] for r in hit], "o", color="C0", label="fewest steps to target")
        sf = self.summary["steps_fit"]
        if "b_crit" in sf:
            xs = np.geomspace(min(r["batch_size"] for r in self.rows), max(r["batch_size"] for r in self.rows), 80)
            ax.plot(xs, sf["s_min"] * (1 + sf["b_crit"] / xs), color="C1", label=f"S_min(1+B_crit/B): S_min {sf['s_min']:.0f}, B_crit {sf['b_crit']:.0f}")
            ax.plot(xs, sf["s_min"] * sf["b_crit"] / xs, ls=":", color="gray", label="perfect scaling")
            ax.axvline(sf["b_crit"], ls="--", color="C1", lw=0.8)
            ax.set_ylim(max(1, 0.5 * min(r["steps_to_target"] for r in hit)), 2 * max(r["steps_to_target"] for r in hit))
        ax.set(xscale="log", yscale="log", xlabel="effective batch size B (samples per optimizer step)", ylabel="optimizer steps to reach the target", title="Steps to reach the target vs batch size")
        ax.legend(fontsize=8)
        self.save(fig, STEPS_PNG, "Optimizer steps to first reach the target (the best trial of each B) and the fit S = S_min (1 + B_crit/B).")

    def plot_noise(self) -> None:
        noisy = [p for p in self.points if p.b_simple is not None]
        sf = self.summary["steps_fit"]
        fig, ax = self._axes()
        ax.scatter([p.batch_size for p in noisy], [p.b_simple for p in noisy], s=16, label="B_simple (trial's last evaluation)")
        if "b_crit" in sf:
            ax.axhline(sf["b_crit"], color="C1", ls="--", label=f"fitted B_crit {sf['b_crit']:.0f}")
        ax.set(xscale="log", yscale="log", xlabel="effective batch size B (samples per optimizer step)", ylabel="B_simple (samples)", title="Gradient noise scale B_simple vs fitted B_crit")
        ax.legend(fontsize=8)
        self.save(fig, NOISE_PNG, "The gradient noise scale B_simple = tr(Σ)/|G|² measured in each trial, beside the B_crit of the steps fit.")

    def plot_optuna(self, study: optuna.Study) -> None:
        from optuna.visualization import matplotlib as ovm

        for name, plot, title, caption in (
            (IMPORTANCES_PNG, ovm.plot_param_importances, "Parameter importances", "Optuna's parameter importances (fANOVA)."),
            (PARALLEL_PNG, ovm.plot_parallel_coordinate, "Parallel coordinates", "Optuna's parallel coordinates of the complete trials."),
        ):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" notes and fANOVA remarks
                    ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. fewer than 2 complete trials
                self.made.append((None, f"{caption} Not available: {err}"))
                continue
            ax = ax.flat[0] if hasattr(ax, "flat") else ax
            ax.set_title("", loc="left")  # Optuna's own title, left-aligned on the importances
            ax.set_title(f"{title}: validation {self.metric}", y=1.03)
            ax.figure.set_size_inches(7, 4)
            self.save(ax.figure, name, caption)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def _readings(summary: dict[str, Any], metric: str, target: float | None) -> dict[str, str]:
    """One paragraph per figure that says what it shows for this study, from the summary's numbers."""
    rows, sf, lf, rng = summary["per_batch_size"], summary["steps_fit"], summary["lr_fit"], summary["b_simple_range"]
    best = [r for r in rows if r["best_value"] is not None]
    out = {}
    if best:
        lo, hi = min(best, key=lambda r: r["best_value"]), max(best, key=lambda r: r["best_value"])
        hit = sum(r["steps_to_target"] is not None for r in rows)
        out[BEST_PNG] = (
            f"Over {len(rows)} batch sizes ({rows[0]['batch_size']} to {rows[-1]['batch_size']}), the best validation {metric} lies between "
            f"{lo['best_value']:.4g} (B = {lo['batch_size']}) and {hi['best_value']:.4g} (B = {hi['batch_size']})"
            + (f"; {hit} of {len(rows)} batch sizes reached the target {target:g}" if target is not None else "") + ". "
            "A flat curve says large batches cost no quality at this budget; a fall at large B says their fewer steps did not converge "
            "in the budget of samples, or their learning rate is not yet tuned.")
    out[LR_PNG] = (
        f"The best learning rate scales as B^α with α = {lf['alpha']:.2f} ({int(100 * lf['confidence'])}% interval {lf['ci_low']:.2f} to "
        f"{lf['ci_high']:.2f}, from {lf['n']} batch sizes). α near 0.5 is the square-root rule, near 1 the linear rule; an interval "
        "that holds both means this study cannot tell them apart: more trials per batch size narrow it."
        if "alpha" in lf else f"No learning-rate fit: {lf['error']}.")
    out[STEPS_PNG] = (
        f"The fit S = S_min (1 + B_crit / B) gives S_min ≈ {sf['s_min']:.0f} steps and B_crit ≈ {sf['b_crit']:.0f}. Below B_crit, doubling B "
        "nearly halves the steps to the target (the dotted line is perfect scaling); above it, each doubling saves less and costs "
        "more samples (McCandlish et al., 2018). B_crit is the largest batch that still uses its samples well."
        if "b_crit" in sf else f"No steps-to-target fit: {sf['error']}.")
    out[NOISE_PNG] = (
        f"The gradient noise scale B_simple, measured from gradient statistics alone, ranges from {rng[0]:.0f} to {rng[1]:.0f} samples; "
        "it predicts the critical batch size within a small factor and grows as training proceeds. Close agreement with the fitted "
        "B_crit is evidence that the fit is right." if rng else "B_simple was not measured (train.noise_scale off, or no accumulation).")
    out[IMPORTANCES_PNG] = (f"How much of the spread in validation {metric} each searched parameter explains (fANOVA over the "
                              "complete trials). A parameter near zero can be fixed in the next study.")
    out[PARALLEL_PNG] = (f"Each line is one complete trial, through its parameter values, coloured by validation {metric}: "
                                       "bundles of good lines show the ranges worth keeping.")
    return out


COLUMNS = {"batch_size": "B (samples / step)", "trials": "trials", "complete": "complete", "best_value": "best value",
           "best_lr": "best lr", "best_trial": "best trial", "steps_to_target": "steps to target", "samples_to_target": "samples to target",
           "b_simple_median": "B_simple (median, samples)"}


def _html(name: str, metric: str, target: float | None, summary: dict[str, Any], figs: list[tuple[str | None, str]], extra: str = "") -> str:
    sf, lf, rng = summary["steps_fit"], summary["lr_fit"], summary["b_simple_range"]
    facts = [
        ("critical batch size B_crit", f"{sf['b_crit']:.0f} (S_min {sf['s_min']:.0f} steps, E_min {sf['e_min']:.0f} samples, {sf['n']} batch sizes)" if "b_crit" in sf else sf["error"]),
        ("lr exponent α (lr* ∝ B^α)", f"{lf['alpha']:.2f}, {int(100 * lf['confidence'])}% CI [{lf['ci_low']:.2f}, {lf['ci_high']:.2f}] ({lf['n']} batch sizes)" if "alpha" in lf else lf["error"]),
        ("B_simple range", f"{rng[0]:.0f} – {rng[1]:.0f} samples" if rng else "not measured"),
        ("target", f"validation {metric} {target:g}" if target is not None else "none set (metric.target)"),
    ]
    head = "".join(f"<th>{html.escape(v)}</th>" for v in COLUMNS.values())
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in COLUMNS) + "</tr>" for r in summary["per_batch_size"])
    read = _readings(summary, metric, target)
    imgs = "".join(f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption><b>{html.escape(c)}</b> {html.escape(read.get(f, ""))}'
                   "</figcaption></figure>" if f else f"<p><em>{html.escape(c)}</em></p>" for f, c in figs)
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lbsearch report: {html.escape(name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f3f3f3}}
dt{{font-weight:bold;margin-top:.4em}}figure{{display:inline-block;vertical-align:top;width:520px;margin:1em 1em 1em 0}}
img{{max-width:520px;border:1px solid #eee}}figcaption{{font-size:.92em}}</style></head><body>
<h1>Batch-scaling report: {html.escape(name)}</h1>
<p>Each batch size B (the effective batch: samples per optimizer step) was tuned on its own, and every trial saw the same number
of samples, so the batch sizes are compared at equal data. The figures below read the study's complete trials; the numbers are
in <code>summary.json</code> beside this page.</p><dl>{dl}</dl>{extra}
<h2>Per batch size</h2><table><tr>{head}</tr>{body}</table><h2>Figures</h2>{imgs}</body></html>
"""


def write_report(study: optuna.Study, out: Path, targets: list[float] | None = None) -> dict[str, Any]:
    """Write the page (``REPORT_HTML``), the PNGs and summary.json under ``out``; return the summary. A language-model
    study also gets the token-level analysis at several loss ``targets`` (``lbsearch.science.lm_report``)."""
    configs = [json.loads(t.user_attrs[CONFIG_ATTR]) for t in study.get_trials(deepcopy=False) if CONFIG_ATTR in t.user_attrs]
    metric = study.user_attrs.get(METRIC_ATTR, "accuracy")
    target = configs[-1]["metric"].get("target") if configs else None
    points = collect(study)
    summary = summarize(points, study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
    summary |= {"study": study.study_name, "metric": metric, "target": target, "trials": len(points)}
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(points, summary, metric, target, out)
    for plot in (figs.plot_metric, figs.plot_lr, figs.plot_steps, figs.plot_noise):
        plot()
    figs.plot_optuna(study)
    extra = ""
    if configs and configs[-1].get("task") in LM_TASKS:
        import lbsearch.science.lm_figures as lm_figures
        import lbsearch.science.lm_report as lm_report

        curves = lm_report.curves(study)
        summary["tokens"] = lm_report.analyse(curves, targets)
        extra = lm_figures.html_section(summary["tokens"]) + "".join(
            f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
            for f, c in (lm_figures.draw(curves, summary["tokens"], out) if curves else []))
    (out / REPORT_HTML).write_text(_html(study.study_name, metric, target, summary, figs.made, extra))
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v) + "\n")
    return summary
