"""The optimizers of ``optimizer.name`` as lbsearch builds them (``make_optimizer``), stepped on a
two-parameter model whose update can be worked out by hand: a weight W = [[3, 4]] (|W| = 5, in the
weight-decay group) and a bias b = [0.5] (1-d: no weight decay), both with fixed gradients."""

from __future__ import annotations

import math
import typing

import pytest
import pytorch_optimizer
import torch

from lbsearch.spec import ExperimentConfig
from lbsearch.spec.config import OptimizerConfig
from lbsearch.trial.training import make_optimizer

G_W, G_B = [[1.0, -2.0]], [0.25]  # |g_W| = sqrt(5)


class _Two(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))


def _step(model: _Two, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step with the fixed gradients; the parameters before it."""
    before = model.weight.detach().clone(), model.bias.detach().clone()
    model.weight.grad = torch.tensor(G_W, dtype=torch.float64)
    model.bias.grad = torch.tensor(G_B, dtype=torch.float64)
    optimizer.step()
    return before


def _build(name: str, lr: float, weight_decay: float) -> tuple[_Two, torch.optim.Optimizer]:
    exp = ExperimentConfig.model_validate({"name": "opt", "optimizer": {"name": name, "lr": lr, "weight_decay": weight_decay,
                                                                        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}})
    model = _Two()
    return model, make_optimizer(exp, model, lr)


def test_lamb_scales_each_tensors_adam_step_to_its_own_norm():
    """LAMB (pytorch_optimizer, paper v3: no bias correction of the second moment): decoupled weight decay
    W' = W (1 - lr wd), then W'' = W' - lr / (1 - beta1^t) * trust * u with u = m / (sqrt(v) + eps) and
    trust = |W'| / |u|. With one fixed gradient g repeated, m / sqrt(v) is a constant times sign(g), so the
    step is (lr / (1 - beta1^t)) |W'| sign(g) / sqrt(n): proportional to the tensor's norm, whatever |g|.
    (AdamW would move every element by lr at step 1, 0.01 here.)"""
    lr, wd = 0.01, 0.1
    model, opt = _build("lamb", lr, wd)
    assert isinstance(opt, pytorch_optimizer.Lamb)
    _step(model, opt)
    # by hand: W' = 0.999 [[3, 4]], |W'| = 4.995; W'' = W' - (0.01 / 0.1) x 4.995 / sqrt(2) x [[1, -1]]; b'' = 0.5 - 0.1 x 0.5
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[2.997 - 0.3532002, 3.996 + 0.3532002]], dtype=torch.float64), rtol=1e-6, atol=0)
    assert model.bias.item() == pytest.approx(0.45, rel=1e-6)
    w, b = _step(model, opt)  # step 2: m / sqrt(v) is again a constant times sign(g); bias correction 1 - 0.9^2
    w_decayed = w * (1 - lr * wd)
    step_w = lr / (1 - 0.9**2) * w_decayed.norm() * torch.tensor([[1.0, -1.0]], dtype=torch.float64) / math.sqrt(2)
    torch.testing.assert_close(model.weight.detach(), w_decayed - step_w, rtol=1e-6, atol=0)
    assert model.bias.item() == pytest.approx(b.item() - lr / (1 - 0.9**2) * b.item(), rel=1e-6)


def test_lars_scales_the_weights_step_by_its_trust_ratio_with_momentum_beta1():
    """LARS (pytorch_optimizer, trust coefficient eta = 1e-3): a matrix's step is
    d = eta |W| / (|g| + wd |W|) x (g + wd W), a vector's is plain SGD (no trust ratio, no decay); momentum
    ``beta1``: buffer_t = beta1 buffer_(t-1) + d_t, W -= lr buffer_t."""
    lr, wd, eta, beta1 = 1.0, 0.1, 1e-3, 0.9
    model, opt = _build("lars", lr, wd)
    assert isinstance(opt, pytorch_optimizer.LARS)
    buf_w = buf_b = 0.0
    g_w, g_b = torch.tensor(G_W, dtype=torch.float64), torch.tensor(G_B, dtype=torch.float64)
    for t in (1, 2):
        w, b = _step(model, opt)
        trust = eta * w.norm() / (g_w.norm() + wd * w.norm())
        buf_w = beta1 * buf_w + trust * (g_w + wd * w)
        buf_b = beta1 * buf_b + g_b
        torch.testing.assert_close(model.weight.detach(), w - lr * buf_w, rtol=1e-9, atol=0)
        torch.testing.assert_close(model.bias.detach(), b - lr * buf_b, rtol=1e-9, atol=0)
        if t == 1:  # by hand: trust = 1e-3 x 5 / (sqrt(5) + 0.5) = 1.82744e-3; W = [[3, 4]] - 1.82744e-3 x [[1.3, -1.6]]
            torch.testing.assert_close(model.weight.detach(), torch.tensor([[2.9976243, 4.0029239]], dtype=torch.float64), rtol=1e-7, atol=0)
    # the bias by hand: 0.5 - 0.25 = 0.25 after step 1, then 0.25 - (0.9 x 0.25 + 0.25) = -0.225
    assert model.bias.item() == pytest.approx(-0.225, rel=1e-9)


def test_every_name_the_config_allows_is_built_and_an_unbuilt_one_is_refused():
    """``OptimizerConfig.name`` and ``make_optimizer`` list the same optimizers: a name added to one only
    fails here (before, an unknown name quietly built LARS)."""
    built = {name: type(_build(name, 0.1, 0.0)[1]).__name__ for name in typing.get_args(OptimizerConfig.model_fields["name"].annotation)}
    assert built == {"adamw": "AdamW", "lamb": "Lamb", "lars": "LARS"}
    exp = ExperimentConfig.model_validate({"name": "opt"})
    exp.optimizer = exp.optimizer.model_copy(update={"name": "adafactor"})  # past the config's check, as a new Literal value would be
    with pytest.raises(ValueError, match="optimizer 'adafactor' is allowed by OptimizerConfig.name but not built here"):
        make_optimizer(exp, _Two(), 0.1)
