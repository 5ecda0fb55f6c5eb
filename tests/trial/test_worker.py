"""The trial's training loop (``Trial.step``), run in this process on the tiny model (dropout off) and the
reviews of tests/specs/tiny.yaml: what it reports in its metric rows (the wire format the orchestrator
logs to MLflow) against the same quantities computed here, outside the loop."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import SPECS, in_process_trial, prepare_once

from lbsearch.spec import TRAIN_CLIP_FRAC, TRAIN_GRAD_NORM, TRAIN_LOSS, TRAIN_LR, ExperimentConfig
from lbsearch.spec.protocol import parse_message
from lbsearch.trial.worker import CONTINUE, Trial

pytestmark = pytest.mark.usefixtures("fresh_accelerator")


def _experiment(**launcher) -> ExperimentConfig:
    raw = yaml.safe_load((SPECS / "tiny.yaml").read_text())
    raw["model"]["config"] |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # a forward here equals the trial's
    raw["launcher"] |= {"peak_tflops": 1.0} | launcher  # no CPU peak measurement
    return ExperimentConfig.model_validate(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """tiny.yaml's tokenized data (the data of the CLI tests: from the session's cache when they ran first)."""
    return prepare_once(tmp_path_factory, "worker", _experiment())


def _trial(data, exp: ExperimentConfig) -> Trial:
    return in_process_trial(data, exp)


def _rows(trial: Trial, capsys) -> dict[str, list[float]]:
    """Each metric's values in the order the trial sent them (one per optimizer step for ``train/*``), the
    steps since the last read point read now."""
    trial.read()
    trial.rep.flush()
    rows: dict[str, list[float]] = {}
    for line in capsys.readouterr().out.splitlines():
        message = parse_message(line)
        if message and message[0] == "metrics":
            for key, value, _ms, _step in message[1]:
                rows.setdefault(key, []).append(value)
    return rows


def _grad_norm(model: torch.nn.Module, trial: Trial, idx: np.ndarray) -> float:
    """The norm of the gradient of the mean cross-entropy over the step's B samples, in one padded
    forward (the trial takes two micro-batches of 16 and accumulates)."""
    train = trial.data["train"]
    seqs = [train.ids[i] for i in idx]
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), trial.pad_id)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)], mask[row, : len(seq)] = torch.as_tensor(seq), 1
    model.train()
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    torch.nn.functional.cross_entropy(logits, torch.as_tensor(np.asarray(train.labels[idx], dtype=np.int64))).backward()
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def test_grad_norm_is_the_norm_before_clipping_and_clip_frac_the_share_of_clipped_steps(prepared, capsys):
    """Six steps clipped at 0.1: the gradient norms (0.25, 0.06, 0.07, 0.18, 0.02, 0.04 here) fall on both
    sides of it, so a norm logged after clipping (at most 0.1) or a clipped count off by one step shows."""
    clip = 0.1
    exp = _experiment()
    exp.train.clip_norm = clip
    trial = _trial(prepared, exp)
    expected = []
    for step in range(1, 7):
        before = copy.deepcopy(trial.acc.unwrap_model(trial.model))
        assert trial.step(step) == CONTINUE
        expected.append(_grad_norm(before, trial, trial.stream[step - 1]))
    clipped = [n > clip for n in expected]
    assert any(clipped) and not all(clipped), expected
    rows = _rows(trial, capsys)
    assert rows[TRAIN_GRAD_NORM] == pytest.approx(expected, rel=1e-5)
    assert rows[TRAIN_CLIP_FRAC] == pytest.approx([sum(clipped[:k]) / k for k in range(1, 7)], abs=1e-12)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_a_trial_computes_in_the_precision_it_is_given(prepared, capsys, precision, dtype):
    """``launcher.precision: bf16`` on a CPU: every linear layer's output is bf16 (Accelerate's autocast),
    the weights stay fp32 and are updated. Not skipped where the CPU lacks AVX512-BF16 / AMX: torch's CPU
    autocast computes in bf16 all the same, only slower (``precision: auto`` avoids it there), and at
    width 32 a step is still instant."""
    trial = _trial(prepared, _experiment(precision=precision))
    seen: set[torch.dtype] = set()
    linears = [m for m in trial.model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        m.register_forward_hook(lambda _m, _inputs, out: seen.add(out.dtype))
    before = [p.detach().clone() for p in trial.model.parameters()]
    assert trial.step(1) == CONTINUE and trial.step(2) == CONTINUE  # step 1 runs at lr 0 (the warmup's start)
    assert len(linears) >= 10 and seen == {dtype}
    assert {p.dtype for p in trial.model.parameters()} == {torch.float32}
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, trial.model.parameters()))
    assert all(math.isfinite(v) for v in _rows(trial, capsys)[TRAIN_LOSS])


@pytest.mark.parametrize("name,cls", [("lamb", "Lamb"), ("lars", "LARS")])
def test_lamb_and_lars_train_a_trial(prepared, capsys, name, cls):
    """The optimizers besides AdamW through the whole step (Accelerate's wrapper, clipping, the schedule):
    every parameter tensor moves and the loss stays finite."""
    exp = _experiment()
    exp.optimizer.name = name
    trial = _trial(prepared, exp)
    assert type(trial.optimizer.optimizer).__name__ == cls
    before = [p.detach().clone() for p in trial.model.parameters()]
    for step in (1, 2, 3):
        assert trial.step(step) == CONTINUE
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, trial.model.parameters())]
    assert all(moved), sum(moved)
    rows = _rows(trial, capsys)
    assert all(math.isfinite(v) for v in rows[TRAIN_LOSS]) and len(rows[TRAIN_LOSS]) == 3
    assert rows[TRAIN_LR] == pytest.approx([trial.plan.lr * s / trial.plan.warmup_steps for s in (1, 2, 3)])
