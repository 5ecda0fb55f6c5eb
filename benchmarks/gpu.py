"""GPU check in steady state: lbsearch's trial loop beside a bare, tuned PyTorch loop, and a study beside HF's (about 8 minutes on one H100).

Two models, random init, no download:

- **BERT-base** (12 layers, hidden 768, 110M parameters) as a classifier with a one-output head on the
  tomatometer data (``experiments/rt_tomatometer.yaml``: 4 reviews a text, ~99 real tokens of 128),
  sequence length 128 (every batch padded to 128), B = 256 in one micro-batch;
- **a GPT-2-small-shaped decoder** (12 layers, hidden 768, 12 heads; ``causal_lm``) on the builtin
  ``speeches`` corpus packed in sequences of L = 1,024 tokens with its own trained BPE tokenizer
  (``experiments/lm_tiny.yaml`` at GPT-2 size), B = 16 sequences (16,384 tokens) a step.

For each model and variant (bf16 eager, bf16 with ``launcher.compile``, fp16), in this process and one
after the other on the same GPU (``benchmarks/_gpu_loops.py``):

- lbsearch: ``lbsearch.trial.worker.train``, its defaults (noise-scale monitor, clipping, deferred reads);
- bare: the same model class and config, fused AdamW, autocast, ``torch.compile(model)`` where the variant
  compiles, GradScaler under fp16, pinned non-blocking input copies, no per-step host read.

Both train the same samples at the same steps; the timed window is ``--intervals`` spans of
``--interval`` steps after a warm-up (lbsearch: its first evaluation interval, where compiling is paid;
its evaluations fall between the spans and are not timed). Reported per side: samples/s, real tokens/s,
TFLOP/s and MFU (lbsearch's FLOP count over lbsearch's device peak, for both sides), host syncs per step
(``torch.cuda.set_sync_debug_mode``); and lbsearch / bare throughput per span.

Then a study end to end (``benchmarks/_gpu_study.py``): ``lbsearch run`` of 4 trials of BERT-base (bf16,
``--study-steps`` steps each) with its wall time beside HF ``Trainer.hyperparameter_search`` (Optuna, 4
trials, same model, data, steps and batch; ``benchmarks/_gpu_hf.py``), and ask -> first step per trial.

DeepSpeed (``benchmarks/_gpu_deepspeed.py``): a ZeRO-2 trial through ``experiments/accelerate/deepspeed_zero2.yaml``,
stopped by SIGTERM after a checkpoint and resumed, beside the same trial without DeepSpeed (``deepspeed`` in the JSON).

Last, a check that fp16's GradScaler skips injected overflows and the trial completes.

Every goal is judged in the JSON (``goals``: met / not met / not shown, with the numbers;
``benchmarks/_stats.py``). Writes ``benchmarks/results/gpu_<card>.json`` after every stage (a run cut
short keeps what it measured); stages that would pass ``--deadline-s`` are skipped and listed.
Without a GPU it says so and exits 0; ``--cpu-smoke`` runs every stage on the CPU at tiny sizes
(2-layer models, a few steps, 2-trial studies) and writes to /tmp.

    python benchmarks/gpu.py [--quick] [--steps 200] [--deadline-s 540] [--only bert,gpt2,study]
    python benchmarks/gpu.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from _bench import RESULTS, ROOT, experiment, machine, prepared, table, write
from _gpu_deepspeed import deepspeed_trial
from _gpu_loops import bare_model, bare_run, device_peak, lbsearch_run
from _gpu_study import hf_search, lbsearch_study
from _stats import judged

from lbsearch.trial.flops import flop_count

BERT_SPEC, LM_SPEC = ROOT / "experiments" / "rt_tomatometer.yaml", ROOT / "experiments" / "lm_tiny.yaml"
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}
GPT2_SMALL = {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
SIZES: dict[str, dict[str, Any]] = {
    "full": {"bert": {"config": BERT_BASE, "length": 128, "batch": 256, "eval": 256},
             "gpt2": {"config": GPT2_SMALL, "length": 1024, "batch": 16, "vocab": 50257, "eval": 8},
             "interval": 40, "intervals": 5, "bare_warmup": 10, "study": {"trials": 4, "steps": 40, "eval_steps": 20}},
    "quick": {"interval": 25, "intervals": 4, "study": {"trials": 4, "steps": 20, "eval_steps": 10}},
    "cpu-smoke": {"bert": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                                      "max_position_embeddings": 64}, "length": 32, "batch": 8, "eval": 16},
                  "gpt2": {"config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                      "attn_pdrop": 0.0}, "length": 32, "batch": 4, "vocab": 256, "eval": 2},
                  "interval": 2, "intervals": 2, "bare_warmup": 2, "study": {"trials": 2, "steps": 4, "eval_steps": 2}},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "bf16": {"launcher.precision": "bf16"},
    "bf16+compile": {"launcher.precision": "bf16", "launcher.compile": True},
    "fp16": {"launcher.precision": "fp16"},
}
# In order of what the goals need first; (seconds on one H100, a guess to skip by before a deadline)
STAGES = [("bert", "bf16", 45), ("bert", "bf16+compile", 110), ("gpt2", "bf16", 45), ("gpt2", "bf16+compile", 120),
          ("study", "", 110), ("deepspeed", "", 90), ("bert", "fp16", 45), ("gpt2", "fp16", 45), ("overflow", "", 25)]
GOALS = {"mfu": {"bert": 0.45, "gpt2": 0.40}, "ratio": 0.95, "ask_to_first_step_s": 5.0, "study_wall_ratio": 0.5, "steps": 200}


def size_of(args) -> dict[str, Any]:
    name = "cpu-smoke" if args.cpu_smoke else "quick" if args.quick else "full"
    size = SIZES["full"] | (SIZES["quick"] if args.quick else {}) | (SIZES["cpu-smoke"] if args.cpu_smoke else {})
    size = size | {"name": name, "cpu": args.cpu_smoke} | {k: v for k, v in (("interval", args.interval), ("intervals", args.intervals)) if v}
    if args.steps:
        size["intervals"] = -(-args.steps // size["interval"])
    return size


def overrides(model: str, size: dict[str, Any], steps: int, every: int) -> dict[str, Any]:
    """The lbsearch experiment of one model: ``steps`` optimizer steps, an evaluation every ``every``."""
    m, b = size[model], size[model]["batch"]
    common = {"train.batch_size": b, "launcher.processes": 1, "launcher.max_micro_batch": b, "train.divergence_factor": 1e6,  # a speed run: no stop on a spike
              **({"launcher.cpu": True} if size["cpu"] else {})}
    if model == "bert":
        return common | {"model.source": "random", "model.num_layers": None, "model.pooling": "cls", "model.freeze_embeddings": False,
                         "model.config": m["config"], "data.max_length": m["length"], "data.max_eval_samples": m["eval"],
                         "train.budget_samples": steps * b, "train.eval_every_samples": every * b, "launcher.pad_to_multiple_of": m["length"],
                         "optimizer.lr": 1e-4}
    tokens = b * m["length"]
    return common | {"data.max_length": m["length"], "data.tokenizer_vocab": m["vocab"], "data.eval_tokens": m["eval"] * m["length"],
                     "model.config": m["config"], "train.budget_tokens": steps * tokens, "train.eval_every_tokens": every * tokens,
                     "schedule.warmup_tokens": every * tokens, "optimizer.lr": 6e-4}


def run_pair(model: str, variant: str, size: dict[str, Any], work: Path, sets: list[str]) -> dict[str, Any]:
    """lbsearch, then the bare loop, on the same steps; per-span lbsearch / bare throughput."""
    every, k = size["interval"], size["intervals"]
    exp = experiment(BERT_SPEC if model == "bert" else LM_SPEC, overrides(model, size, every * (k + 1), every) | VARIANTS[variant], sets)
    data = prepared(exp, work)
    peak, how = device_peak(exp, data)
    model_ = bare_model(exp, data)
    count, params = flop_count(model_), sum(p.numel() for p in model_.parameters())
    del model_
    print(f"[{model} {variant}] lbsearch: {every * (k + 1)} steps, timed {every * k} after step {every} ...", flush=True)
    lb = lbsearch_run(exp, data, count, peak)
    print(f"[{model} {variant}] bare loop ...", flush=True)
    bare = bare_run(exp, data, every + 1, every, k, size["bare_warmup"], peak)
    ratios = [b["seconds"] / a["seconds"] for a, b in zip(lb["spans"], bare["spans"])]
    row = {"model": model, "variant": variant, "batch_size": exp.train.batch_size, "sequence_length": exp.data.max_length,
           "vocab_size": data.vocab_size, "parameters": params,
           "flop_count": repr(count), "peak_tflops": peak / 1e12 if peak else None, "peak_from": how, "lbsearch": lb, "bare": bare,
           "lbsearch_over_bare": judged(ratios, GOALS["ratio"], at_most=False)}
    print(f"[{model} {variant}] lbsearch {lb['samples_per_s']:.0f} samples/s, MFU {lb['mfu'] or 0:.1%}, syncs/step {lb['host_syncs']['per_step']:.2f}"
          f" | bare {bare['samples_per_s']:.0f} samples/s, MFU {bare['mfu'] or 0:.1%} | ratio {row['lbsearch_over_bare']['median']:.3f}", flush=True)
    return row


def run_study(size: dict[str, Any], work: Path, cpu: bool) -> dict[str, Any]:
    """``lbsearch run`` of the study, then HF's search of the same work; wall ratio and ask -> first step."""
    from lbsearch.data import model_source

    st, bert = size["study"], size["bert"]
    sets = overrides("bert", size, st["steps"], st["eval_steps"]) | VARIANTS["bf16"]
    lb = lbsearch_study(BERT_SPEC, sets, st["trials"], work)
    files = {s: str(ROOT / "experiments" / "data" / f"rt_tomatometer_{s}.csv.bz2") for s in ("train", "validation")}
    hf = hf_search({"files": files, "text_column": "text", "label_column": "tomatometer", "tokenizer": model_source("minilm-l6"),
                    "model_type": "bert", "model_config": bert["config"], "max_length": bert["length"], "batch_size": bert["batch"],
                    "steps": st["steps"], "eval_steps": st["eval_steps"], "max_eval_samples": bert["eval"], "n_trials": st["trials"],
                    "precision": "bf16", "cpu": cpu, "seed": 0}, work)
    out = {"setup": {"trials": st["trials"], "steps": st["steps"], "eval_every_steps": st["eval_steps"], "batch_size": bert["batch"],
                     "precision": "bf16", "lr": "3e-5..3e-4 log, TPE seed 0, no pruning"}, "lbsearch": lb, "hf": hf}
    if lb["exit_code"] == 0 and hf["exit_code"] == 0:
        out["wall_ratio"] = judged([lb["wall_s"] / hf["wall_s"]], GOALS["study_wall_ratio"], at_most=True)
    starts = [t["ask_to_first_step_s"] for t in lb.get("trials", []) if t["ask_to_first_step_s"] is not None]
    if starts:
        out["ask_to_first_step"] = judged(starts, GOALS["ask_to_first_step_s"], at_most=True) | {
            "measure": "MLflow timestamp of the trial's step-1 row minus the Optuna trial's datetime_start (ask)",
            "exact": all(t["exact"] for t in lb["trials"])}
        if len(starts) > 1:
            out["ask_to_first_step_after_first_trial"] = judged(starts[1:], GOALS["ask_to_first_step_s"], at_most=True)
    return out


def fp16_overflow(size: dict[str, Any], work: Path) -> dict[str, Any]:
    """BERT in fp16 with infinite gradients injected at steps 3 and 5: the GradScaler skips them, the
    trial counts them (``skipped_steps``) and completes, not stopped as diverged."""
    exp = experiment(BERT_SPEC, overrides("bert", size, 20, 10) | VARIANTS["fp16"])
    data = prepared(exp, work)
    os.environ["LBSEARCH_INJECT_OVERFLOW_AT"] = "3,5"
    try:
        run = lbsearch_run(exp, data, flop_count(bare_model(exp, data)), None)
        out = {"injected_at": [3, 5], "state": "complete", "skipped_steps": run["skipped_steps"]}
    except RuntimeError as err:  # the trial did not complete
        out = {"injected_at": [3, 5], "state": str(err)}
    finally:
        os.environ.pop("LBSEARCH_INJECT_OVERFLOW_AT")
    print(f"[fp16 overflow] {out}", flush=True)
    return out


def plain(value: float, goal: float, at_most: bool) -> dict[str, Any]:
    """A count judged as it is (no run-to-run spread to weigh)."""
    ok = value <= goal if at_most else value >= goal
    return {"value": value, "goal": goal, "goal_is": "at most" if at_most else "at least", "verdict": "met" if ok else "not met"}


def goals(out: dict[str, Any]) -> dict[str, Any]:
    """Each goal of the issue that this run measured, judged (``_stats.judged``: per span or per trial)."""
    runs, g = out["runs"], {}
    if runs:
        g["steady_state_steps"] = plain(min(r["lbsearch"]["steps_timed"] for r in runs.values()), GOALS["steps"], at_most=False) | {
            "note": "optimizer steps timed per run, after the warm-up, evaluation excluded"}
    for model in ("bert", "gpt2"):
        r = runs.get(f"{model}/bf16+compile")
        if r and r["lbsearch"]["span_mfu"]:
            g[f"{model}_bf16_compiled_mfu"] = judged(r["lbsearch"]["span_mfu"], GOALS["mfu"][model], at_most=False) | {
                "per": "timed span", "bare_loop_mfu": r["bare"]["mfu"]}
    for key, r in runs.items():
        g[f"lbsearch_over_bare/{key}"] = r["lbsearch_over_bare"] | {"per": "timed span: bare seconds / lbsearch seconds over the same steps"}
    syncs = {key: r["lbsearch"]["host_syncs"] for key, r in runs.items()}
    if syncs:
        g["host_syncs_only_at_read_points"] = {
            "values": {key: {k: h[k] for k in ("steps", "steps_with_syncs", "scheduled_read_points_at_most", "per_step")} for key, h in syncs.items()},
            "goal": "steps with a host sync <= the read points lbsearch schedules (every train.log_every_steps, evaluations, the last step, one per 2 s)",
            "goal_is": "at most", "verdict": "met" if all(h["only_at_read_points"] for h in syncs.values()) else "not met"}
    study = out.get("study") or {}
    for key in ("ask_to_first_step", "ask_to_first_step_after_first_trial", "wall_ratio"):
        if key in study:
            g[f"study_{key}"] = study[key]
    return g


def card() -> str:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    found = re.search(r"(?:nvidia\s+)?(?:geforce\s+)?(\S+)", name, re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "_", found.group(1).lower() if found else "gpu")


def summary_table(out: dict[str, Any]) -> str:
    rows = []
    for key, r in out["runs"].items():
        for side in ("lbsearch", "bare"):
            s = r[side]
            rows.append([key, side, round(s["samples_per_s"]), round(s["tokens_per_s"]), round(s["tflops_per_s"], 1),
                         f"{s['mfu']:.1%}" if s["mfu"] else "-", round(s["host_syncs"]["per_step"], 2),
                         round(r["lbsearch_over_bare"]["median"], 3) if side == "lbsearch" else ""])
    return table(["run", "side", "samples/s", "tokens/s", "TFLOP/s", "MFU", "syncs/step", "lbsearch/bare"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="spans of 25 steps x 4 (100 timed: below the 200-step goal) and 20-step study trials")
    ap.add_argument("--cpu-smoke", action="store_true", help="every stage on the CPU at tiny sizes (checks the script, measures nothing)")
    ap.add_argument("--interval", type=int, default=None, help="steps per timed span (and lbsearch's evaluation interval)")
    ap.add_argument("--intervals", type=int, default=None, help="timed spans per run")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run, in whole spans (default: 200; --quick 100)")
    ap.add_argument("--only", default="", help="comma list of stages to run: bert, gpt2, study, deepspeed, overflow, or MODEL/VARIANT (default: all)")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="skip a stage whose guessed time would pass this (0: never)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override of every speed run's lbsearch experiment")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/gpu_steady_<card>.json (--cpu-smoke: a temp file)")
    return ap.parse_args(argv)


def wanted(only: str, model: str, variant: str) -> bool:
    names = {n.strip() for n in only.split(",") if n.strip()}
    return not names or model in names or f"{model}/{variant}" in names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no GPU here (torch.cuda.is_available() is False): nothing measured, nothing written "
              "(--cpu-smoke runs every stage on the CPU at tiny sizes)")
        return 0
    size = size_of(args)
    path = args.out or (Path(tempfile.gettempdir()) / "lbsearch_gpu_smoke.json" if args.cpu_smoke else RESULTS / f"gpu_steady_{card()}.json")
    out: dict[str, Any] = {"machine": machine(), "setup": {"size": size, "variants": VARIANTS, "goals": GOALS, "sets": args.set or [],
                                                             "bert_spec": str(BERT_SPEC.relative_to(ROOT)), "lm_spec": str(LM_SPEC.relative_to(ROOT))},
                           "runs": {}, "skipped": [], "errors": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="lbsearch-gpu-") as tmp:
        for model, variant, guess in STAGES:
            key = f"{model}/{variant}" if variant else model
            if not wanted(args.only, model, variant):
                continue
            left = args.deadline_s - (time.time() - t0)
            if args.deadline_s and not args.cpu_smoke and guess * (0.6 if args.quick else 1.0) > left:
                out["skipped"].append(f"{key}: {left:.0f} s left before --deadline-s, guessed {guess} s")
                print(f"[{key}] skipped: {left:.0f} s left", flush=True)
                continue
            try:
                if model == "study":
                    out["study"] = run_study(size, Path(tmp), size["cpu"])
                elif model == "deepspeed":
                    out["deepspeed"] = deepspeed_trial(BERT_SPEC, Path(tmp), size["cpu"])
                elif model == "overflow":
                    out["fp16_overflow"] = fp16_overflow(size, Path(tmp))
                else:
                    out["runs"][key] = run_pair(model, variant, size, Path(tmp), args.set or [])
            except Exception as err:  # noqa: BLE001 - one stage's failure must not cost the others' figures
                traceback.print_exc()
                out["errors"][key] = f"{type(err).__name__}: {err}"[:800]
            out["goals"], out["elapsed_s"] = goals(out), time.time() - t0
            write(out, path)
            print(f"[{key}] done at {time.time() - t0:.0f} s", flush=True)
    if out["runs"]:
        print(summary_table(out))
    for name, v in out.get("goals", {}).items():
        print(f"goal {name}: {v['verdict']} ({v.get('median', v.get('value', v.get('values')))} against {v['goal_is']} {v['goal']})"[:400])
    study = out.get("study", {})
    if study:
        print(f"study: lbsearch {study['lbsearch']['wall_s']:.1f} s (exit {study['lbsearch']['exit_code']}), "
              f"HF {study['hf']['wall_s']:.1f} s (exit {study['hf']['exit_code']})")
    overflow_failed = out.get("fp16_overflow", {}).get("state", "complete") != "complete"
    deepspeed_failed = out.get("deepspeed", {}).get("state", "complete") != "complete"
    return 1 if out["errors"] or overflow_failed or deepspeed_failed or any(study.get(s, {}).get("exit_code") for s in ("lbsearch", "hf")) else 0


if __name__ == "__main__":
    sys.exit(main())
