"""One trial: the process that ``accelerate launch`` starts (once per rank), and its training loop (``Trial.step``).

    accelerate launch --num_processes P --mixed_precision bf16 -m lbsearch.trial.worker spec.json

``spec.json`` is a ``protocol.WorkerSpec``. Rank 0 owns the Optuna trial and the metric stream;
every rank takes the stop decision (pruned / diverged) at the same optimizer step. The trial is
build -> (step, evaluate at the plan's points) -> finish; each step runs accumulate -> backward ->
clip (pre-clip norm) -> finiteness and divergence guard -> optimizer step -> schedule, and reads its values
on the host only at read points (``lbsearch.trial.readings``): log and the stop decision there.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lbsearch.trial.standby as standby
from lbsearch.data import TOKENIZER_DIR
from lbsearch.link import Reporter, watch_parent
from lbsearch.spec import (
    DIVERGED_REASON,
    EVAL,
    FLAG,
    GNS_B_SIMPLE,
    GNS_B_SIMPLE_TOKENS,
    INTERRUPTED,
    NOISE_SCALE,
    PAUSED,
    PROGRESS_SAMPLES,
    PROGRESS_STEP,
    PROGRESS_TOKENS,
    START,
    TEST,
    TRAIN_BATCH_SIZE,
    TRAIN_CLIP_FRAC,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
    TRAIN_MFU,
    TRAIN_SAMPLES_PER_S,
    TRAIN_SKIPPED_STEPS,
    TRAIN_TOKENS_PER_S,
    VAL,
    ExperimentConfig,
    TrialResult,
    WorkerSpec,
    failure,
    make_plan,
    sample_unit,
    stream_start,
    write_result,
)
from lbsearch.trial.batching import pad, sample_stream, step_micro_batches, to_device
from lbsearch.trial.checkpoint import Checkpoints, StopSignal
from lbsearch.trial.diagnostics import GradientNoiseMonitor
from lbsearch.trial.distill import make_loss
from lbsearch.trial.distributed import average_over_ranks, keep_until_exit, make_accelerator, max_over_ranks, placement, prepare, stop_code, sum_over_ranks
from lbsearch.trial.flops import flop_count, peak_flops, speed, step_flops
from lbsearch.trial.lm import LMEvaluator, lm_batch
from lbsearch.trial.packing import pack, packing_offset
from lbsearch.trial.readings import CONTINUE, DIVERGED, OVERFLOW, PAUSE, PRUNED, Readings
from lbsearch.trial.resize import check_resizable, in_samples, phase_ends, replan
from lbsearch.trial.rung import pause_at_rung
from lbsearch.trial.standby import ahead, serve
from lbsearch.trial.training import (
    Evaluator,
    cpu_fp16,
    lm_settings,
    make_optimizer,
    make_scheduler,
    maybe_inject_oom,
    maybe_inject_overflow,
    maybe_inject_save_error,
    probe_micro_batch,
    training_targets,
)

REASONS = {DIVERGED: DIVERGED_REASON, PRUNED: "pruned", OVERFLOW: "overflow", PAUSE: PAUSED}


class Trial:
    """The state of one training run on one rank."""

    def __init__(self, spec: WorkerSpec, log=print) -> None:
        from accelerate.utils import set_seed

        from lbsearch.data import load_arrays
        from lbsearch.trial.model import PooledClassifier, build_model, uses_token_types

        self.t_start, self.spec = time.time(), spec
        self.exp = exp = ExperimentConfig.model_validate(spec.experiment)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        launcher = exp.launcher
        self.acc = make_accelerator(launcher.precision, launcher.cpu, launcher.compile, Path(spec.data_path).parent)  # the file's FSDP / DeepSpeed / dynamo
        cpu_fp16(self.acc)  # before prepare: the model's forward is wrapped in the autocast this turns on
        self.pad_multiple = launcher.pad_to_multiple_of or (16 if launcher.compile else 1)
        self.say = log if self.acc.is_main_process else (lambda *a, **k: None)
        self.rep = Reporter(spec, self.acc.is_main_process)
        self.rep.tags({START: f"forked from standby process {standby.forked_from}" if standby.forked_from else "launched"}
                      | placement(self.acc.device))
        set_seed(exp.seed)  # before the model: the classifier head (or the whole model) is random
        self.data = {s: load_arrays(spec.data_path, s) for s in ("train", "validation", "test")}
        self.pad_id, self.num_labels = spec.pad_id, spec.num_labels
        self.labels = spec.labels or {"names": [str(i) for i in range(spec.num_labels)]}
        self.lm = lm_settings(exp, spec)  # None for a classifier
        self.unit = sample_unit(exp.task, exp.data.max_length)  # tokens per sample: pruning and targets in tokens for language models
        model = build_model(exp.model, exp.task, self.labels["names"], spec.vocab_size, spec.pad_id)
        self.use_types = uses_token_types(model) and self.data["train"].types is not None
        self.pack_offset = packing_offset(self, model, isinstance(model, PooledClassifier))  # None: padded
        limit, plan = exp.launcher.max_micro_batch, make_plan(exp, world)
        if limit is None:  # up to the largest B of a batch schedule
            limit = probe_micro_batch(self.acc, model, exp, plan.largest_batch // world, Path(spec.data_path).parent, self.say)
            set_seed(exp.seed)  # the probe must not change what training sees
        self.plan = plan.with_limit(limit)
        self.say(f"{self.plan}; device {self.acc.device}")
        self.count_flops = flop_count(model)
        if launcher.peak_tflops:
            self.peak, how = launcher.peak_tflops * 1e12, "launcher.peak_tflops"
        else:
            self.peak, how = peak_flops(self.acc.device, launcher.precision, Path(spec.data_path).parent)
        self.say(f"MFU: {self.count_flops}; peak {self.peak / 1e12:.3g} TFLOP/s per process ({how})" if self.peak else f"MFU: {how}")
        self.rep.plan(self.plan.to_dict())
        self._build_optimization(model)
        self.evals, self.phase_ends = dict(self.plan.evals), phase_ends(self.plan)
        self.result: dict[str, Any] = {"state": "complete", "reason": None, "steps": 0, "samples": 0, "evals": []}
        self.last_eval: dict[str, float] | None = None
        self.t_train, self.t_first_step = 0.0, None
        self.t_mark, self.samples_mark = time.time(), 0
        self.work = np.zeros(4)  # this rank's FLOPs and tokens: since the last evaluation, then in all

    def _build_optimization(self, model: torch.nn.Module) -> None:
        exp, plan, acc = self.exp, self.plan, self.acc
        self.batch = plan.batch  # the split every step lays out (built once, not per step; a batch schedule's change: resize.replan)
        acc.gradient_accumulation_steps = plan.accumulation
        check_resizable(acc, plan)
        optimizer = make_optimizer(exp, model, plan.lr)
        if plan.phases:  # a batch schedule: warmup and decay in samples, lr per phase
            self.scheduler = in_samples(make_scheduler(exp.schedule, optimizer, plan.samples_at(plan.warmup_steps), plan.samples_at(plan.steps)), optimizer, plan)
        else:
            self.scheduler = make_scheduler(exp.schedule, optimizer, plan.warmup_steps, plan.steps)
        self.model, self.optimizer = prepare(acc, model, optimizer, plan.micro_batch, exp.train.clip_norm)  # DeepSpeed: its config gets B's split and clipping
        tr = exp.train
        self.readings = Readings(optimizer, acc.scaler, tr.divergence_factor, tr.max_skipped_steps, tr.clip_norm, tr.log_every_steps,
                                 acc.num_processes, self.say, slowest=lambda seconds: max_over_ranks(acc, seconds))
        self.gns = GradientNoiseMonitor(acc, self.model, plan.batch_size, plan.micro_batch, plan.accumulation, tr.noise_scale_ema,
                                        tr.noise_scale_every, enabled=tr.noise_scale)
        if tr.noise_scale and not self.gns.active:
            self.say(f"gradient noise scale: not measured ({self.gns.off_reason})")
            self.rep.tags({NOISE_SCALE: f"off: {self.gns.off_reason}"})
        train = self.data["train"]
        self.lengths = np.fromiter((len(x) for x in train.ids), dtype=np.int64, count=len(train.ids))
        self.targets = None if self.lm else training_targets(train.labels, exp.task, self.labels.get("shift", 0.0), self.labels.get("scale", 1.0))
        self.loss = make_loss(acc, self.spec, exp, train, self.labels, self.say, self.rep.tags)  # the task's, or distillation's (lbsearch.trial.distill)
        self.stream = sample_stream(len(train.ids), plan.batch_size, plan.steps, exp.seed, stream_start(exp.branching), plan.phases)  # a branch: on from its point
        self.evaluate_val = self._evaluator("validation")
        maybe_inject_oom(plan.micro_batch)
        self.model.train()

    def _evaluator(self, split: str) -> Evaluator:
        acc = self.acc
        if self.lm:
            return LMEvaluator(self.data[split], self.exp.task, 2 * self.plan.micro_batch, acc.process_index, acc.num_processes,
                               self.exp.data.split_seed, self.lm)
        return Evaluator(self.data[split], self.exp.task, self.labels, self.exp.metric.threshold, 2 * self.plan.micro_batch,
                         acc.process_index, acc.num_processes, self.use_types)

    def step(self, step: int, read: bool = False) -> int:
        """One optimizer step, in order: micro-batch layout -> accumulate (forward, backward) -> clip ->
        finiteness and divergence guard -> optimizer step (skipped on the device by the guard, or by the
        fp16 GradScaler) -> schedule -> at a read point (``read``: a checkpoint's step), log and decide.
        Returns CONTINUE, DIVERGED or OVERFLOW (the same on every rank); between read points, CONTINUE."""
        replan(self, step)  # a batch schedule's change of B
        micro = self._layout(step)
        loss_sum = sum(self._accumulate(idx, step) for idx in micro)
        maybe_inject_overflow(self.model, step)
        norm = self._clip()
        loss = average_over_ranks(self.acc, loss_sum / self.batch.accumulation)  # the loss of all B samples
        self.loss.close_step(step, self.batch.accumulation)
        code = self.readings.before_optimizer(step, loss, norm)
        if code == CONTINUE:
            self._optimizer_step()
        self.readings.after_optimizer(self.scheduler.get_last_lr()[0])
        if self.readings.due(step, self.plan.steps, read or step in self.evals or step in self.phase_ends or self.t_first_step is None):
            code = self.read()
        return code

    def _layout(self, step: int) -> list[np.ndarray]:
        """This rank's micro-batches of the step (sample indices), and the step's FLOPs and tokens counted."""
        micro = step_micro_batches(self.stream[step - 1], self.lengths, self.batch, self.acc.process_index, self.gns.begin(step))
        flops, tokens = step_flops(self.count_flops, self.lengths, micro)
        self.work += (flops, tokens, flops, tokens)
        return micro

    def _accumulate(self, idx: np.ndarray, step: int) -> torch.Tensor:
        """Forward and backward of one micro-batch, gradients accumulated; returns its loss (float64, on the device)."""
        batch, targets = self._inputs(idx, step)
        with self.acc.accumulate(self.model):
            loss = self.loss.loss(self.model(**batch).logits, targets, idx)
            self.acc.backward(loss)
            self.gns.after_backward()
        return loss.detach().double()

    def _clip(self) -> torch.Tensor:
        """Clip to ``train.clip_norm``; returns the pre-clip norm (unscaled, on the device): what is logged and checked."""
        norm = self.acc.clip_grad_norm_(self.model.parameters(), self.exp.train.clip_norm or math.inf)
        norm = torch.as_tensor(norm, dtype=torch.float64, device=self.acc.device)
        self.gns.step(norm)
        return norm

    def _optimizer_step(self) -> None:
        """Under a GradScaler an overflow step is skipped by ``optimizer.step`` and the scale lowered;
        a skipped step does not advance the schedule."""
        self.optimizer.step()
        if self.readings.skipped_in_row == 0:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def read(self) -> int:
        """A read point: the steps since the last one become metric rows (one per step, as if each had been
        read at once); returns the stop code, and the trial's steps are those up to the step that stops it."""
        rows, code, last = self.readings.read()
        fp16 = {TRAIN_SKIPPED_STEPS: self.readings.skipped} if self.acc.scaler is not None else {}  # fp16 reads every step
        for r, clip_frac in rows:
            seen, B = self.plan.samples_at(r.step), {TRAIN_BATCH_SIZE: self.plan.phase_at(r.step)[0]} if self.plan.phases else {}
            self.rep.metrics({TRAIN_LOSS: r.loss, TRAIN_LR: r.lr, TRAIN_GRAD_NORM: r.grad_norm, TRAIN_CLIP_FRAC: clip_frac,
                              PROGRESS_SAMPLES: seen, PROGRESS_STEP: r.step} | fp16 | B | self.loss.row(r.step), seen, r.ms)
        self.gns.settle(last)
        self.t_first_step = self.t_first_step or time.time() - self.t_start
        self.result["steps"], self.result["samples"] = last, self.plan.samples_at(last)
        return code

    def _inputs(self, idx: np.ndarray, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One micro-batch's model inputs and targets (a language model's masks seeded by seed, step and first sample)."""
        train, device = self.data["train"], self.acc.device
        if self.lm:
            rng = np.random.default_rng([self.exp.seed, step, int(idx[0])]) if self.exp.task == "masked_lm" else None
            return lm_batch(self.exp.task, np.stack([train.ids[i] for i in idx]), device, rng, self.lm)
        seqs, types = [train.ids[i] for i in idx], [train.types[i] for i in idx] if self.use_types else None
        if self.pack_offset is not None:  # the outputs come back in idx's order, as the targets are
            batch = pack(seqs, self.exp.data.max_length, self.pad_id, device, types, self.pack_offset, self.pad_multiple)
        else:
            batch = pad(seqs, self.pad_id, device, types, self.pad_multiple)
        return batch, to_device(self.targets[idx], device)

    def evaluate(self, step: int) -> int:
        """Validation at an evaluation point; returns CONTINUE or PRUNED (the same on every rank)."""
        now, seen, metric = time.time(), self.plan.samples_at(step), self.exp.metric
        self.t_train += now - self.t_mark
        sps = (seen - self.samples_mark) / max(now - self.t_mark, 1e-9)
        speed = self._speed(self.work[:2], now - self.t_mark)
        self.work[:2] = 0
        m = self.evaluate_val(self.acc, self.model, self.pad_id)
        self.last_eval, value, noise = m, m[metric.name], self.gns.metrics(self.unit if self.lm else None)
        self.rep.metrics({TRAIN_SAMPLES_PER_S: sps} | speed | {EVAL + k: v for k, v in m.items()} | noise
                         | ({PROGRESS_TOKENS: seen * self.unit} if self.lm else {}), seen)
        self.rep.flush()
        self.result["evals"].append({"step": step, "samples": seen, "nominal_samples": self.evals[step], **m, **noise})
        if noise.get(GNS_B_SIMPLE) is not None:
            self.result |= {"b_simple": noise[GNS_B_SIMPLE], "b_simple_tokens": noise.get(GNS_B_SIMPLE_TOKENS)}
        sign = 1 if metric.direction == "maximize" else -1
        if metric.target is not None and "samples_to_target" not in self.result and sign * (value - metric.target) >= 0:
            self.result["samples_to_target"], self.result["steps_to_target"] = seen, step
            self.result["tokens_to_target"] = seen * self.unit if self.lm else None
            self.rep.metrics({"samples_to_target": seen, "steps_to_target": step} | ({"tokens_to_target": seen * self.unit} if self.lm else {}), seen)
        done = f"tokens {seen * self.unit:,}/{self.plan.budget_samples * self.unit:,}" if self.lm else f"samples {seen}/{self.plan.budget_samples}"
        self.say(f"{done} loss {self.readings.loss:.4f} eval {metric.name} {value:.4f} "
                 f"lr {self.scheduler.get_last_lr()[0]:.2e} {sps:.0f} samples/s {speed[TRAIN_TOKENS_PER_S]:.0f} tokens/s"
                 + (f" MFU {speed[TRAIN_MFU]:.1%}" if TRAIN_MFU in speed else ""))
        code = PRUNED if self.rep.should_prune(value, self.evals[step] * self.unit) and step < self.plan.steps else CONTINUE
        code = stop_code(self.acc, code)
        self.t_mark, self.samples_mark = time.time(), seen
        return code

    def _speed(self, work: np.ndarray, seconds: float) -> dict[str, float]:
        """Tokens/s of all ranks and MFU (their FLOPs over ``seconds`` x each rank's peak) for ``work``
        = (FLOPs, tokens) of this rank. A collective: every rank calls it at the same point."""
        flops, tokens = sum_over_ranks(self.acc, [float(work[0]), float(work[1])])
        out, self.peak = speed(flops, tokens, seconds, self.acc.num_processes, self.peak, self.say)
        return out

    def stop(self, code: int) -> None:
        """Stop at the trial's last read step (``result["steps"]``: for a divergence, the step that diverged)."""
        self.result["state"], self.result["reason"], step, r = "pruned", REASONS[code], self.result["steps"], self.readings
        if code == DIVERGED:
            self.say(f"diverged at step {step}: loss {r.loss:.4g} (first {r.first_loss:.4g}), grad norm {r.grad_norm:.4g}")
        if code == OVERFLOW:
            self.say(f"stopped at step {step}: the GradScaler skipped {r.skipped_in_row} steps in a row (train.max_skipped_steps "
                     f"{self.exp.train.max_skipped_steps})")

    def finish(self) -> TrialResult:
        r, plan = self.result, self.plan
        r |= {"first_step_s": self.t_first_step, "train_s": self.t_train, "samples_per_s": r["samples"] / self.t_train if self.t_train else None}
        if self.t_train:  # over the evaluation intervals, as samples/s (a stop between evaluations leaves its steps out)
            speed = self._speed(self.work[2:] - self.work[:2], self.t_train)
            r |= {"tokens_per_s": speed[TRAIN_TOKENS_PER_S], "mfu": speed.get(TRAIN_MFU)}
        if r["state"] == "complete":
            r["validation"] = self.last_eval or self.evaluate_val(self.acc, self.model, self.pad_id)
            r["test"] = self._evaluator("test")(self.acc, self.model, self.pad_id)
            r["value"] = r["validation"][self.exp.metric.name]
            self.rep.metrics({VAL + k: v for k, v in r["validation"].items()} | {TEST + k: v for k, v in r["test"].items()}, r["samples"])
            if self.spec.model_dir:
                try:  # a model that cannot be saved does not undo a finished trial
                    r["model_dir"] = self._save(Path(self.spec.model_dir), r)
                except Exception as err:  # noqa: BLE001 - reported, the result stands
                    r["model_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                    self.say(f"model not saved: {r['model_error']}")
        r["skipped_steps"] = self.readings.skipped if self.acc.scaler is not None else None
        self.rep.flush()
        r["plan"], r["wall_s"] = plan.to_dict(), time.time() - self.t_start
        self.acc.end_training()
        if self.acc.device.type == "cpu" and self.acc.num_processes == 1 and not self.exp.launcher.peak_tflops:
            peak_flops(self.acc.device, self.exp.launcher.precision, Path(self.spec.data_path).parent, recheck=True)  # for the next trials
        return TrialResult.model_validate(r)

    def _save(self, folder: Path, r: dict[str, Any]) -> str:
        """Rank 0 saves the trained model (``lbsearch.trial.model.save_model``) once every rank is done."""
        from lbsearch.trial.model import save_model

        full = self.acc.get_state_dict(self.model) if self.acc.distributed_type == "FSDP" else None  # gathers the shards: every rank
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            names = [str(n) for n in self.labels["names"]]
            info = {"max_length": self.exp.data.max_length, "precision": self.exp.launcher.precision, "eval_batch_size": 2 * self.plan.micro_batch,
                    "validation": r["validation"], "test": r["test"], "task": self.exp.task, "labels": self.labels,
                    "threshold": self.exp.metric.threshold}
            maybe_inject_save_error()
            trained = Path(self.spec.data_path) / TOKENIZER_DIR
            save_model(self.acc.unwrap_model(self.model, keep_fp32_wrapper=False, keep_torch_compile=False), folder, names, self.exp.model, info,
                       state_dict=full, tokenizer_dir=trained if trained.is_dir() else None)
            self.say(f"model saved in {folder}")
        return str(folder)


def train(spec: WorkerSpec, *, log=print, stop: StopSignal | None = None) -> TrialResult:
    trial = Trial(spec, log)
    if trial.acc.num_processes > 1:
        keep_until_exit(trial)
    saver = Checkpoints(trial, spec.checkpoint_dir, stop)
    for step in range(saver.resume() + 1, trial.plan.steps + 1):
        code = trial.step(step, read=saver.due(step))
        if code == CONTINUE and step in trial.evals:
            code = pause_at_rung(trial, saver, step, trial.evaluate(step))  # asha_promote: a checkpoint at its rung, then paused
        if code != CONTINUE:
            trial.stop(code)
            break
        if saver.after_step(step, read=trial.readings.last_read == step):  # SIGTERM: a checkpoint was written; a re-run resumes from it
            trial.result["state"], trial.result["reason"] = "failed", INTERRUPTED
            break
    return trial.finish()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[0] == FLAG:  # the standby process (lbsearch.orchestrator.standby): the imports, then a child per trial
        return serve(ahead(Path(argv[1])), main)
    spec = WorkerSpec.model_validate_json(Path(argv[0]).read_text())
    if spec.watch_pid:
        watch_parent(spec.watch_pid)
    if not standby.forked_from:  # a forked trial has them: imported here too, its times do not depend on how it started
        standby.preload(ahead(Path(argv[0])))
    try:
        stop = StopSignal()  # SIGTERM from here on is the trial's result (interrupted), not a silent death
        result, code = train(spec, log=lambda *a: print(*a, flush=True), stop=stop), 0
    except BaseException as err:  # noqa: BLE001 - any failure is the trial's result, reported once
        traceback.print_exc()
        result, code = failure(err), 1
    if int(os.environ.get("RANK", "0")) == 0 and spec.result:
        write_result(spec.result, result)
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is written and the process group ended: the interpreter's teardown (~0.9 s of
    # torch and transformers finalisers) would only delay the orchestrator's tell.
    os._exit(code)
