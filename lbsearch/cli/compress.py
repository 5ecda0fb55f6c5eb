"""``lbsearch compress STUDY``: the study's kept best model, dynamically quantized to int8 and pruned at a set
of sparsities (optionally fine-tuned a few steps after pruning), each variant and the original evaluated on
validation and test as trials evaluate, measured (weight bytes, non-zero parameters, ``predict`` latency and
throughput on this machine) and registered (``lbsearch.tracking.compressed``); ``--table`` prints the
accuracy-vs-size-vs-latency table with its Pareto front; ``--verify REF`` re-evaluates a registered variant
from its saved folder and compares with its logged metrics. The torch side is ``lbsearch.trial.compress``."""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lbsearch.data import prepare_data
from lbsearch.spec import (
    CONFIG_ATTR,
    KEPT_FILE,
    LM_TASKS,
    SIZE_LINEAR_ZERO_SHARE,
    SIZE_PARAMS_NONZERO,
    SIZE_WEIGHT_BYTES,
    SPEED_LATENCY_MS_MEDIAN,
    SPEED_LATENCY_MS_P10,
    SPEED_LATENCY_MS_P90,
    SPEED_THROUGHPUT_PER_S,
    TEST,
    VAL,
    Session,
    SpecError,
    as_recorded,
    best_uri,
    data_cache_dir,
    experiment_model,
    is_script,
    trial_model_dir,
)
from lbsearch.study import best_trial, load_existing_study, stored_study
from lbsearch.tracking import LOAD_AVERAGE, MACHINE, RECIPE, THREADS, VARIANT, compressed_name, find_variant, record_variant, tracker_for, variant_dir, variant_rows

__all__ = ["ORIGINAL", "INT8", "compress", "compress_table", "verify_variant", "pareto_variants", "variant_name", "check_sparsities"]

ORIGINAL, INT8 = "original", "int8"
"""The names of the kept model itself and of its int8 variant (a pruned one's: ``variant_name``)."""


def variant_name(sparsity: float | None, finetune_steps: int = 0) -> str:
    """A variant's name, also its registry alias: ``original``, ``int8``, ``prune50``, ``prune50-ft20`` (sparsity in percent)."""
    if sparsity is None:
        return INT8
    pct = f"{sparsity * 100:.4g}".replace(".", "p")
    return f"prune{pct}" + (f"-ft{finetune_steps}" if finetune_steps else "")


def check_sparsities(values: list[float]) -> list[float]:
    bad = [v for v in values if not 0.0 < v < 1.0]
    if bad:
        raise SpecError(None, "--sparsity", f"each sparsity is a share of the weights strictly between 0 and 1, got {bad[0]!r}")
    return sorted(set(values))


def _kept(session: Session, name: str):
    """The study's best trial, its kept model folder and resolved experiment; a one-line error where there is none."""
    study = load_existing_study(session, name)
    target = best_trial(study)
    if target is None:
        raise SpecError(None, "study", f"study {name!r} has no complete trial")
    folder = trial_model_dir(session.root, name, target.number)
    if not (folder / "config.json").is_file():
        raise SpecError(None, "study", f"study {name!r} has no kept model for its best trial {target.number} (see the study's `save_model`)")
    raw = as_recorded(json.loads(target.user_attrs[CONFIG_ATTR]))
    exp = experiment_model(raw).model_validate(raw)
    if is_script(exp) or exp.task in LM_TASKS:
        raise SpecError(None, "study", f"compress serves classifiers and regressors kept by lbsearch's own trials, not task {exp.task!r}")
    return study, target, folder, exp


def _values(ctx: dict[str, Any], model, folder: Path) -> dict[str, float]:
    """The metrics of one variant: the task's metrics on validation and test, size, non-zeros, speed."""
    from lbsearch.trial import evaluate, nonzero_params, pruned_share, timing, weight_bytes

    scores = evaluate(model, ctx["data"].path, ctx["data"].pad_id, ctx["info"])
    speed = timing(folder, ctx["data"].path, ctx["repeats"], model=model)
    threads = speed.pop("threads")
    ctx["threads"] = threads
    return ({VAL + k: v for k, v in scores["validation"].items()} | {TEST + k: v for k, v in scores["test"].items()}
            | {SIZE_WEIGHT_BYTES: weight_bytes(folder), SIZE_PARAMS_NONZERO: nonzero_params(model), SIZE_LINEAR_ZERO_SHARE: pruned_share(model)} | speed)


def _record(ctx: dict[str, Any], variant: str, model, folder: Path, recipe: dict[str, Any] | None) -> None:
    from lbsearch.trial import save_variant

    if recipe is not None:
        save_variant(model, ctx["kept"], folder, recipe)
    values = _values(ctx, model, folder)
    tags = {MACHINE: ctx["machine"], THREADS: ctx["threads"], RECIPE: json.dumps(recipe),
            LOAD_AVERAGE: " ".join(f"{x:.2f}" for x in os.getloadavg())}
    version = record_variant(ctx["tracker"], study=ctx["name"], experiment_id=ctx["experiment_id"], parent=ctx["parent"], number=ctx["number"],
                             variant=variant, values=values, tags=tags, folder=folder if recipe is not None else None)
    m = ctx["metric"]
    where = f"version {version} of {compressed_name(ctx['name'])} (alias {variant})" if version else best_uri(ctx["name"])
    ctx["say"](f"[compress] {variant}: validation {m} {values[VAL + m]:.4f} · test {m} {values[TEST + m]:.4f} · "
               f"{values[SIZE_WEIGHT_BYTES] / 1e6:.3g} MB · latency {values[SPEED_LATENCY_MS_MEDIAN]:.1f} ms · {where}")


def compress(session: Session, name: str, sparsities: list[float], finetune_steps: int, repeats: int) -> int:
    """Quantize and prune the best trial's kept model of study ``name``, evaluate, measure and register each variant."""
    from lbsearch.trial import finetune, load_model, machine_name, prune_global, quantize_int8

    sparsities = check_sparsities(sparsities)
    if finetune_steps < 0 or repeats < 1:
        raise SpecError(None, "--finetune-steps" if finetune_steps < 0 else "--repeats", "must be positive")
    study, target, kept, exp = _kept(session, name)
    data = prepare_data(exp, data_cache_dir(session.root))
    tracker = tracker_for(session, stored_study(study))
    ctx = {"name": name, "number": target.number, "kept": kept, "data": data, "info": json.loads((kept / KEPT_FILE).read_text()),
           "repeats": repeats, "tracker": tracker, "experiment_id": tracker.experiment(name), "parent": tracker.find_parent(name),
           "machine": machine_name(), "metric": exp.metric.name, "say": session.out}
    session.out(f"[compress] study {name}, trial {target.number}'s kept model {kept}; on {ctx['machine']}")
    _record(ctx, ORIGINAL, load_model(kept), kept, None)
    plans: list[tuple[str, Any, dict[str, Any]]] = [(INT8, None, {"kind": "int8_dynamic", "layers": "nn.Linear", "dtype": "qint8"})]
    for s in sparsities:
        plans.append((variant_name(s), s, {"kind": "magnitude_pruning", "scope": "global", "layers": "nn.Linear", "sparsity": s}))
        if finetune_steps:
            plans.append((variant_name(s, finetune_steps), s, {"kind": "magnitude_pruning", "scope": "global", "layers": "nn.Linear",
                                                               "sparsity": s, "finetune_steps": finetune_steps}))
    for variant, sparsity, recipe in plans:
        folder = variant_dir(session.root, name, target.number, variant)
        if folder.exists():
            shutil.rmtree(folder)
        if sparsity is None:
            model = quantize_int8(load_model(kept))
        elif recipe.get("finetune_steps"):
            model = prune_global(load_model(kept), sparsity, permanent=False)
            finetune(model, exp, data.path, data.pad_id, ctx["info"].get("labels", {}), finetune_steps, say=lambda s: session.out(f"[compress] {variant} {s}"))
        else:
            model = prune_global(load_model(kept), sparsity)
        _record(ctx, variant, model, folder, recipe)
        del model
        gc.collect()
    return compress_table(session, name)


def pareto_variants(rows: list[dict[str, Any]], metric: str, minimize: bool = False) -> set[str]:
    """The variants no other beats on all of validation ``metric``, weight bytes and median latency (and on one strictly)."""
    sign = -1.0 if minimize else 1.0

    def key(r: dict[str, Any]) -> tuple[float, float, float]:
        return (sign * r[VAL + metric], -r[SIZE_WEIGHT_BYTES], -r[SPEED_LATENCY_MS_MEDIAN])

    keys = {r["variant"]: key(r) for r in rows}
    return {v for v, k in keys.items() if not any(all(a >= b for a, b in zip(o, k)) and o != k for o in keys.values())}


def compress_table(session: Session, name: str) -> int:
    """Print the measured variants of the best trial's kept model: metric, size, non-zeros, latency, throughput; front marked ``*``."""
    study, target, _, exp = _kept(session, name)
    rows = variant_rows(tracker_for(session, stored_study(study)), name, target.number)
    if not rows:
        session.out(f"study {name}: no compressed variants of trial {target.number}'s model yet (run `lbsearch compress {name}`)")
        return 1
    m = exp.metric.name
    front = pareto_variants(rows, m, exp.metric.direction == "minimize")
    head = ["variant", "version", f"val {m}", f"test {m}", "weights MB", "non-zero M", "latency ms (p10-p90)", "texts/s (batched)"]
    table = [[r["variant"] + ("*" if r["variant"] in front else ""), r["version"] or "-", f"{r[VAL + m]:.4f}", f"{r[TEST + m]:.4f}",
              f"{r[SIZE_WEIGHT_BYTES] / 1e6:.3g}", f"{r[SIZE_PARAMS_NONZERO] / 1e6:.3g}",
              f"{r[SPEED_LATENCY_MS_MEDIAN]:.1f} ({r[SPEED_LATENCY_MS_P10]:.1f}-{r[SPEED_LATENCY_MS_P90]:.1f})",
              f"{r[SPEED_THROUGHPUT_PER_S]:.0f}"] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    session.out(f"study {name}: trial {target.number}'s kept model and its variants ({compressed_name(name)}); * the Pareto front "
                f"over validation {m}, weight bytes and latency")
    session.out("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in table:
        session.out("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    session.out(f"measured on {rows[-1].get('machine') or 'an unnamed machine'}; serve one: lbsearch predict {name} TEXT --model VARIANT")
    return 0


def verify_variant(session: Session, name: str, ref: str) -> int:
    """Load a registered variant from its folder in this process, evaluate it as ``compress`` did (its thread
    count), and compare with the metrics logged for it: 0 when every one is identical."""
    from lbsearch.trial import evaluate, load_model

    study, _, _, exp = _kept(session, name)
    tracker = tracker_for(session, stored_study(study))
    folder, tags = find_variant(tracker, name, ref)
    logged = tracker.client.get_run(tags["run_id"]).data
    data = prepare_data(exp, data_cache_dir(session.root))
    threads = int(logged.tags[THREADS]) if THREADS in logged.tags else None
    scores = evaluate(load_model(folder), data.path, data.pad_id, json.loads((folder / KEPT_FILE).read_text()), threads=threads)
    same = True
    for split, prefix in (("validation", "val"), ("test", "test")):
        for k, v in scores[split].items():
            old = logged.metrics.get(f"{prefix}/{k}")
            same &= old == v
            session.out(f"[verify {tags.get(VARIANT, ref)}] {split} {k}: logged {old!r} now {v!r}")
    session.out(f"[verify {tags.get(VARIANT, ref)}] " + ("identical" if same else "MISMATCH"))
    return 0 if same else 1
