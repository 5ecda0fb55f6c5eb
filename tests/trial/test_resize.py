"""A batch-size schedule in the training loop (``lbsearch.trial.resize``), run in this process on the tiny model
(dropout off) and the reviews of tests/specs/tiny.yaml: B doubles at the promised steps with its split re-planned, each
step's loss is that of exactly its B samples of the stream, the lr follows the phases, and a trial stopped with a
checkpoint before a change resumes across it to the same result as one never stopped."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
import yaml
from conftest import SPECS, in_process_trial, prepare_once, worker_spec

from lbsearch.spec import FOLDER, INTERRUPTED, PAUSED, PLAN_ACCUMULATION, PLAN_MICRO_BATCH, PROGRESS_SAMPLES, TRAIN_BATCH_SIZE, TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR, ExperimentConfig
from lbsearch.spec.protocol import parse_message
from lbsearch.spec.registry import LR_SCALING
from lbsearch.trial.batching import sample_stream
from lbsearch.trial.checkpoint import StopSignal
from lbsearch.trial.worker import train

pytestmark = pytest.mark.usefixtures("fresh_accelerator")

STEPWISE = {"kind": "stepwise", "at_samples": [96, 192], "factor": 2, "lr_scaling": "sqrt"}
"""B = 32 for 3 steps (96 samples), 64 for 2 (to 224), 128 for 2 (to 480): 7 steps, evaluations at steps 4, 6 and 7;
the lr scaled by (B / 32)^(1/2) in each."""


def _experiment(schedule: dict | None = STEPWISE, **train) -> ExperimentConfig:
    raw = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    raw["model"]["config"] |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    raw["train"] |= {"budget_samples": 480, "eval_every_samples": 160, "noise_scale": False, "checkpoint_on_stop": True,
                     "batch_schedule": schedule} | train
    raw["schedule"] |= {"min_lr_ratio": 0.0}  # the decay ends at 0
    raw["launcher"] |= {"peak_tflops": 1.0}  # no CPU peak measurement
    return ExperimentConfig.model_validate(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_once(tmp_path_factory, "resize", _experiment())


def _spec(prepared, exp: ExperimentConfig, folder=None, pause_at: int | None = None):
    return worker_spec(prepared, exp, checkpoint_dir=str(folder) if folder else None, pause_at_samples=pause_at)


def _rows(trial, capsys) -> dict[str, list[float]]:
    """Each metric's values in the order the trial sent them."""
    trial.rep.flush()
    rows: dict[str, list[float]] = {}
    for line in capsys.readouterr().out.splitlines():
        message = parse_message(line)
        if message and message[0] == "metrics":
            for key, value, _ms, _step in message[1]:
                rows.setdefault(key, []).append(value)
    return rows


def _loss_and_norm(trial, idx: np.ndarray) -> tuple[float, float]:
    """The mean cross-entropy of the trial's model as it is over the samples ``idx`` (in micro-batches of 16), and the
    norm of its gradient; the model's gradients are left empty, as the trial leaves them between steps."""
    total = 0.0
    for part in np.array_split(idx, len(idx) // 16):
        batch, targets = trial._inputs(part, 0)
        loss = torch.nn.functional.cross_entropy(trial.model(**batch).logits.float(), targets, reduction="sum")
        (loss / len(idx)).backward()
        total += float(loss.detach())
    norm = float(torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in trial.model.parameters() if p.grad is not None])))
    trial.model.zero_grad(set_to_none=True)
    return total / len(idx), norm


def test_b_changes_at_the_promised_steps_and_each_loss_is_that_of_its_b_samples(prepared, capsys):
    """Step k's logged loss and gradient norm must be those of the model before it over exactly the k-th cut of the sample
    stream (32, 32, 32, 64, 64, 128, 128 samples), and every step must step the optimizer. A stream cut at the wrong place,
    a loss or gradient still divided by the old accumulation after a change (2 at B 32, 4 at 64, 8 at 128), or Accelerate's
    micro-step count left over from the old split (it then skips optimizer steps), shows here."""
    trial = in_process_trial(prepared, _experiment())
    stream = sample_stream(len(trial.data["train"].ids), 32, 0, 0, 0, trial.plan.phases)
    assert [len(s) for s in stream] == [32, 32, 32, 64, 64, 128, 128]
    assert np.array_equal(np.concatenate(stream), sample_stream(len(trial.data["train"].ids), 32, 15, 0).ravel())  # the constant-B order
    splits, expected, adam_steps = [], [], []
    for step in range(1, trial.plan.steps + 1):
        expected.append(_loss_and_norm(trial, stream[step - 1]))
        trial.step(step, read=True)
        splits.append((trial.batch.batch_size, trial.batch.micro_batch, trial.batch.accumulation))
        adam_steps.append(int(next(iter(trial.optimizer.optimizer.state.values()))["step"]))
    rows = _rows(trial, capsys)
    assert splits == [(32, 16, 2)] * 3 + [(64, 16, 4)] * 2 + [(128, 16, 8)] * 2
    assert rows[TRAIN_BATCH_SIZE] == [32, 32, 32, 64, 64, 128, 128]
    assert rows[PROGRESS_SAMPLES] == [32, 64, 96, 160, 224, 352, 480]
    assert rows[PLAN_ACCUMULATION] == [4, 8] and rows[PLAN_MICRO_BATCH] == [16, 16]
    assert rows[TRAIN_LOSS] == pytest.approx([loss for loss, _ in expected], rel=1e-5)
    assert rows[TRAIN_GRAD_NORM] == pytest.approx([norm for _, norm in expected], rel=1e-4)
    assert adam_steps == list(range(1, 8))


def test_the_lr_follows_the_phases_and_the_schedule_in_samples(prepared, capsys):
    """lr x (B / 32)^(1/2) (``lr_scaling: sqrt``) per phase, times linear warmup (10 % of 480 samples: the first 2 steps) and decay read at the samples
    seen before each step."""
    trial = in_process_trial(prepared, _experiment())
    plan = trial.plan
    assert plan.warmup_steps == 2 and [(f, B) for f, B, _, _ in plan.phases] == [(1, 32), (4, 64), (6, 128)]
    for step in range(1, plan.steps + 1):
        trial.step(step, read=True)
    lrs = _rows(trial, capsys)[TRAIN_LR]  # after each step's scheduler step: the lr of the next step
    warm, total = plan.samples_at(plan.warmup_steps), plan.samples_at(plan.steps)
    expected = []
    for step in range(2, plan.steps + 2):
        seen = plan.samples_at(step - 1)
        shape = seen / warm if seen < warm else max(0.0, (total - seen) / (total - warm))
        expected.append(1e-3 * (plan.phase_at(min(step, plan.steps))[0] / 32) ** LR_SCALING["sqrt"] * shape)
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_a_trial_killed_across_a_change_resumes_exactly(prepared, tmp_path):
    """A SIGTERM as the trial re-plans for B 64 (step 4): it finishes that step, writes a checkpoint and ends
    ``interrupted`` (``checkpoint_on_stop``). The re-run resumes at step 5, re-plans (B 64, then 128 at step 6) and ends
    with the evaluations, samples and validation and test metrics of the same trial run through, bit for bit. The SIGTERM
    is the handler called as the signal calls it, never a real signal: that would reach the test process itself (the
    handler's KeyboardInterrupt ends a pytest session); a real one reaches a trial process in tests/cli/test_resume.py."""
    through = train(_spec(prepared, _experiment()), log=lambda *a: None)
    folder, stop = tmp_path / FOLDER, StopSignal(install=False)

    def kill_at_the_change(*parts) -> None:
        if " ".join(map(str, parts)).startswith("step 4 ("):
            stop(signal.SIGTERM, None)

    try:
        killed = train(_spec(prepared, _experiment(), folder), log=kill_at_the_change, stop=stop)
    except KeyboardInterrupt as err:  # the handler's "end at once": a failure of this test, not the session's Ctrl-C
        pytest.fail(f"SIGTERM ended the trial at once instead of after a checkpoint at the step boundary: {err!r}")
    assert (killed.state, killed.reason, killed.steps, killed.samples) == ("failed", INTERRUPTED, 4, 160)
    lines: list[str] = []
    resumed = train(_spec(prepared, _experiment(), folder), log=lambda *a: lines.append(" ".join(map(str, a))))
    assert any(line.startswith("resumed from checkpoint at step 4") for line in lines)
    assert any(line.startswith("step 5 (160 samples seen): effective batch 64 = micro-batch 16 x accumulation 4") for line in lines)
    assert any(line.startswith("step 6 (224 samples seen): effective batch 128 = micro-batch 16 x accumulation 8") for line in lines)
    assert (resumed.state, resumed.steps, resumed.samples) == ("complete", 7, 480) == (through.state, through.steps, through.samples)
    assert resumed.validation == through.validation and resumed.test == through.test
    assert [e["loss"] for e in resumed.evals] == [e["loss"] for e in through.evals]


def test_a_trial_paused_at_a_rung_in_a_later_phase_resumes_there(prepared, tmp_path):
    """asha_promote's pause (a checkpoint at the rung, step 4 at 160 samples) and the resume of a promoted trial."""
    folder = tmp_path / FOLDER
    paused = train(_spec(prepared, _experiment(), folder, pause_at=100), log=lambda *a: None)
    assert (paused.state, paused.reason, paused.steps, paused.samples) == ("pruned", PAUSED, 4, 160)
    resumed = train(_spec(prepared, _experiment(), folder), log=lambda *a: None)
    assert (resumed.state, resumed.steps, resumed.samples) == ("complete", 7, 480)
    assert [e["nominal_samples"] for e in resumed.evals] == [160, 320, 480]


def test_a_constant_schedule_is_the_trial_without_one(prepared):
    plain = train(_spec(prepared, _experiment(None, budget_samples=320)), log=lambda *a: None)
    constant = train(_spec(prepared, _experiment({"kind": "constant"}, budget_samples=320)), log=lambda *a: None)
    assert (plain.steps, plain.samples, plain.validation) == (constant.steps, constant.samples, constant.validation)


def test_the_noise_scale_follows_the_split_across_a_change(prepared):
    """Micro-batch limit 32: at B 32 one micro-batch (one process, no accumulation: nothing to measure), at B 64 two
    (the small batch is one micro-batch of 32), at B 128 four (two of 32): the monitor is told each split, and measures
    from the first step with two batch sizes in it."""
    exp = _experiment(noise_scale=True, noise_scale_every=1)
    exp.launcher.max_micro_batch = 32
    trial = in_process_trial(prepared, exp, tracking=False)
    seen = []
    for step in range(1, trial.plan.steps + 1):
        trial.step(step, read=True)
        seen.append((trial.gns.mode, trial.gns.b, trial.gns.big))
    assert seen == [(None, None, 32)] * 3 + [("micro", 32, 64)] * 2 + [("micro", 64, 128)] * 2
    assert trial.gns.noise.n == 4  # steps 4-7 measured (B_simple itself may not be positive yet after so few)
