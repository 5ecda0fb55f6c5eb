"""Compressing a kept model (``lbsearch.trial.compress`` and the int8 half of ``lbsearch.trial.model``): global
magnitude pruning zeroes the asked share of the ``nn.Linear`` weights, the smallest ones, and leaves no hooks;
non-zero parameters are counted on float and int8 weights; an int8 or pruned variant saved beside a kept
model loads back (``load_model``) with the same outputs, and an int8 one is smaller on disk."""

from __future__ import annotations

import pytest
import torch

from lbsearch.data.tokenizer import load_tokenizer
from lbsearch.spec.config import ModelConfig
from lbsearch.trial.batching import pad
from lbsearch.trial.compress import nonzero_params, prune_global, pruned_share
from lbsearch.trial.model import QUANTIZED_FILE, build_model, load_model, quantize_int8, save_model, save_variant, weight_bytes

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256, "max_position_embeddings": 64}


def _linear_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer(ModelConfig())
    ids = [torch.tensor(x).numpy() for x in tok(["a short review", "a much longer review that goes on and on and on"])["input_ids"]]
    return pad(ids, tok.pad_token_id, "cpu")


@pytest.fixture(scope="module", params=["cls", "mean"])
def kept(request, tmp_path_factory):
    """A kept model folder as a trial leaves it (``save_model``), for both head kinds."""
    torch.manual_seed(0)
    cfg = ModelConfig(source="random", pooling=request.param, config=TINY)
    model = build_model(cfg, "single_label", ["rotten", "fresh"], vocab_size=30522, pad_id=0)
    folder = tmp_path_factory.mktemp(f"kept-{request.param}") / "trial-0"
    save_model(model, folder, ["rotten", "fresh"], cfg, {"max_length": 32, "eval_batch_size": 8, "task": "single_label"})
    return folder


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_global_pruning_zeroes_that_share_of_the_smallest_linear_weights(kept, sparsity):
    model = load_model(kept)
    before, params_before = _linear_weights(model), nonzero_params(model)
    prune_global(model, sparsity)
    after = _linear_weights(model)
    zeroed = (after == 0) & (before != 0)
    assert int(zeroed.sum()) == round(sparsity * before.numel())  # counted: exactly the asked share, across all layers
    assert pruned_share(model) == pytest.approx(sparsity, abs=1 / before.numel())
    assert before[zeroed].abs().max() <= before[~zeroed].abs().min()  # the smallest magnitudes went
    assert torch.equal(after[~zeroed], before[~zeroed])  # the rest untouched
    assert nonzero_params(model) == params_before - int(zeroed.sum())
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())  # permanent: no mask hooks left
    per_layer = [float((m.weight == 0).float().mean()) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert max(per_layer) > min(per_layer)  # ranked globally, not layer by layer


def test_an_int8_variant_loads_back_with_identical_outputs_and_is_smaller(kept, batch, tmp_path):
    model = load_model(kept)
    q = quantize_int8(model)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules())
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    save_variant(q, kept, tmp_path / "quantized", {"kind": "int8_dynamic"})
    assert (tmp_path / "quantized" / QUANTIZED_FILE).is_file() and not list((tmp_path / "quantized").glob("*.safetensors"))
    back = load_model(tmp_path / "quantized")
    with torch.no_grad():
        assert torch.equal(back(**batch).logits, q(**batch).logits)
        assert not torch.equal(q(**batch).logits, model(**batch).logits)  # it is quantized, not the float model again
    assert back.config.id2label == {0: "rotten", 1: "fresh"}
    assert weight_bytes(tmp_path / "quantized") < weight_bytes(kept)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert weight_bytes(kept) - weight_bytes(tmp_path / "quantized") > 2.5 * linear  # ~3 of 4 bytes saved per linear weight
    assert nonzero_params(back) == nonzero_params(q) > 0.9 * nonzero_params(model)


def test_a_pruned_variant_loads_back_with_its_zeros_and_outputs(kept, batch, tmp_path):
    model = prune_global(load_model(kept), 0.5)
    save_variant(model, kept, tmp_path / "pruned", {"kind": "magnitude_pruning", "sparsity": 0.5})
    back = load_model(tmp_path / "pruned")
    assert pruned_share(back) == pruned_share(model)
    with torch.no_grad():
        assert torch.equal(back(**batch).logits, model(**batch).logits)
    assert weight_bytes(tmp_path / "pruned") == pytest.approx(weight_bytes(kept), rel=0.01)  # dense on disk: zeros take room
