"""Straight-through gradients: they flow (non-zero, finite) to every trained tensor of a
converted model - conv, linear and embedding weights and learned input ranges - and on an
ideal chip they equal the float model's gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cimflow
from cimflow.sim import CIMLayer, cim_layers
from cimflow.train import enable_learned_input_ranges


class Mixed(nn.Module):
    """A conv, a linear and an embedding bag: every kind of CIM layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.emb = nn.EmbeddingBag(50, 8, mode="sum")
        self.fc = nn.Linear(4 * 8 * 8 + 8, 10)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc(torch.cat([h, self.emb(idx)], dim=1))


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 50, (16, 3), generator=gen), torch.randint(0, 10, (16,), generator=gen)


@pytest.mark.parametrize("chip", ["pcm-hermes-like", "rram-analog-generic"])
def test_gradients_reach_every_weight_and_input_range(chip):
    torch.manual_seed(0)
    cim = cimflow.program(cimflow.convert(Mixed(), chip), seed=0)
    cimflow.drift(cim, "1d")
    ranges = enable_learned_input_ranges(cim, {"conv": 1.0, "fc": 2.0})
    assert len(ranges) == 2
    x, idx, y = _batch()
    nn.functional.cross_entropy(cim(x, idx), y).backward()
    for name in ("conv.weight", "conv.bias", "fc.weight", "emb.weight", "conv.engine.input_range_log", "fc.engine.input_range_log"):
        grad = cim.get_parameter(name).grad
        assert grad is not None, name
        assert bool(torch.isfinite(grad).all()), name
        assert float(grad.abs().sum()) > 0, name


def test_straight_through_gradients_on_an_ideal_chip_equal_the_float_gradients():
    torch.manual_seed(0)
    model = Mixed()
    cim = cimflow.program(cimflow.convert(copy.deepcopy(model), "ideal"), seed=0)
    x, idx, y = _batch()
    nn.functional.cross_entropy(model(x, idx), y).backward()
    nn.functional.cross_entropy(cim(x, idx), y).backward()
    for name, p in model.named_parameters():
        q = cim.get_parameter(name)
        assert torch.allclose(q.grad, p.grad, rtol=1e-3, atol=1e-5 * float(p.grad.abs().max())), name


def test_learned_input_range_clips_inputs_and_gets_the_lsq_gradient():
    # one linear layer, inputs beyond the range clip: d(out)/d(range) is the sign-weighted
    # column sum of the clipped inputs (LSQ), so the range grows when clipping costs loss
    torch.manual_seed(0)
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), "ideal"), seed=0)
    (param,) = enable_learned_input_ranges(cim, {"0": 0.5})
    x = torch.tensor([[2.0, 0.25, -0.1, 0.0]])
    out = cim(x)
    assert float(out.detach()) == pytest.approx(0.5 + 0.25 - 0.1, rel=1e-5)  # 2.0 clipped at the range 0.5
    out.sum().backward()
    # d out / d log(range) = range * d out / d range = 0.5 * 1 (one clipped input, inside ones contribute ~0)
    assert float(param.grad) == pytest.approx(0.5, rel=1e-3)
    assert isinstance(cim_layers(cim)[0][1], CIMLayer) and cim[0].engine.learned_input_range == pytest.approx(0.5)
