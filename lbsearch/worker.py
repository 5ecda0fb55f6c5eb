"""One trial: the process that ``accelerate launch`` starts (once per rank).

    accelerate launch --num_processes P --mixed_precision bf16 -m lbsearch.worker trial.json

``trial.json`` holds the fully resolved experiment, where the tokenized data is cached, and
(optionally) the Optuna trial and MLflow run to report to. Rank 0 owns both; every rank takes the
stop decision (pruned / diverged) at the same optimizer step. The outcome goes to a result JSON
that the orchestrator reads; the process exit code only says whether that file was written.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbsearch.batching import eval_points, plan_batch, sample_stream, step_micro_batches
from lbsearch.config import ExperimentConfig, lr_for_batch
from lbsearch.diagnostics import GradientNoiseMonitor

CONTINUE, DIVERGED, PRUNED = 0, 1, 2
METRICS_MARK = "@@lbsearch-metrics "
REASONS = {DIVERGED: "diverged", PRUNED: "pruned"}


# ----------------------------------------------------------------------------------------------
# Reporting: Optuna and MLflow, or nothing (reproduce / train runs have no Optuna trial)


class Reporter:
    """Rank 0's link to the Optuna trial and the MLflow run. Every method is safe to call on a
    reporter with neither: the loop never asks whether reporting is on."""

    def __init__(self, spec: dict[str, Any], is_main: bool) -> None:
        self.trial = None
        self.tracking = bool(spec.get("mlflow")) and is_main
        self._buffer: list[list[Any]] = []
        if not is_main:
            return
        if spec.get("optuna"):
            import optuna

            from lbsearch.search import make_pruner, open_storage
            from lbsearch.config import PrunerConfig

            o = spec["optuna"]
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            exp = spec["experiment"]["train"]
            pruner = make_pruner(PrunerConfig(**o["pruner"]), eval_every=exp["eval_every_samples"], budget=exp["budget_samples"])
            study = optuna.load_study(study_name=o["study_name"], storage=open_storage(o["storage"]), pruner=pruner)
            self.trial = optuna.trial.Trial(study, o["trial_id"])
    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.tracking:
            return
        now = int(time.time() * 1000)
        self._buffer += [[k, float(v), now, step] for k, v in values.items() if v is not None and math.isfinite(v)]

    def flush(self) -> None:
        """Metrics travel to the orchestrator as one stdout line; it owns the MLflow client, so the
        trial process never imports MLflow and the tracking store has a single writer per trial."""
        if not self.tracking or not self._buffer:
            return
        print(METRICS_MARK + json.dumps(self._buffer), flush=True)
        self._buffer.clear()

    def report(self, value: float, samples: int) -> bool:
        """Report an intermediate value at ``samples`` seen; True when the trial should be pruned."""
        if self.trial is None:
            return False
        self.trial.report(value, step=samples)
        return self.trial.should_prune()


def _watch(pid: int) -> None:
    """Exit when the orchestrator dies, so that no orphan trial keeps the CPU or GPU."""

    def loop() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass

    threading.Thread(target=loop, daemon=True, name="lbsearch-watchdog").start()


# ----------------------------------------------------------------------------------------------
# Training


def _pad(seqs: list[np.ndarray], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (all 1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(exp: ExperimentConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    o = exp.optimizer
    groups = _param_groups(model, o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps)
    import pytorch_optimizer

    if o.name == "lamb":
        # max_grad_norm=0 turns LAMB's own clipping off: the clip dimension is train.clip_norm only.
        return pytorch_optimizer.Lamb(groups, lr=lr, betas=(o.beta1, o.beta2), eps=o.eps, max_grad_norm=0.0)
    return pytorch_optimizer.LARS(groups, lr=lr, momentum=o.beta1)


class Evaluator:
    """Exact evaluation across ranks: each rank scores a disjoint shard of the length-sorted split,
    and per-class counts and loss sums are summed, so the metric equals the 1-process value."""

    def __init__(self, split, num_labels: int, micro_batch: int, rank: int, world: int) -> None:
        ids = split.ids
        order = np.argsort([len(s) for s in ids], kind="stable")[rank::world]
        self.ids = [ids[i] for i in order]
        self.labels = split.labels[order]
        self.k = num_labels
        self.mb = micro_batch

    @torch.no_grad()
    def __call__(self, accelerator, model, pad_id: int) -> dict[str, float]:
        model.eval()
        dev = accelerator.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        conf = torch.zeros((self.k, self.k), dtype=torch.float64, device=dev)  # [true, pred]
        for i in range(0, len(self.ids), self.mb):
            batch = _pad(self.ids[i : i + self.mb], pad_id, dev)
            y = torch.as_tensor(self.labels[i : i + self.mb], device=dev)
            logits = model(**batch).logits.float()
            loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            conf.index_put_((y, logits.argmax(-1)), torch.ones(len(y), dtype=torch.float64, device=dev), accumulate=True)
        model.train()
        loss_sum, conf = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(conf, "sum")
        n = conf.sum().item()
        tp = conf.diag()
        f1 = (2 * tp / (conf.sum(0) + conf.sum(1)).clamp(min=1)).mean().item()
        return {"loss": loss_sum.item() / n, "accuracy": (tp.sum() / n).item(), "f1": f1}


def _mean_over_ranks(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t)
    return t.item() / accelerator.num_processes


def _maybe_inject_oom(micro_batch: int) -> None:
    """Tests set LBSEARCH_INJECT_OOM_ABOVE=N to make micro-batches above N "run out of memory" on CPU."""
    limit = int(os.environ.get("LBSEARCH_INJECT_OOM_ABOVE", "0"))
    if limit and micro_batch > limit:
        raise torch.OutOfMemoryError(f"out of memory (injected: micro-batch {micro_batch} > {limit})")


def probe_micro_batch(accelerator, model, exp: ExperimentConfig, per_process: int, cache_dir: Path, say) -> int:
    """The largest micro-batch (powers of two, up to the per-process batch) whose forward and backward
    at full sequence length fit in memory; cached per model, length, precision and device. Every rank
    probes its own device and all take the smallest result."""
    import hashlib

    device = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "cpu"
    key_src = json.dumps([exp.model.model_dump(mode="json"), exp.data.max_length, exp.launcher.precision, device, torch.__version__], sort_keys=True)
    cache = cache_dir / f"probe-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.json"
    found = json.loads(cache.read_text()) if cache.is_file() else None
    if found and (found["limit"] < found["upper"] or found["upper"] >= per_process):
        limit, how = min(found["limit"], per_process), f"cached in {cache.name}"
    else:
        model.to(accelerator.device).train()
        limit, size = 0, 1
        ids = torch.full((per_process, exp.data.max_length), 100, dtype=torch.long, device=accelerator.device)
        while size <= per_process:
            try:
                _maybe_inject_oom(size)
                with accelerator.autocast():
                    out = model(input_ids=ids[:size], attention_mask=torch.ones_like(ids[:size])).logits
                out.float().sum().backward()
                limit = size
            except torch.OutOfMemoryError:
                break
            finally:
                model.zero_grad(set_to_none=True)
                if accelerator.device.type == "cuda":
                    torch.cuda.empty_cache()
            size *= 2
        if limit == 0:
            raise torch.OutOfMemoryError("out of memory at micro-batch 1 (probe)")
        how = "probed"
    if accelerator.num_processes > 1:
        t = torch.tensor([limit], device=accelerator.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        limit = int(t.item())
    if accelerator.is_main_process and how == "probed":
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"limit": limit, "upper": per_process, "device": device}))
        os.replace(tmp, cache)
    say(f"micro-batch limit {limit} ({how})")
    return limit


def _stop_code(accelerator, code: int) -> int:
    """The largest stop code over ranks: every rank stops at the same step, for the same reason."""
    if accelerator.num_processes == 1:
        return code
    t = torch.tensor([code], device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def train(spec: dict[str, Any], *, log=print) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from lbsearch.data import load_arrays
    from lbsearch.model import build_model

    exp = ExperimentConfig.model_validate(spec["experiment"])
    t_start = time.time()
    launcher, tr = exp.launcher, exp.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # cpu=True also selects Accelerate's multi-CPU (gloo) mode when torchrun started several ranks
    cpu = launcher.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=launcher.precision, cpu=cpu)
    main = accelerator.is_main_process
    say = log if main else (lambda *a, **k: None)
    rep = Reporter(spec, main)

    set_seed(exp.seed)  # before the model: the classifier head (or the whole model) is random
    data = {s: load_arrays(spec["data_path"], s) for s in ("train", "validation", "test")}
    pad_id = spec["pad_id"]
    model = build_model(exp.model, spec["num_labels"], spec["vocab_size"])
    limit = launcher.max_micro_batch
    if limit is None:
        limit = probe_micro_batch(accelerator, model, exp, tr.batch_size // world, Path(spec["data_path"]).parent, say)
        set_seed(exp.seed)  # the probe must not change what training sees
    plan = plan_batch(tr.batch_size, world, limit)
    accelerator.gradient_accumulation_steps = plan.accumulation
    say(f"{plan}; precision {launcher.precision}; device {accelerator.device}")
    lr = lr_for_batch(exp.optimizer, tr.batch_size)
    optimizer = make_optimizer(exp, model, lr)
    steps = tr.budget_samples // tr.batch_size
    warmup = exp.schedule.warmup_samples if exp.schedule.warmup_fraction is None else exp.schedule.warmup_fraction * steps * tr.batch_size
    name = {"constant": "constant_with_warmup"}.get(exp.schedule.name, exp.schedule.name)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=round(warmup / tr.batch_size), num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    gns = GradientNoiseMonitor(accelerator, model, tr.batch_size, plan.micro_batch, plan.accumulation, tr.noise_scale_ema, tr.noise_scale_every) if tr.noise_scale else None
    if gns is not None and not gns.active:
        say("gradient noise scale: not measured (one process without accumulation sees one batch size)")

    train_ids, train_labels = data["train"].ids, data["train"].labels
    train_len = np.fromiter((len(x) for x in train_ids), dtype=np.int64, count=len(train_ids))
    stream = sample_stream(len(train_ids), tr.batch_size, steps, exp.seed)
    evals = dict(eval_points(tr.budget_samples, tr.eval_every_samples, tr.batch_size))
    mb = plan.micro_batch
    evaluate_val = Evaluator(data["validation"], spec["num_labels"], 2 * mb, accelerator.process_index, accelerator.num_processes)
    rank = accelerator.process_index
    target = exp.metric.target
    sign = 1 if exp.metric.direction == "maximize" else -1

    result: dict[str, Any] = {"state": "complete", "reason": None, "steps": 0, "samples": 0, "evals": []}
    first_loss, clipped, t_train, t_mark, samples_mark = None, 0, 0.0, time.time(), 0
    t_first_step = None
    _maybe_inject_oom(plan.micro_batch)
    model.train()
    for step in range(1, steps + 1):
        micro = step_micro_batches(stream[step - 1], train_len, plan, rank, gns.begin(step) if gns is not None else 0)
        loss_sum = 0.0
        for idx in micro:
            batch = _pad([train_ids[i] for i in idx], pad_id, accelerator.device)
            labels = torch.as_tensor(train_labels[idx], device=accelerator.device)
            with accelerator.accumulate(model):
                loss = torch.nn.functional.cross_entropy(model(**batch).logits.float(), labels)
                accelerator.backward(loss)
                if gns is not None:
                    gns.after_backward()
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), tr.clip_norm or math.inf).item()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
        scheduler.step()
        if gns is not None:
            gns.step(grad_norm)
        step_loss = _mean_over_ranks(accelerator, loss_sum / plan.accumulation)  # the loss of all B samples
        if t_first_step is None:
            t_first_step = time.time() - t_start
        first_loss = step_loss if first_loss is None else first_loss
        clipped += int(tr.clip_norm is not None and grad_norm > tr.clip_norm)
        # loss and grad norm are global here, so every rank takes the same decision without a message
        bad = not (math.isfinite(step_loss) and math.isfinite(grad_norm)) or step_loss > tr.divergence_factor * first_loss
        code = DIVERGED if bad else CONTINUE
        seen = step * tr.batch_size
        now = time.time()
        rep.metrics(
            {
                "train/loss": step_loss,
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": grad_norm,
                "train/clip_frac": clipped / step,
                "progress/samples": seen,
            },
            step,
        )
        if code == CONTINUE and step in evals:
            t_train += now - t_mark
            sps = (seen - samples_mark) * 1.0 / max(now - t_mark, 1e-9)
            nominal = evals[step]
            m = evaluate_val(accelerator, model, pad_id)
            value = m[exp.metric.name]
            noise = gns.metrics() if gns is not None else {}
            rep.metrics({"train/samples_per_s": sps} | {f"eval/{k}": v for k, v in m.items()} | noise, step)
            rep.flush()
            result["evals"].append({"step": step, "samples": seen, "nominal_samples": nominal, **m, **noise})
            if noise.get("gns/b_simple") is not None:
                result["b_simple"] = noise["gns/b_simple"]
            if target is not None and "samples_to_target" not in result and sign * (value - target) >= 0:
                result["samples_to_target"], result["steps_to_target"] = seen, step
                rep.metrics({"samples_to_target": seen, "steps_to_target": step}, step)
            say(f"samples {seen}/{steps * tr.batch_size} loss {step_loss:.4f} eval {exp.metric.name} {value:.4f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {sps:.0f} samples/s")
            if main and rep.report(value, nominal) and step < steps:
                code = PRUNED
            code = _stop_code(accelerator, code)
            t_mark, samples_mark = time.time(), seen
        result["steps"], result["samples"] = step, seen
        if code != CONTINUE:
            result["state"], result["reason"] = "pruned", REASONS[code]
            if code == DIVERGED:
                say(f"diverged at step {step}: loss {step_loss:.4g} (first {first_loss:.4g}), grad norm {grad_norm:.4g}")
            break

    result["first_step_s"] = t_first_step
    result["train_s"] = t_train
    result["samples_per_s"] = result["samples"] / t_train if t_train else None
    if result["state"] == "complete":
        result["validation"] = result["evals"][-1] if result["evals"] else evaluate_val(accelerator, model, pad_id)
        evaluate_test = Evaluator(data["test"], spec["num_labels"], 2 * mb, accelerator.process_index, accelerator.num_processes)
        result["test"] = evaluate_test(accelerator, model, pad_id)
        result["value"] = result["validation"][exp.metric.name]
        rep.metrics({f"val/{k}": v for k, v in result["validation"].items()} | {f"test/{k}": v for k, v in result["test"].items()}, steps)
    rep.metrics({"train/clip_frac": clipped / max(result["steps"], 1)}, result["steps"])
    rep.flush()
    result["plan"] = {"micro_batch": plan.micro_batch, "accumulation": plan.accumulation, "processes": plan.processes, "max_micro_batch": limit}
    result["wall_s"] = time.time() - t_start
    accelerator.end_training()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    if spec.get("watch_pid"):
        _watch(int(spec["watch_pid"]))
    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["result"])
    try:
        result = train(spec, log=lambda *a: print(*a, flush=True))
    except BaseException as err:  # noqa: BLE001 - any failure is the trial's result, reported once
        if isinstance(err, KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
        traceback.print_exc()
        oom = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
        result = {"state": "failed", "reason": "out of memory" if oom else reason, "oom": oom, "error": reason}
        if rank == 0:
            _write(out, result)
        return 1
    if rank == 0:
        _write(out, result)
    return 0


def _write(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is written and the process group ended: the interpreter's teardown (~0.9 s of
    # torch and transformers finalisers) would only delay the orchestrator's tell.
    os._exit(code)
