"""The trial API: your own training code as an lbsearch trial. Torch-free at import.

Inside a process that lbsearch launched (an experiment of ``kind: script``), ``current()`` is the
trial: its values (B and its split, the lr after the scaling rule, warmup, budget, the script's own
``params``) and plan; ``log`` / ``report`` send metrics to the trial's MLflow run at samples seen (its
step: trials of different B line up at equal data) and the evaluation metric to Optuna;
``should_stop`` says, on every rank alike, whether to stop (pruned, diverged, interrupted);
``finish`` writes the result. Run by hand (``python train.py``), the same calls do nothing and
``values`` are the defaults given, so the script runs as without lbsearch::

    from lbsearch import api

    trial = api.current(defaults={"batch_size": 32, "lr": 1e-3})
    for step in range(1, steps + 1):
        ...                                   # one optimizer step of B samples
        trial.log({api.TRAIN_LOSS: loss}, samples=step * B)  # "train/loss"
        if step in eval_steps:
            trial.report({"accuracy": acc, "loss": val_loss}, samples=step * B)
            if trial.should_stop():           # every rank, at the same step
                break
    trial.finish()                            # the last report is the validation result

Only rank 0 sends metrics, reports to Optuna and writes the result; ``should_stop`` is a collective
when several ranks run (it all-reduces the decision over ``torch.distributed``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbsearch.link import Reporter
from lbsearch.spec import (
    DIVERGED_REASON,
    EVAL,
    INTERRUPTED,
    PROGRESS_SAMPLES,
    PROGRESS_STEP,
    TEST,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
    VAL,
    TrialResult,
    WorkerSpec,
    diverged,
    failure,
    write_result,
)

if TYPE_CHECKING:
    from lbsearch.spec import TrialPlan

__all__ = ["Trial", "current", "TRAIN_LOSS", "TRAIN_LR", "TRAIN_GRAD_NORM"]

_CONTINUE, _DIVERGED, _PRUNED, _INTERRUPTED = 0, 1, 2, 3
_REASONS = {_DIVERGED: DIVERGED_REASON, _PRUNED: "pruned", _INTERRUPTED: INTERRUPTED}
_current: "Trial | None" = None


class Trial:
    """One trial as user code sees it. Get it with ``current()``."""

    def __init__(self, spec: WorkerSpec | None, defaults: dict[str, Any] | None = None) -> None:
        self.rank, self.world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.active = spec is not None
        """True inside a trial that lbsearch launched."""
        self.values: dict[str, Any] = dict(defaults or {})
        """The trial's values (see ``lbsearch.spec.script.trial_values``) over ``defaults``; only ``defaults`` by hand."""
        self.plan: "TrialPlan | None" = None
        """The trial plan (micro-batch, accumulation, lr, steps, warmup, evaluation points); None by hand."""
        self.config: dict[str, Any] = {}
        """The resolved experiment of the trial; empty by hand."""
        self.stop_reason: str | None = None
        self.last_eval: dict[str, float] | None = None
        self._spec, self._code, self._signalled, self._written = spec, _CONTINUE, False, False
        self._samples = self._steps = 0
        self._first_loss: float | None = None
        self._reported: set[int] = set()
        self._result: dict[str, Any] = {}
        self._t0 = time.time()
        if spec is not None:
            self._attach(spec)

    def _attach(self, spec: WorkerSpec) -> None:
        from lbsearch.spec import ScriptExperimentConfig, make_plan, trial_values

        exp = ScriptExperimentConfig.model_validate(spec.experiment)
        self._exp, self.config = exp, spec.experiment
        self.plan = make_plan(exp)
        self.values |= trial_values(exp.model_copy(update={"script": exp.script.model_copy(update={"values": None})}), self.plan)
        self._rep = Reporter(spec, self.is_main)
        self._rep.plan(self.plan.to_dict())
        if self.is_main:
            print(f"lbsearch trial: {self.plan}", flush=True)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        if self._signalled:  # a second SIGTERM: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self._signalled = True

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def log(self, metrics: dict[str, float | None], *, samples: int, step: int | None = None) -> None:
        """Training metrics at ``samples`` seen (their MLflow step), with ``progress/samples`` and the
        optimizer step ``step`` (default samples // B) as ``progress/step``. A ``train/loss`` (or
        ``loss``) that is not finite, or above ``train.divergence_factor`` x its first value, stops the
        trial as diverged at the next ``should_stop``."""
        if not self.active:
            return
        step = self._at(samples, step)
        loss = metrics.get(TRAIN_LOSS, metrics.get("loss"))
        if loss is not None:
            self._first_loss = self._first_loss if self._first_loss is not None else loss
            if diverged(loss, self._first_loss, self._exp.train.divergence_factor):
                self._code = max(self._code, _DIVERGED)
        self._rep.metrics(dict(metrics) | {PROGRESS_SAMPLES: samples, PROGRESS_STEP: step}, samples)
        self._rep.flush(at_least=200)  # one line per ~200 rows between evaluations

    def report(self, metrics: dict[str, float], *, samples: int, step: int | None = None) -> None:
        """Evaluation metrics at ``samples`` seen (their MLflow step), logged as ``eval/<name>``; ``step``
        (default samples // B) is the optimizer step of ``steps_to_target``. The study's metric goes to
        Optuna at the evaluation point it reached (a multiple of ``train.eval_every_samples``, as in
        lbsearch's own loop), where the pruner may decide to stop the trial (``should_stop``)."""
        self.last_eval = {k.split("/")[-1].removeprefix("eval_"): float(v) for k, v in metrics.items()}
        if not self.active:
            return
        step = self._at(samples, step)
        self._rep.metrics({(k if "/" in k else EVAL + k): v for k, v in metrics.items()}, samples)
        value, m = self.last_eval.get(self._exp.metric.name), self._exp.metric
        # the evaluation points whose optimizer step has been reached (the last one is the budget itself)
        reached = [n for s, n in self.plan.evals if s * self.plan.batch_size <= samples and n not in self._reported]
        if value is not None and reached:
            self._reported.update(reached)
            if self._rep.should_prune(value, reached[-1]) and samples < self.plan.steps * self.plan.batch_size:
                self._code = max(self._code, _PRUNED)
        sign = 1 if m.direction == "maximize" else -1
        if value is not None and m.target is not None and "samples_to_target" not in self._result and sign * (value - m.target) >= 0:
            self._result |= {"samples_to_target": samples, "steps_to_target": step}
            self._rep.metrics({"samples_to_target": samples, "steps_to_target": step}, samples)
        self._rep.flush()

    def _at(self, samples: int, step: int | None) -> int:
        step = step if step is not None else max(1, samples // self.plan.batch_size)
        self._samples, self._steps = max(self._samples, samples), max(self._steps, step)
        return step

    def should_stop(self) -> bool:
        """Whether to stop now: pruned, diverged or interrupted. With several ranks, call it on every
        rank at the same point: the decision is all-reduced, so all ranks stop together."""
        if not self.active:
            return False
        code = max(self._code, _INTERRUPTED if self._signalled else _CONTINUE)
        if self.world_size > 1:
            code = _all_max(code)
        self._code = code
        self.stop_reason = _REASONS.get(code)
        return code != _CONTINUE

    def finish(self, validation: dict[str, float] | None = None, *, test: dict[str, float] | None = None) -> None:
        """Write the trial's result (rank 0): ``validation`` (default: the last ``report``) holds the
        study's metric; ``test`` is recorded beside it. A stopped trial is recorded as pruned (or failed
        when interrupted)."""
        if not self.active or self._written:
            return
        self._written = True
        val = {k: float(v) for k, v in (validation or self.last_eval or {}).items()}
        name = self._exp.metric.name
        r = self._result | {"state": "complete", "steps": self._steps, "samples": self._samples, "plan": self.plan.to_dict(),
                            "wall_s": time.time() - self._t0}
        if self.stop_reason is not None:  # the script stopped when asked; one that trained on is complete
            r |= {"state": "failed" if self._code == _INTERRUPTED else "pruned", "reason": self.stop_reason}
        elif name not in val:
            r |= {"state": "failed", "reason": f"finish() got no `{name}` (validation metrics: {sorted(val)})"}
        else:
            r |= {"validation": val, "test": test, "value": val[name]}
            self._rep.metrics({VAL + k: v for k, v in val.items()} | {TEST + k: v for k, v in (test or {}).items()},
                              self._samples)
        self._rep.flush()
        if self.is_main and self._spec.result:
            write_result(self._spec.result, TrialResult.model_validate(r))


def _all_max(code: int) -> int:
    """The largest stop code over the ranks (torch.distributed, as Accelerate set it up)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return code
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([code], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def current(defaults: dict[str, Any] | None = None) -> Trial:
    """The trial this process runs: a live one under lbsearch, a do-nothing one by hand.

    Args:
        defaults: The values the script uses when run by hand; under lbsearch the trial's values
            replace them (names as in ``lbsearch.spec.script.VALUE_NAMES`` plus the experiment's ``params``).
    """
    global _current
    if _current is None:
        from lbsearch.spec import SPEC_ENV

        path = os.environ.get(SPEC_ENV)
        _current = Trial(WorkerSpec.model_validate_json(Path(path).read_text()) if path else None, defaults)
    elif defaults:
        _current.values = dict(defaults) | _current.values
    return _current


def _close(code: int, error: BaseException | None = None) -> None:
    """After the script returned or raised (``lbsearch.integrations.run_script``): write the result it left unwritten."""
    from lbsearch.spec import SPEC_ENV

    trial = _current
    if trial is not None and trial.active and not trial._written and code == 0 and (trial.last_eval or trial.stop_reason):
        trial.finish()
        return
    path = os.environ.get(SPEC_ENV)
    if code == 0 or not path or (trial is not None and trial._written) or int(os.environ.get("RANK", "0")) != 0:
        return
    spec = WorkerSpec.model_validate_json(Path(path).read_text())
    if spec.result:
        write_result(spec.result, failure(error, f"the script exited with code {code}"))
