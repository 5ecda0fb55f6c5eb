"""A training step reads nothing on the host between read points (``lbsearch.trial.readings``), and
reading later changes nothing: the same metric rows, the same parameters, the same stop step; a
non-finite or diverged step still never reaches the optimizer.

A host read is counted as a call of what makes the host wait for a tensor's value on a GPU: ``item``,
``tolist``, ``cpu``, ``numpy`` and ``bool`` / ``float`` / ``int`` / ``index`` of a tensor. On a CPU these
calls cost nothing, but each is a synchronisation on a GPU, so counting them here finds what would stall one."""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SPECS, _harvest, _seed, in_process_trial

from lbsearch.data import prepare_data
from lbsearch.spec import DIVERGED_REASON, PACKING, ExperimentConfig, data_cache_dir
from lbsearch.spec.protocol import parse_message
from lbsearch.trial.readings import CONTINUE, DIVERGED
from lbsearch.trial.worker import Trial

ROOT = Path(__file__).parent.parent.parent
pytestmark = pytest.mark.usefixtures("fresh_accelerator")
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
SETTINGS = {"launcher": {"peak_tflops": 1.0, "precision": "no"}, "optimizer": {"fused": True}, "train": {"noise_scale": True}}
"""What the assertions depend on besides each spec: fused AdamW (the device guard, no host check per step), the noise scale on."""


def _experiment(spec: Path, **changes) -> ExperimentConfig:
    raw = yaml.safe_load(spec.read_text())
    for section, values in SETTINGS.items():
        raw.setdefault(section, {}).update(values)
    for key, value in changes.items():
        section, field = key.split("__")
        raw.setdefault(section, {})[field] = value
    return ExperimentConfig.model_validate(raw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tokenized data of tests/specs/tiny.yaml (reviews) and experiments/lm_tiny.yaml (speeches)."""
    root = tmp_path_factory.mktemp("readings") / "mlruns"
    _seed(root)
    out = {name: prepare_data(_experiment(spec), data_cache_dir(root)) for name, spec in (("tiny", SPECS / "tiny.yaml"), ("lm", ROOT / "experiments" / "lm_tiny.yaml"))}
    _harvest(root)
    return out


def _trial(prepared, exp: ExperimentConfig) -> Trial:
    return in_process_trial(prepared, exp, tracking=False)


class HostReads:
    """Counts, per optimizer step, the calls that read a tensor on the host, and where they came from."""

    def __init__(self) -> None:
        self.by_step: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.step = 0

    def __enter__(self) -> HostReads:
        self.saved = {name: getattr(torch.Tensor, name) for name in SYNCS}
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, self._counting(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, name, original):
        def call(tensor, *args, **kwargs):
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if not f.filename.endswith("torch/_tensor.py"))
            self.by_step[self.step][f"{name} {caller.filename.split('site-packages/')[-1]}:{caller.lineno}"] += 1
            return original(tensor, *args, **kwargs)
        return call


def _run(trial: Trial, steps: int) -> HostReads:
    with HostReads() as reads:
        for step in range(1, steps + 1):
            reads.step = step
            trial.step(step)
    return reads


@pytest.mark.parametrize("case", ["causal_lm", "packed", "accumulated_noise_scale"])
def test_no_host_read_between_read_points(data, case):
    """Twelve steps at ``log_every_steps: 5``: a language model (unpadded, so no attention mask), a packed
    classifier (segment pooling sized on the host) and a classifier under accumulation with the noise
    scale measured every second step (packed too): the host reads tensors at steps 1, 5 and 10 only (the first step,
    then every fifth), and nowhere else, in lbsearch or in the libraries it calls."""
    if case == "causal_lm":
        exp, prepared = _experiment(ROOT / "experiments" / "lm_tiny.yaml", train__log_every_steps=5), data["lm"]
    elif case == "packed":
        exp, prepared = _experiment(SPECS / "tiny.yaml", train__log_every_steps=5, model__pooling="mean", launcher__pack=True), data["tiny"]
    else:
        exp = _experiment(SPECS / "tiny.yaml", train__log_every_steps=5, train__noise_scale_every=2, model__pooling="mean", launcher__pack=True)
        prepared = data["tiny"]
    trial = _trial(prepared, exp)
    trial.evals = {}  # steps only: an evaluation is a read point of its own
    if case == "packed":
        assert trial.pack_offset is not None
    if case == "accumulated_noise_scale":
        assert trial.plan.accumulation == 2 and trial.gns.active
    reads = _run(trial, 12)
    assert {step for step, calls in reads.by_step.items() if calls} == {1, 5, 10}, dict(reads.by_step)
    assert all(sum(reads.by_step[s].values()) <= 2 for s in (5, 10)), dict(reads.by_step)  # the rows, and the noise scale's pairs


def test_a_padded_classifier_reads_nothing_of_its_own(data):
    """Padded micro-batches carry an attention mask, and transformers reads it on the host (``padding_mask.all()``)
    to decide whether to drop it: one read per micro-batch from transformers' masking code, none from lbsearch."""
    trial = _trial(data["tiny"], _experiment(SPECS / "tiny.yaml", train__log_every_steps=5, launcher__pack=False))
    trial.evals = {}
    reads = _run(trial, 7)
    for step in (2, 3, 4, 6, 7):
        assert all("transformers/masking_utils.py" in where for where in reads.by_step[step]), reads.by_step[step]
        assert sum(reads.by_step[step].values()) <= trial.plan.accumulation


def test_a_classifier_with_packing_turned_off_says_so_in_its_tag(data, capsys):
    capsys.readouterr()
    in_process_trial(data["tiny"], _experiment(SPECS / "tiny.yaml", model__pooling="mean", launcher__pack=False))  # tracked: tags printed
    tags = [m[1] for m in map(parse_message, capsys.readouterr().out.splitlines()) if m and m[0] == "tags"]
    assert {PACKING: "off: launcher.pack is false"} in tags, tags


def _rows(trial: Trial, steps: int) -> tuple[list[tuple], int, int, dict]:
    """Run ``steps`` steps (stopping where the trial stops): the metric rows, the stop code and step, the parameters."""
    rows, code = [], CONTINUE
    original = trial.rep.metrics
    trial.rep.metrics = lambda values, samples, ms=None: rows.append((samples, tuple(sorted(values.items()))))
    for step in range(1, steps + 1):
        code = trial.step(step)
        if code != CONTINUE:
            break
    if code == CONTINUE:
        trial.read()  # the steps after the last read point
    trial.rep.metrics = original
    params = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    return rows, code, trial.result["steps"], params


@pytest.mark.parametrize("every", [1, 4, 9])
def test_reading_later_changes_no_row_and_no_parameter(data, every):
    """Eighteen steps with the noise scale on: whether the steps are read every step, every fourth or every
    ninth, the metric rows (values, order, data seen), the noise-scale estimate and the parameters are identical."""
    def run(log_every: int):
        trial = _trial(data["tiny"], _experiment(SPECS / "tiny.yaml", train__log_every_steps=log_every, train__noise_scale_every=1))
        trial.evals = {}
        rows, code, stopped, params = _rows(trial, 18)
        return rows, code, stopped, params, trial.gns.noise.state()

    base, other = run(1), run(every)
    assert base[0] == other[0] and len(base[0]) == 18
    assert base[1:3] == other[1:3] == (CONTINUE, 18)
    assert base[4] == other[4] and base[4][0] != 0
    assert all(torch.equal(base[3][n], other[3][n]) for n in base[3])


def test_a_non_finite_step_never_reaches_the_optimizer_and_stops_the_trial_at_its_step(data, monkeypatch):
    """An infinite gradient at step 3 (``LBSEARCH_INJECT_OVERFLOW_AT``) with reads every 10 steps: the fused
    AdamW skips steps 3 to 6 on the device (parameters and its step count stay those of step 2), and the read
    at step 10 stops the trial as diverged at step 3, as the host check of each step (AdamW unfused) does."""
    monkeypatch.setenv("LBSEARCH_INJECT_OVERFLOW_AT", "3")
    device = _trial(data["tiny"], _experiment(SPECS / "tiny.yaml", train__log_every_steps=10))
    device.evals = {}
    assert not device.readings.on_host
    for step in (1, 2):
        device.step(step)
    after_two = {n: p.detach().clone() for n, p in device.model.named_parameters()}
    for step in range(3, 7):
        assert device.step(step) == CONTINUE  # no read yet
    assert all(torch.equal(after_two[n], p) for n, p in device.model.named_parameters())
    assert {int(s["step"]) for s in device.optimizer.optimizer.state.values()} == {2}
    assert device.read() == DIVERGED and device.result["steps"] == 3
    device.stop(DIVERGED)
    assert device.result["reason"] == DIVERGED_REASON

    host = _trial(data["tiny"], _experiment(SPECS / "tiny.yaml", train__log_every_steps=10, optimizer__fused=False))
    assert host.readings.on_host
    assert [host.step(s) for s in (1, 2, 3)] == [CONTINUE, CONTINUE, DIVERGED] and host.result["steps"] == 3


def test_a_loss_that_diverges_is_stopped_at_the_step_the_host_rule_names(data):
    """lr 3 and a divergence factor of 1.5: the loss passes 1.5 x its first value within a few steps. The device
    guard and the host rule (``lbsearch.spec.diverged``, unfused AdamW) stop at the same step, and the parameters
    the device guard leaves are those of the step before it."""
    changes = {"optimizer__lr": 3.0, "train__divergence_factor": 1.5, "train__clip_norm": None, "schedule__warmup_fraction": 0.0}
    host = _trial(data["tiny"], _experiment(SPECS / "tiny.yaml", optimizer__fused=False, **changes))
    host.evals = {}
    _, host_code, host_step, _ = _rows(host, 30)
    assert host_code == DIVERGED and 1 < host_step < 30

    device = _trial(data["tiny"], _experiment(SPECS / "tiny.yaml", train__log_every_steps=50, **changes))
    device.evals = {}
    for step in range(1, host_step):
        device.step(step)
    before = {n: p.detach().clone() for n, p in device.model.named_parameters()}
    for step in range(host_step, host_step + 3):
        device.step(step)
    assert all(torch.equal(before[n], p) for n, p in device.model.named_parameters())
    assert device.read() == DIVERGED and device.result["steps"] == host_step
    assert np.isfinite(device.readings.loss) and device.readings.loss > 1.5 * device.readings.first_loss


def test_several_processes_read_within_two_seconds_of_slow_steps_at_an_agreed_step():
    """With P > 1 a read point cannot come from each rank's clock (ranks would read at different steps and
    their collectives would hang): each read sets the next from the slowest rank's step time (``slowest``,
    an all-reduce max in a trial), so 1 s steps are read every 2 steps and fast ones every ``log_every_steps``."""
    from lbsearch.trial.readings import Readings

    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], fused=True)
    asked = []
    slow = Readings(optimizer, None, 4.0, 20, None, every=10, processes=2, say=lambda *a: None,
                    slowest=lambda seconds: asked.append(seconds) or 1.0)
    fast = Readings(optimizer, None, 4.0, 20, None, every=10, processes=2, say=lambda *a: None, slowest=lambda seconds: 1e-4)
    for readings in (slow, fast):
        for step in range(1, 24):
            readings.before_optimizer(step, torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
            readings.after_optimizer(1e-3)
            if readings.due(step, 100, forced=False):
                readings.read()
                readings.reads = getattr(readings, "reads", []) + [step]
    assert slow.reads == [1, 3, 5, 7, 9, 10, 12, 14, 16, 18, 20, 22] and len(asked) == len(slow.reads)
    assert fast.reads == [1, 10, 20]
