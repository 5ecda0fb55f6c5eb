"""Shared pieces of the speed benchmarks (throughput, precision, overhead, tracking).

Two ways to run the same training on the same model, data, B, micro-batches and precision:

- ``lbsearch_loop``: ``lbsearch.trial.worker.train`` (the trial loop) in this process, reporting as in a
  study (its metric lines are captured here instead of going to the orchestrator);
- ``bare_loop``: the same steps in plain PyTorch: no Accelerate, no reporting, no evaluation. Its
  micro-batches are laid out as the worker lays them out, packed where a trial packs them
  (``launcher.pack``, the worker's rule: ``packing_offset``) or padded on request (``pack=False``).

Both measure steady-state samples/s over the steps after the first evaluation point (the first
steps warm up the allocator and the kernels), evaluation excluded, two ways: over the whole window
(``samples_per_s``, as the worker logs ``train/samples_per_s``) and from the median step time
(``samples_per_s_median_step``), which a stall caused by another job on a shared machine does not move.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.data.cache import PreparedData, Split, load_arrays, prepare_data
from lbsearch.spec import PACKING, PROGRESS_STEP, TRAIN_LOSS, TRAIN_MFU, TRAIN_SAMPLES_PER_S, TRAIN_TOKENS_PER_S, data_cache_dir
from lbsearch.spec.config import ExperimentConfig
from lbsearch.spec.load import load_experiment, parse_set
from lbsearch.spec.plan import make_plan
from lbsearch.trial.batching import sample_stream, step_micro_batches
from lbsearch.trial.diagnostics import head_for_step
from lbsearch.trial.lm import lm_batch
from lbsearch.trial.model import uses_token_types

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SPEC = ROOT / "experiments" / "rt_minilm.yaml"

MicroBatches = list[tuple[dict[str, torch.Tensor], torch.Tensor]]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_transformers() -> None:
    """No "Loading weights" progress bars or load reports in the benchmark output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def experiment(spec: Path, overrides: dict[str, Any], sets: list[str] | None = None) -> ExperimentConfig:
    """The experiment spec with dotted overrides, then the user's ``--set KEY=VALUE`` items; ``precision: auto`` resolved."""
    from lbsearch.orchestrator.launch import resolve_precision

    quiet_transformers()
    exp = load_experiment(spec, overrides | parse_set(sets))
    exp.launcher.precision = resolve_precision(exp.launcher.precision, exp.launcher.cpu)
    return exp


def prepared(exp: ExperimentConfig, work: Path) -> PreparedData:
    return prepare_data(exp, data_cache_dir(work))  # as a study in work would, so the two share it


def device_of(exp: ExperimentConfig) -> torch.device:
    """The device a trial of ``exp`` trains on (the worker's rule: CUDA unless absent or ``launcher.cpu``)."""
    return torch.device("cuda" if torch.cuda.is_available() and not exp.launcher.cpu else "cpu")


def use_all_cores() -> int:
    """The threads a 1-process trial gets (``accelerate launch --num_cpu_threads_per_process``)."""
    n = max(1, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _cpuinfo(field: str) -> str | None:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def _cpu_name() -> str:
    """The model name and, where the name alone does not tell the generation (``AMD EPYC``), its CPU
    family and model numbers (family 25 is Zen 3/4, 26 is Zen 5)."""
    name = _cpuinfo("model name") or platform.processor()
    family, model = _cpuinfo("cpu family"), _cpuinfo("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def code_version() -> dict[str, Any]:
    """The commit the benchmark ran from, and whether ``lbsearch/`` or ``benchmarks/`` differed from it."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    rev = git("rev-parse", "HEAD")
    return {"git_commit": rev or None, "git_uncommitted_changes": bool(git("status", "--porcelain", "--", "lbsearch", "benchmarks")) if rev else None}


def machine() -> dict[str, Any]:
    """Where the figures come from: package versions (``lbsearch.tracking.tracker.versions``), the code's
    commit, CPU, load, date."""
    from lbsearch.tracking.tracker import versions

    return versions() | code_version() | {
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_fast_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_at_start": list(os.getloadavg()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def timed(fn: Callable, name: str, spent: dict[str, float]) -> Callable:
    """``fn`` wrapped to add the seconds of each call to ``spent[name]``."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0

    return wrapper


def summary(values: list[float]) -> dict[str, Any]:
    return {"runs": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body])


def command() -> str:
    """The command line that ran this benchmark, as a JSON records it."""
    return " ".join([sys.executable, *sys.argv])


def run_study_cli(study: Path, name: str, root: Path, args: list[str], timeout: float = 3600) -> tuple[float, list[dict], dict]:
    """``lbsearch run STUDY`` as its own process under ``root`` (exits on a failure, with its output), then its
    ``status --json`` rows and ``best --json``'s picked trial: (wall seconds, rows, best)."""
    lb = [sys.executable, "-m", "lbsearch.cli"]
    t0 = time.perf_counter()
    proc = subprocess.run(lb + ["run", str(study), "--mlruns", str(root), *args], capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"study {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rows = json.loads(subprocess.run(lb + ["status", name, "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)
    best = json.loads(subprocess.run(lb + ["best", name, "--json", "--mlruns", str(root)], capture_output=True, text=True, check=True).stdout)["picked"]
    return wall, rows, best


def write(out: dict[str, Any], path: Path) -> None:
    """``out`` as JSON at ``path``, with the load average at the end and the command that ran it."""
    if "machine" in out:
        out["machine"]["load_average_at_end"] = list(os.getloadavg())
    out.setdefault("command", command())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def warmup_steps(exp: ExperimentConfig) -> int:
    """Steps before the first evaluation point: left out of steady-state samples/s."""
    points = make_plan(exp).evals
    if len(points) < 2 or exp.train.eval_every_samples < 2 * exp.train.batch_size:
        raise SystemExit("need 2 x batch_size <= eval_every_samples < budget_samples: the timing starts after the first "
                         "evaluation and leaves out each step that follows one")
    return points[0][0]


def steady_rates(step_ends: list[float], batch_size: int, skip: int) -> dict[str, float]:
    """Samples/s over steps skip+1..n, from the end times of steps 0..n (``step_ends[0]`` = start)."""
    durations = [b - a for a, b in zip(step_ends[skip:], step_ends[skip + 1:])]
    return {"samples_per_s": batch_size * len(durations) / sum(durations),
            "samples_per_s_median_step": batch_size / statistics.median(durations)}


def fresh_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each run here gets a fresh state, as a trial process does."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()


# ----------------------------------------------------------------------------------------------
# The lbsearch trial loop, in this process


def worker_spec(exp: ExperimentConfig, data: PreparedData, tracking: bool = False):
    """The spec the orchestrator would hand the trial process (no Optuna trial)."""
    from lbsearch.spec.protocol import WorkerSpec

    return WorkerSpec(experiment=exp.model_dump(mode="json"), data_path=str(data.path), num_labels=data.num_labels,
                      pad_id=data.pad_id, vocab_size=data.vocab_size, labels=data.labels, tracking=tracking)


def new_model(exp: ExperimentConfig, data: PreparedData) -> torch.nn.Module:
    """The model a trial of ``exp`` builds (seed the RNGs first)."""
    from lbsearch.trial.model import build_model

    names = data.labels.get("names") or [str(i) for i in range(data.num_labels)]
    return build_model(exp.model, exp.task, names, data.vocab_size, data.pad_id)


def lbsearch_loop(exp: ExperimentConfig, data: PreparedData) -> dict[str, Any]:
    """Run ``lbsearch.trial.worker.train``; steady samples/s from its ``train/samples_per_s`` metrics.

    Reporting is on, as in a study: the worker buffers its metrics and prints them as lines, which
    land in a buffer here instead of the orchestrator's pipe (no MLflow in either case)."""
    from lbsearch.spec.protocol import parse_message
    from lbsearch.trial.worker import train

    warmup_steps(exp)  # checks the evaluation cadence
    fresh_accelerate()
    spec = worker_spec(exp, data, tracking=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(spec, log=lambda *a: None)
    if result.state != "complete":
        raise SystemExit(f"lbsearch loop stopped: {result.state} ({result.reason})")
    messages = [parse_message(line) for line in out.getvalue().splitlines()]
    rows = [r for m in messages if m is not None and m[0] == "metrics" for r in m[1]]
    # a row's step is the data seen where the worker also logs the optimizer step (`progress/step`), else that step
    to_step = {at: int(v) for key, v, _, at in rows if key == PROGRESS_STEP}
    rows = [(key, v, ts, to_step.get(at, at) if to_step else at) for key, v, ts, at in rows]
    tags = {k: v for m in messages if m is not None and m[0] == "tags" for k, v in m[1].items()}
    rate = {step: v for key, v, _, step in rows if key == TRAIN_SAMPLES_PER_S}  # per evaluation interval
    losses = {step: v for key, v, _, step in rows if key == TRAIN_LOSS}
    stamps = {step: ts / 1000 for key, _, ts, step in rows if key == TRAIN_LOSS}  # ms, taken after each step
    ends = sorted(rate)
    samples = [exp.train.batch_size * (b - a) for a, b in zip(ends, ends[1:])]
    seconds = [n / rate[s] for n, s in zip(samples, ends[1:])]
    # step durations after the first evaluation, leaving out each step that follows an evaluation
    durations = [stamps[s] - stamps[s - 1] for s in range(ends[0] + 1, ends[-1] + 1) if s - 1 not in rate]
    # tokens/s and MFU over the same intervals (each interval weighted by its seconds)
    tps = {step: v for key, v, _, step in rows if key == TRAIN_TOKENS_PER_S}
    mfu = {step: v for key, v, _, step in rows if key == TRAIN_MFU}
    steady = {"tokens_per_s": sum(tps[s] * t for s, t in zip(ends[1:], seconds)) / sum(seconds),
              "mfu": sum(mfu[s] * t for s, t in zip(ends[1:], seconds)) / sum(seconds) if mfu else None}
    return {"samples_per_s": sum(samples) / sum(seconds), "samples_per_s_median_step": exp.train.batch_size / statistics.median(durations),
            "losses": [losses[s] for s in sorted(losses)], "result": result, "packing": tags.get(PACKING)} | steady


# ----------------------------------------------------------------------------------------------
# The bare PyTorch loop: the same steps, nothing else


def micro_batch(exp: ExperimentConfig) -> int:
    return make_plan(exp, processes=1).with_limit(exp.launcher.max_micro_batch or exp.train.batch_size).micro_batch


def step_layout(exp: ExperimentConfig, train: Split) -> Iterator[list[np.ndarray]]:
    """Each optimizer step's micro-batches of training-sample indices, laid out as the worker lays
    them out (``step_micro_batches``: a random head kept apart on the steps where ``train.noise_scale``
    measures)."""
    tr = exp.train
    plan = make_plan(exp, processes=1).with_limit(micro_batch(exp))
    lengths = np.array([len(x) for x in train.ids])
    for step, ids in enumerate(sample_stream(len(train.ids), tr.batch_size, plan.steps, exp.seed), 1):
        head = head_for_step(step, 1, plan.accumulation, tr.noise_scale_every) if tr.noise_scale else 0
        yield step_micro_batches(ids, lengths, plan.batch, 0, head)


def pad_multiple(exp: ExperimentConfig) -> int:
    """What the worker rounds a micro-batch's width up to."""
    return exp.launcher.pad_to_multiple_of or (16 if exp.launcher.compile else 1)


def packing_offset(exp: ExperimentConfig, data: PreparedData, model: torch.nn.Module) -> int | None:
    """Where packed positions start if a one-process trial of ``exp`` packs its micro-batches, else None:
    the worker's rule (``launcher.pack``, a classifier with the pooled head, nothing in
    ``packing.unsupported``, ``packing.check`` passed on the same 8 short training samples)."""
    from lbsearch.trial.model import PooledClassifier
    from lbsearch.trial.packing import check, position_offset, unsupported

    if not exp.launcher.pack or exp.task in ("causal_lm", "masked_lm") or not isinstance(model, PooledClassifier):
        return None
    width = exp.data.max_length
    if unsupported(model.config, width) is not None:
        return None
    train = load_arrays(data.path, "train")
    few = sorted(range(min(len(train.ids), 256)), key=lambda i: len(train.ids[i]))[:8]
    types = [train.types[i] for i in few] if uses_token_types(model) and train.types is not None else None
    return None if check(model, [train.ids[i] for i in few], width, data.pad_id, types) else position_offset(model)


def step_batches(exp: ExperimentConfig, data: PreparedData, offset: int | None = None, types: bool = False) -> Iterator[MicroBatches]:
    """Each optimizer step's micro-batches, when the step comes: padded as the worker pads them, or
    packed as it packs them where ``offset`` (``packing_offset``) is given; ``types``: with the
    segment ids of text pairs."""
    from lbsearch.trial.batching import pad
    from lbsearch.trial.packing import pack
    from lbsearch.trial.training import lm_settings

    train = load_arrays(data.path, "train")
    dev, multiple = device_of(exp), pad_multiple(exp)
    mlm = lm_settings(exp, worker_spec(exp, data))
    for step, cuts in enumerate(step_layout(exp, train), 1):
        if mlm is not None:  # packed sequences; masks seeded as the worker seeds them
            yield [lm_batch(exp.task, np.stack([train.ids[i] for i in c]), dev, np.random.default_rng([exp.seed, step, int(c[0])]), mlm)
                   for c in cuts]
            continue
        micro = []
        for c in cuts:
            seqs, segs = [train.ids[i] for i in c], [train.types[i] for i in c] if types else None
            inputs = (pack(seqs, exp.data.max_length, data.pad_id, dev, segs, offset, multiple) if offset is not None
                      else pad(seqs, data.pad_id, dev, segs, multiple))
            micro.append((inputs, torch.as_tensor(train.labels[c], device=dev)))
        yield micro


def optimizer_and_schedule(exp: ExperimentConfig, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """The worker's optimizer (``make_optimizer``) and schedule (``make_scheduler``), from the trial plan."""
    from lbsearch.trial.training import make_optimizer, make_scheduler

    plan = make_plan(exp)
    optimizer = make_optimizer(exp, model, plan.lr)
    return optimizer, make_scheduler(exp.schedule, optimizer, plan.warmup_steps, plan.steps)


def bare_model(exp: ExperimentConfig, data: PreparedData) -> torch.nn.Module:
    """A fresh model on the trial's device, seeded as the worker seeds it."""
    from accelerate.utils import set_seed

    set_seed(exp.seed)
    return new_model(exp, data).to(device_of(exp)).train()


def bare_step(exp: ExperimentConfig, data: PreparedData, model: torch.nn.Module | None = None) -> Callable[[MicroBatches], float]:
    """A function doing one optimizer step of ``model`` (default: a fresh ``bare_model``); returns its loss."""
    dev = device_of(exp)
    model = bare_model(exp, data) if model is None else model
    optimizer, scheduler = optimizer_and_schedule(exp, model)
    clip = exp.train.clip_norm or math.inf
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(exp.launcher.precision)
    if half is torch.float16:
        raise SystemExit("the bare loop has no fp16 loss scaling: use --precision no or bf16")

    def step(micro: MicroBatches) -> float:
        total = 0.0
        for batch, labels in micro:
            with torch.autocast(dev.type, dtype=half or torch.bfloat16, enabled=half is not None):
                logits = model(**batch).logits
            if exp.task == "causal_lm":  # the next token of every position but the last
                logits, labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
            (loss / len(micro)).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return total / len(micro)

    return step


def bare_loop(exp: ExperimentConfig, data: PreparedData, pack: bool = True) -> dict[str, Any]:
    """The bare loop's steady samples/s and per-step losses; its micro-batches packed where a trial of
    ``exp`` packs them (``pack=False``: padded whatever the trial does)."""
    model = bare_model(exp, data)
    offset = packing_offset(exp, data, model) if pack else None
    types = uses_token_types(model) and load_arrays(data.path, "train").types is not None
    step = bare_step(exp, data, model)
    ends, losses = [time.perf_counter()], []
    for micro in step_batches(exp, data, offset, types):
        losses.append(step(micro))
        ends.append(time.perf_counter())
    return steady_rates(ends, exp.train.batch_size, warmup_steps(exp)) | {"losses": losses, "packed": offset is not None}
