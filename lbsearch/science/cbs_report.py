"""The critical-batch-size report of a branch study: its figures (matplotlib), ``cbs.json`` and an HTML page.

Figure 1, per branch point: the loss after Δ against k·B, the mean over seeds with their range, the band of ε
above the k = 1 branch and CBS(t) marked. Figure 2: CBS(t) against tokens trained, with its bootstrap interval,
beside B_simple measured at the same points (the k = 1 branches' noise scale over their Δ) and the ladder's
B_crit where there is one, and the fitted trend."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CBS_HTML", "CBS_JSON", "CBS_FIGURES", "write_cbs_report"]

CBS_HTML, CBS_JSON = "index.html", "cbs.json"
"""The CBS report's page, and its figures as JSON (CBS(t) with intervals, ε, the trend), beside its PNGs."""
CBS_FIGURES = CBS_OVER_TRAINING_PNG, CBS_LOSSES_PNG = "cbs_over_training.png", "cbs_losses.png"
"""The CBS report's figures: CBS(t) over training, and each branch's loss against k."""


def _plt():
    """matplotlib's pyplot on the Agg backend, imported when a figure is drawn (not on the CLI's start-up path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _losses_figure(summary: dict[str, Any], unit: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in summary["points"]:
        ks = p["per_k"]
        x, y = [r["batch"] for r in ks], [r["mean"] for r in ks]
        err = [[r["mean"] - r["min"] for r in ks], [r["max"] - r["mean"] for r in ks]]
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"t = {p['point']:,.0f} {unit}: CBS {p['cbs']:,.0f}")
        ax.axhspan(p["reference_loss"], p["reference_loss"] + summary["eps"], color=line[0].get_color(), alpha=0.12)
        ax.axvline(p["cbs"], color=line[0].get_color(), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"branch batch k·B ({unit})")
    ax.set_ylabel("validation loss after Δ (mean over seeds, range)")
    ax.set_title(f"loss after Δ vs k·B; band: within ε = {summary['eps']:.3g} of k = 1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _over_training_figure(summary: dict[str, Any], unit: str, b_simple: dict[float, float], b_crit: float | None, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = summary["points"]
    t = np.array([p["point"] for p in pts], float)
    c = np.array([p["cbs"] for p in pts], float)
    lo, hi = np.array([p["cbs_ci"][0] for p in pts]), np.array([p["cbs_ci"][1] for p in pts])
    ax.errorbar(t, c, yerr=[c - lo, hi - c], marker="o", capsize=4, label=f"CBS(t) ({int(100 * summary['confidence'])}% bootstrap interval)")
    tr = summary["trend"]
    if "slope" in tr:
        grid = np.geomspace(t.min(), t.max(), 50)
        ax.plot(grid, np.exp(tr["intercept"]) * grid ** tr["slope"], "--", label=f"fit CBS ∝ t^{tr['slope']:.2f}")
    known = sorted((k, v) for k, v in b_simple.items() if v is not None)
    if known:
        ax.plot([k for k, _ in known], [v for _, v in known], "s", label="B_simple (k = 1 branches, over Δ)")
    if b_crit:
        ax.axhline(b_crit, color="gray", ls=":", label=f"ladder B_crit {b_crit:,.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel(f"{unit} trained by the reference (branch point t)")
    ax.set_ylabel(f"batch ({unit})")
    ax.set_title("critical batch size over training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(summary: dict[str, Any], unit: str, b_simple: dict[float, float]) -> str:
    head = f"<tr><th>t ({unit})</th><th>k</th><th>k·B ({unit})</th><th>seeds</th><th>mean loss</th><th>std</th><th>CBS(t)</th><th>interval</th><th>B_simple</th></tr>"
    rows = []
    for p in summary["points"]:
        bs = b_simple.get(p["point"])
        for i, r in enumerate(p["per_k"]):
            std, simple = "-" if r["std"] is None else f"{r['std']:.4f}", "-" if bs is None else f"{bs:,.0f}"
            cbs = (f"<td>{'≤ ' if p['at_k1'] else '≥ ' if p['at_largest_k'] else ''}{p['cbs']:,.0f}</td><td>{p['cbs_ci'][0]:,.0f} .. {p['cbs_ci'][1]:,.0f}</td>"
                   f"<td>{simple}</td>") if i == 0 else "<td></td><td></td><td></td>"
            rows.append(f"<tr><td>{p['point']:,.0f}</td><td>{r['k']:g}</td><td>{r['batch']:,.0f}</td><td>{r['seeds']}</td><td>{r['mean']:.4f}</td>"
                        f"<td>{std}</td>{cbs}</tr>")
    return f"<table border=1 cellpadding=3>{head}{''.join(rows)}</table>"


def write_cbs_report(summary: dict[str, Any], out: Path, *, study: str, reference: str, unit: str = "tokens", delta: float | None = None,
                     b_simple: dict[float, float] | None = None, b_crit: float | None = None, machine: str = "") -> Path:
    """Write ``cbs.json``, the two figures and the page ``CBS_HTML`` into ``out``; returns the page's path.

    Args:
        summary: ``cbs_table``'s result.
        b_simple: B_simple in ``unit`` at each branch point (None where not measured).
        b_crit: the batch-ladder report's B_crit in ``unit``, if the experiment has one.
    """
    out.mkdir(parents=True, exist_ok=True)
    b_simple = b_simple or {}
    _losses_figure(summary, unit, out / CBS_LOSSES_PNG)
    _over_training_figure(summary, unit, b_simple, b_crit, out / CBS_OVER_TRAINING_PNG)
    facts = {"study": study, "reference": reference, "unit": unit, "delta": delta, "b_crit": b_crit, "machine": machine,
             "b_simple": {str(k): v for k, v in b_simple.items()}} | summary
    (out / CBS_JSON).write_text(json.dumps(facts, indent=1))
    tr = summary["trend"]
    trend = f"CBS ∝ t^{tr['slope']:.2f}: {tr['verdict']}" if "slope" in tr else tr["error"]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in summary["warnings"])
    page = (f"<html><head><meta charset='utf-8'><title>CBS {html.escape(study)}</title></head><body>"
            f"<h1>Critical batch size over training: {html.escape(study)}</h1>"
            f"<p>Branches of {html.escape(reference)}, each trained Δ = {delta or 0:,.0f} {unit} from its branch point; "
            f"ε = {summary['eps']:.4g} ({html.escape(summary['eps_how'])}); {summary['n_boot']} bootstrap replicates over seeds. "
            f"{html.escape(machine)}</p><p><b>Trend:</b> {html.escape(trend)}</p>"
            + (f"<ul>{warn}</ul>" if warn else "")
            + f"<img src='{CBS_OVER_TRAINING_PNG}'><img src='{CBS_LOSSES_PNG}'>{_table(summary, unit, b_simple)}"
            + (f"<p>Ladder B_crit: {b_crit:,.0f} {unit}.</p>" if b_crit else "") + "</body></html>")
    (out / CBS_HTML).write_text(page)
    return out / CBS_HTML
