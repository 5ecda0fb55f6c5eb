"""The figures and the HTML section of a language-model study's report (``lm_report.analyse``'s numbers)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from lbsearch.science.lm_report import Curve

__all__ = ["LM_FIGURES", "draw", "html_section"]

LM_FIGURES = LM_CURVES_PNG, LM_STEPS_PNG, LM_B_CRIT_PNG = "lm_curves.png", "lm_steps_to_target.png", "lm_b_crit_vs_loss.png"
"""A language model's report figures: validation loss against tokens, tokens to each target, B_crit against the target loss."""


def _save(fig, out: Path, name: str, sizes: list[int] | None = None) -> str:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    for ax in fig.axes:
        if sizes and ax.get_xscale() == "log":
            ax.set_xticks(sizes, [str(b) for b in sizes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _plot_curves(cs: list[Curve], s: dict[str, Any], out: Path) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sizes = sorted({c.batch_size for c in cs})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    for c in cs:
        i = sizes.index(c.batch_size)
        ax.plot(c.tokens, c.loss, color=colours[i], lw=0.8, alpha=0.7, label=f"B = {c.batch_size}" if c is next(d for d in cs if d.batch_size == c.batch_size) else None)
    for t in s.get("targets", []):
        ax.axhline(t, ls=":", color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="tokens seen", ylabel="validation loss (nats / token)", title="Validation loss of every trial; dotted: the targets")
    ax.legend(fontsize=7)
    return _save(fig, out, LM_CURVES_PNG), "Validation loss against tokens seen, every trial (colour: batch size in sequences); dotted lines: the loss targets."


def _plot_steps(s: dict[str, Any], out: Path) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    rows = s["per_batch_size"]
    sizes = np.array([r["batch_size"] for r in rows], dtype=float)
    xs = np.geomspace(sizes.min(), sizes.max(), 80)
    for j, f in enumerate(s["fits"]):
        steps = [r["steps_to_target"][j] for r in rows]
        ok = [(b, v) for b, v in zip(sizes, steps) if v is not None]
        ax.plot(*zip(*ok), "o", color=f"C{j}", ms=4) if ok else None
        if "b_crit" in f:
            ax.plot(xs, f["s_min"] * (1 + f["b_crit"] / xs), color=f"C{j}", lw=1,
                    label=f"loss {f['target']:.3g}: B_crit {f['b_crit_tokens']:,.0f} tokens")
    ax.set(xscale="log", yscale="log", xlabel="batch size B (sequences per optimizer step)", ylabel="optimizer steps to the target",
           title="Steps to each target: envelope over lr and seeds")
    ax.legend(fontsize=7)
    return _save(fig, out, LM_STEPS_PNG, [int(b) for b in sizes]), (
        "Steps to reach each loss target (the fewest over each B's learning rates and seeds) and the fits S = S_min (1 + B_crit / B).")


def _plot_b_crit(s: dict[str, Any], out: Path) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    fits = [f for f in s["fits"] if "b_crit" in f]
    if fits:
        loss = np.array([f["target"] for f in fits])
        bc = np.array([f["b_crit_tokens"] for f in fits])
        lo = np.array([f["b_crit_tokens_ci"][0] if f["b_crit_tokens_ci"][0] is not None else v for f, v in zip(fits, bc)])
        hi = np.array([f["b_crit_tokens_ci"][1] if f["b_crit_tokens_ci"][1] is not None else v for f, v in zip(fits, bc)])
        ax.errorbar(loss, bc, yerr=[np.maximum(bc - lo, 0), np.maximum(hi - bc, 0)], fmt="o", color="C1", capsize=3,
                    label=f"B_crit (measurement), {_pct(s)} bootstrap interval")
        e = s["exponent"]
        if "slope" in e:
            xs = np.geomspace(loss.min(), loss.max(), 20)
            coef = np.exp(np.mean(np.log(bc) - e["slope"] * np.log(loss)))
            ax.plot(xs, coef * xs ** e["slope"], color="C1", lw=1, label=f"B_crit ∝ L^{e['slope']:.2f} (α_B = {e['alpha_b']:.2f})")
    noise = [r["b_simple_tokens_median"] for r in s["per_batch_size"] if r["b_simple_tokens_median"] is not None]
    if noise:
        ax.axhspan(min(noise), max(noise), color="C0", alpha=0.15, label="B_simple medians per B (diagnostic)")
    ax.set(xscale="log", yscale="log", xlabel="target validation loss L (nats / token)", ylabel="tokens per batch",
           title="Critical batch size against the target loss")
    ax.legend(fontsize=7)
    return _save(fig, out, LM_B_CRIT_PNG), (
        "B_crit (in tokens) at each loss target with its bootstrap interval and the power law B_crit = B*·L^(−1/α_B); "
        "shaded: the range of the per-B medians of B_simple.")


def draw(cs: list[Curve], s: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """The language-model figures under ``out``: (file, caption) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    made = [_plot_curves(cs, s, out)]
    if "fits" in s:
        made += [_plot_steps(s, out), _plot_b_crit(s, out)]
    return made


def _f(v: Any, fmt: str = "{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ci(pair: list[float | None], fmt: str = "{:,.0f}") -> str:
    return "–" if pair is None or pair[0] is None else f"[{fmt.format(pair[0])}, {fmt.format(pair[1])}]"


def _tables(s: dict[str, Any]) -> str:
    targets, L = s["targets"], s["seq_len"]
    head = ["B (sequences)", f"B_tokens (× {L})", "trials", "seeds"] + [f"tokens to {t:.3g} (lr)" for t in targets] + ["B_simple median (tokens)"]
    body = ""
    for r in s["per_batch_size"]:
        cells = [str(r["batch_size"]), f"{r['batch_tokens']:,}", str(r["trials"]), str(r["seeds"])]
        cells += [f"{_f(v)} ({_f(lr, '{:.3g}')})" for v, lr in zip(r["tokens_to_target"], r["envelope_lr"])]
        cells.append(_f(r["b_simple_tokens_median"]) + (f" ({r['b_simple_trials']} trials)" if r["b_simple_trials"] else ""))
        body += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
    sizes = [r["batch_size"] for r in s["per_batch_size"]]
    fhead = ["target loss", "B_crit (sequences)", "B_crit (tokens)", f"{_pct(s)} interval (tokens)", "S_min (steps)", "E_min (tokens)",
             "relative residuals at B = " + ", ".join(map(str, sizes))]
    fbody = ""
    for f in s["fits"]:
        if "b_crit" not in f:
            fbody += f"<tr><td>{f['target']:.4g}</td><td colspan=6>{html.escape(f['error'])}</td></tr>"
            continue
        res = ", ".join("–" if v is None else f"{v:+.2f}" for v in f["residuals"])
        cells = [f"{f['target']:.4g}", f"{f['b_crit']:.1f}", f"{f['b_crit_tokens']:,.0f}", _ci(f["b_crit_tokens_ci"]),
                 f"{f['s_min']:.1f} {_ci(f['s_min_ci'], '{:.1f}')}", f"{f['e_min_tokens']:,.0f}", res]
        fbody += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
    row = lambda cells: "".join(f"<th>{html.escape(c)}</th>" for c in cells)  # noqa: E731
    return (f"<h3>Per batch size (envelope: fewest tokens to each target over the B's learning rates and seeds)</h3>"
            f"<table><tr>{row(head)}</tr>{body}</table><h3>Fits S = S_min (1 + B_crit / B) at each target</h3>"
            f"<table><tr>{row(fhead)}</tr>{fbody}</table>")


def _pct(s: dict[str, Any]) -> str:
    """The intervals' coverage as the analysis computed them (``bootstrap.confidence``), e.g. ``95%``."""
    return f"{100 * s['bootstrap']['confidence']:g}%"


def _exponent_text(e: dict[str, Any], pct: str) -> str:
    if "slope" not in e:
        return f"No exponent: {e['error']}."
    alpha = f"α_B = {e['alpha_b']:.2f}" if e["alpha_b"] is not None else "α_B undefined (slope 0)"
    ci = f" ({pct} bootstrap interval {e['alpha_b_ci'][0]:.2f} to {e['alpha_b_ci'][1]:.2f})" if "alpha_b_ci" in e else " (no interval: the slope's interval includes 0 or the fit failed)"
    return (f"log B_crit against log L has slope {e['slope']:.2f}, {pct} interval {_ci(e['slope_ci'], '{:.2f}')}: {alpha}{ci}; "
            f"Kaplan et al. (2020) found α_B ≈ {e['kaplan_alpha_b']}. {e['trend'][0].upper() + e['trend'][1:]}.")


def html_section(s: dict[str, Any]) -> str:
    """The report's language-model section: how it was computed, the tables, the exponent and the warnings."""
    if "fits" not in s:
        return f"<h2>Language model: batch scaling in tokens</h2><p>Not available: {html.escape(s['error'])}</p>"
    boot = s["bootstrap"]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in s["warnings"]) or "<li>none</li>"
    return f"""<h2>Language model: batch scaling in tokens</h2>
<p>B is stated in sequences of {s['seq_len']} tokens and in tokens (B_tokens = B × {s['seq_len']}). Each trial's evaluation curve
(validation loss at the tokens it had seen when it evaluated) gives its tokens to each target loss, {html.escape(s['interpolation'])};
steps to target = tokens / B_tokens. At each B the envelope takes the trial with the fewest, over the learning rates and seeds tried.
S = S_min (1 + B_crit / B) is fitted at each target, and log B_crit against log L over the targets. Intervals: {int(100 * boot['confidence'])}%
percentile bootstrap over seeds and learning rates ({boot['resamples']} resamples, seed {boot['seed']}: each B's trials resampled with
replacement, envelope and fits recomputed). Targets: {', '.join(f'{t:.4g}' for t in s['targets'])}.</p>
<p><b>Exponent.</b> {html.escape(_exponent_text(s['exponent'], _pct(s)))}</p>
<p><b>B_simple and B_crit are different things.</b> B_simple = tr(Σ)/|G|² is a diagnostic computed from gradient statistics during
training; B_crit is a measurement, from steps to a target. B_simple predicts B_crit under SGD-like assumptions (McCandlish et al.
2018); Merrill et al. (2025) find that B_simple can underestimate the critical batch size under Adam, by orders of magnitude.</p>
{_tables(s)}<h3>Warnings</h3><ul>{warn}</ul>
"""
