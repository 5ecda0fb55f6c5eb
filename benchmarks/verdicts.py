"""Every goal of the speed benchmarks judged again on the robust statistic, from the JSONs they wrote.

The scripts now judge their goals themselves (``_stats.verdict``: the median of the pairwise ratios
of runs taken side by side, and every pair); results written before they did are judged here the
same way, from the runs each JSON records, on every variant it measured. A single pair (a whole
study with the levers off, then on) is judged against the spread of repeated runs of the same
configuration where there are some, and said to be one run where there are none.

    python benchmarks/verdicts.py           # reads benchmarks/results/*.json, writes benchmarks/results/verdicts.json

Nothing is measured here: the figures are those of the JSONs named in each entry, with their machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _stats import judged, pairwise, spread

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def source(name: str) -> dict[str, Any]:
    """Where a JSON's figures were measured, as it records it."""
    m = load(name).get("machine", {})
    keep = ("cpu", "cpu_capability", "cpu_fast_bf16", "device", "torch", "date", "load_average_at_start", "load_average_at_end")
    return {"json": f"benchmarks/results/{name}"} | {k: m[k] for k in keep if k in m}


def runs(d: dict[str, Any], key: str) -> list[float]:
    return d[key]["runs"]


def ratio_entry(name: str, what: str, a: list[float], b: list[float], goal: float | None, at_most: bool = False) -> dict[str, Any]:
    """A over B from runs taken side by side: the pairwise ratios, their median and range; the verdict where there is a goal."""
    pairs = pairwise(a, b)
    entry = {"what": what, "source": source(name), "pairwise": pairs, "spread_a": spread(a), "spread_b": spread(b)}
    if goal is not None:
        entry |= {"goal": goal, "goal_is": "at most" if at_most else "at least", "verdict": judged(pairs["runs"], goal, at_most)["verdict"]}
    return entry


def throughput(name: str, goal: bool = True) -> list[dict[str, Any]]:
    """lbsearch / bare (and HF Trainer / bare where measured), from the window and from the median step."""
    d, t = load(name), "throughput"
    out = []
    for kind, label in (("samples_per_s", "samples/s over the window"), ("samples_per_s_median_step", "samples/s from the median step")):
        out.append(ratio_entry(name, f"lbsearch / bare, {label}", runs(d, f"{t}.lbsearch.{kind}"), runs(d, f"{t}.bare.{kind}"), 0.97 if goal else None))
        if f"{t}.trainer.{kind}" in d:
            out.append(ratio_entry(name, f"HF Trainer / bare, {label}", runs(d, f"{t}.trainer.{kind}"), runs(d, f"{t}.bare.{kind}"), None))
    loss = d.get(f"{t}.max_loss_diff_lbsearch_vs_bare")
    for e in out:
        e["max_loss_diff_lbsearch_vs_bare"] = loss
    return out


def precision(name: str) -> list[dict[str, Any]]:
    d, p = load(name), "precision"
    return [ratio_entry(name, f"bf16 / fp32, {label}", runs(d, f"{p}.bf16.{kind}"), runs(d, f"{p}.fp32.{kind}"), 1.5)
            for kind, label in (("samples_per_s", "samples/s over the window"), ("samples_per_s_median_step", "samples/s from the median step"))]


def overhead(name: str) -> list[dict[str, Any]]:
    """Ask -> first step per trial against 5 s: with the standby process (as shipped) and without, where both were measured."""
    d = load(name)
    variants = [("overhead", "with the standby process" if "overhead_no_standby.ask_to_first_step_s" in d else "every trial a new process")]
    if "overhead_no_standby.ask_to_first_step_s" in d:
        variants.append(("overhead_no_standby", "every trial a new process (--no-standby)"))
    return [{"what": f"ask -> first step, s per trial, {label}", "source": source(name)} | judged(runs(d, f"{v}.ask_to_first_step_s"), 5.0, at_most=True)
            for v, label in variants]


def tracking(name: str) -> list[dict[str, Any]]:
    d = load(name)
    return [ratio_entry(name, "trial wall time, MLflow on / off", runs(d, "tracking.on_wall_s"), runs(d, "tracking.off_wall_s"), 1.02, at_most=True)]


def noise_scale(name: str) -> list[dict[str, Any]]:
    d, n = load(name), "noise_scale"
    return [ratio_entry(name, f"samples/s, estimator on / off, {label}", runs(d, f"{n}.samples_per_s_{mode}"), runs(d, f"{n}.samples_per_s_off"), 0.95)
            for mode, label in (("on", f"every {d[f'{n}.every']}-th step"), ("every_step", "every step"))]


def quickstart(name: str, same_config: list[str]) -> dict[str, Any]:
    """One study off, one on: the wall-time ratio, judged against the spread of the "on" configuration's
    repeated runs (``same_config``: the JSONs whose "on" study is the same configuration)."""
    d = load(name)
    on_runs = [load(n)["on"]["wall_s"] for n in same_config]
    ratio = d["on"]["wall_s"] / d["off"]["wall_s"]
    entry = {"what": "quickstart study wall time, on / off", "source": source(name), "off_s": d["off"]["wall_s"], "on_s": d["on"]["wall_s"],
             "off_flags": d["off"].get("flags"), "on_runs_same_config_s": on_runs, "on_runs_from": same_config}
    return entry | judged([ratio], 0.67, at_most=True, spread_of_one=spread(on_runs))


def processes(name: str) -> dict[str, Any]:
    d = load(name)
    return ratio_entry(name, "samples/s, 2 processes / 1", d["processes.samples_per_s_2"], d["processes.samples_per_s_1"], None)


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    zen4 = ["quickstart_speed_epyc_zen4.json", "quickstart_speed_epyc_zen4_step_levers.json"]  # the same "on" study, twice
    entries = {
        "throughput_2l": throughput("throughput_2l.json"),
        "throughput_6l": throughput("throughput_6l.json"),
        "throughput_2l_avx2": throughput("throughput_2l_avx2.json"),
        "throughput_lm_2l": throughput("throughput_lm_2l.json"),
        "throughput_2l_epyc_avx2": throughput("throughput_2l_epyc_avx2.json"),
        "precision_6l": precision("precision_6l.json"),
        "precision_2l": precision("precision_2l.json"),
        "overhead": overhead("overhead.json"),
        "overhead_epyc_zen4": overhead("overhead_epyc_zen4.json"),
        "tracking": tracking("tracking.json"),
        "tracking_system_metrics": tracking("tracking_system_metrics.json"),
        "noise_scale": noise_scale("noise_scale.json"),
        "quickstart_speed_epyc_zen4": [quickstart(zen4[0], zen4)],
        "quickstart_speed_epyc_zen4_step_levers": [quickstart(zen4[1], zen4)],
        "quickstart_speed_epyc_zen5": [quickstart("quickstart_speed_epyc_zen5.json", ["quickstart_speed_epyc_zen5.json"])],
        "quickstart_speed": [quickstart("quickstart_speed.json", ["quickstart_speed.json"])],
        "processes": [processes("processes.json")],
    }
    for key, items in entries.items():
        for e in items:
            fig = e.get("pairwise", {}).get("median", e.get("median"))
            lo, hi = (e["pairwise"]["min"], e["pairwise"]["max"]) if "pairwise" in e else (e.get("min"), e.get("max"))
            print(f"{key:40s} {e['what'][:60]:60s} {fig:8.3f} [{lo:.3f}, {hi:.3f}]  {e.get('verdict', '-')}")
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join([sys.executable, *sys.argv]),
           "rule": "pairwise ratios of runs taken side by side (or per-trial values): 'met' when their median and every one meet "
                   "the goal, 'not met' when the median does not, 'not shown' when the median does and some do not; a single "
                   "pair against the spread of repeated runs of the same configuration",
           "verdicts": entries}
    path = RESULTS / "verdicts.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
