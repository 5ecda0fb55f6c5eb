"""Model FLOPs: the analytic count against PyTorch's own FLOP counter on real (tiny) models, and
the peak a trial divides by."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lbsearch.spec.config import ModelConfig
from lbsearch.trial.flops import GPU_PEAK_TFLOPS, FlopCount, _gpu_peak, flop_count, peak_flops, step_flops
from lbsearch.trial.model import build_model


def _counted(model, batch: int, length: int) -> int:
    ids = torch.randint(5, 500, (batch, length))
    with FlopCounterMode(display=False) as counter:
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        logits.float().sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("length", [16, 64])
def test_analytic_count_matches_the_flop_counter(pooling, length):
    """6 N T + attention, per sequence of real tokens, within 3% of what the operators cost (no padding here, and no
    activation checkpointing: its recomputed forward is a third more than the model's FLOPs)."""
    torch.manual_seed(0)
    cfg = ModelConfig(source="random", model_type="bert", pooling=pooling, gradient_checkpointing=False,
                      config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256})
    model = build_model(cfg, "single_label", ["a", "b", "c"], vocab_size=1000, pad_id=0).train()
    count = flop_count(model)
    expected = count(np.full(4, length))
    assert _counted(model, 4, length) == pytest.approx(expected, rel=0.03)


def test_step_flops_counts_the_rank_s_sequences_by_their_real_length():
    count = FlopCount(matmul_params=10, head_params=2, layers=1, width=4)
    lengths = np.array([3, 5, 7, 9])
    flops, tokens = step_flops(count, lengths, [np.array([0, 2]), np.array([3])])
    assert tokens == 3 + 7 + 9
    assert flops == 6 * 10 * 19 + 6 * 2 * 3 + 12 * 1 * 4 * (9 + 49 + 81)


def test_cpu_peak_is_measured_then_cached_and_only_ratchets_up(tmp_path):
    torch.manual_seed(0)
    first, how = peak_flops(torch.device("cpu"), "no", tmp_path)
    after = torch.rand(1).item()
    torch.manual_seed(0)
    assert after == torch.rand(1).item()  # measuring leaves the global RNG alone: a trial trains the same either way
    assert first > 1e9 and "measured" in how
    again, how = peak_flops(torch.device("cpu"), "no", tmp_path)
    assert again == first and "cached" in how
    assert len(list(tmp_path.glob("peak-*.json"))) == 1


def test_a_peak_cached_while_the_machine_was_busy_is_raised(tmp_path):
    """A peak measured under load (here: a thousandth of the real one) is replaced by the short re-check
    at the end of a trial, so the MFU of later trials is not inflated by it forever."""
    real, _ = peak_flops(torch.device("cpu"), "no", tmp_path / "idle")
    (tmp_path / "busy").mkdir()
    cache = next((tmp_path / "idle").glob("peak-*.json"))
    low = json.loads(cache.read_text()) | {"flops": real / 1000}
    (tmp_path / "busy" / cache.name).write_text(json.dumps(low))
    assert peak_flops(torch.device("cpu"), "no", tmp_path / "busy")[0] == real / 1000  # a trial's start reads the cache as is
    peak, how = peak_flops(torch.device("cpu"), "no", tmp_path / "busy", recheck=True)  # its end re-checks it
    assert peak > real / 10 and "raised" in how
    assert json.loads((tmp_path / "busy" / cache.name).read_text())["flops"] == peak


def test_gpu_table_prefers_the_specific_name_and_knows_tf32():
    assert _gpu_peak("NVIDIA H100 PCIe", "bf16") == GPU_PEAK_TFLOPS["H100 PCIe"]["bf16"] * 1e12
    assert _gpu_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert _gpu_peak("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 units: no peak, no MFU
    strict = torch.backends.cuda.matmul.allow_tf32
    assert _gpu_peak("NVIDIA A100-SXM4-40GB", "no") == (156e12 if strict else 19.5e12)
