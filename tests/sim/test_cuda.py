"""Every layer kind on CUDA (when there is a GPU) gives the statistics it gives on the CPU,
and ``.to(device)`` after programming moves every tensor of a chip instance.

The CUDA draws are not the CPU's bits (each device has its own generator), so the tests
compare moments: the mean and standard deviation of the outputs and of the error against
the float model, with tolerances checked here on the CPU to hold between two seeds (two
instances) and to fail for a chip with twice the programming noise.
"""

from __future__ import annotations

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.sim import CIMEmbeddingBag, HashedTable
from cimflow.sim.array_state import ArrayInstance

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")

KINDS = ["linear-analog", "linear-digital", "conv1d", "conv2d", "embedding-bag", "embedding", "hashed-table"]


def noisy_chip(programming_sigma: float = 0.03):
    """The ideal chip with programming noise (fraction of g_max), 2 % read noise, an 8-bit ADC;
    its digital arrays at 8-bit weights and inputs."""
    return chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [programming_sigma]},
                                 "arrays.analog.device.read_noise": 0.02, "arrays.analog.adc.bits": 8,
                                 "arrays.analog.adc.range": "expected", "arrays.analog.rows": 128,
                                 "arrays.digital.weight_bits": 8, "arrays.digital.input_encoding.bits": 8})


class _HashedBags(nn.Module):
    """A 10^5-row hashed table pooled in bags (its rows never materialized)."""

    def __init__(self, chip) -> None:  # noqa: ANN001
        super().__init__()
        self.table = HashedTable(100_000, 16, seed=3, scale=0.05)
        self.bag = CIMEmbeddingBag(self.table, chip.arrays["analog"], "analog", name="hashed")

    def forward(self, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.bag(idx, offsets)


def _case(kind: str, programming_sigma: float = 0.03):
    """(float model or None, converted model, inputs) of one layer kind; inputs on the CPU."""
    torch.manual_seed(0)
    chip = noisy_chip(programming_sigma)
    overrides = None
    if kind in ("linear-analog", "linear-digital"):
        model: nn.Module = nn.Sequential(nn.Linear(200, 64))
        x: tuple = (torch.randn(256, 200),)
        overrides = {nn.Linear: "digital"} if kind == "linear-digital" else None
    elif kind == "conv1d":
        model, x = nn.Sequential(nn.Conv1d(4, 8, 5)), (torch.randn(16, 4, 64),)
    elif kind == "conv2d":
        model, x = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), (torch.randn(16, 3, 16, 16),)
    elif kind == "embedding-bag":
        model = nn.Sequential(nn.EmbeddingBag(1000, 16, mode="sum"))
        x = (torch.randint(0, 1000, (512, 8)),)
    elif kind == "embedding":
        model, x = nn.Sequential(nn.Embedding(1000, 16)), (torch.randint(0, 1000, (256, 8)),)
    else:
        hashed = _HashedBags(chip)
        idx = torch.randint(0, 100_000, (512 * 8,))
        return hashed, hashed, (idx, torch.arange(0, idx.numel() + 1, 8))  # a table source: include_last_offset
    return model, cimflow.convert(model, chip, overrides=overrides), x


def _ideal(model: nn.Module, x: tuple) -> torch.Tensor:
    if isinstance(model, _HashedBags):
        idx, offsets = x
        rows = model.table.rows(idx.cpu())
        return rows.view(offsets.numel() - 1, -1, rows.shape[-1]).sum(dim=1)
    with torch.no_grad():
        return model(*x)


def _moments(kind: str, device: str, seed: int, programming_sigma: float = 0.03, move_after_program: bool = False) -> torch.Tensor:
    """Mean and std of the outputs and of their error against the float model, one instance."""
    model, cim, x = _case(kind, programming_sigma)
    ideal = _ideal(model, x)
    if not move_after_program:
        cim.to(device)
    cimflow.program(cim, seed)
    cim.to(device)
    with torch.no_grad():
        out = cim(*(t.to(device) for t in x)).float().cpu()
    err = out - ideal
    return torch.stack([out.mean(), out.std(), err.mean(), err.std()])


def _same_statistics(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Output moments within 5 % of the output spread; error spreads within 15 % of each other
    (or both under 1e-4 of the output spread: float rounding only), error means within 5 % of
    the output spread."""
    spread, err_a, err_b = float(a[1]), float(a[3]), float(b[3])
    same_error = abs(err_a - err_b) <= 0.15 * max(err_a, err_b) or max(err_a, err_b) <= 1e-4 * spread
    return (abs(float(a[0] - b[0])) <= 0.05 * spread and abs(float(a[1] / b[1]) - 1) <= 0.05
            and abs(float(a[2] - b[2])) <= 0.05 * spread and same_error)


@pytest.mark.parametrize("kind", KINDS)
def test_the_tolerance_holds_between_two_cpu_instances(kind):
    assert _same_statistics(_moments(kind, "cpu", 0), _moments(kind, "cpu", 1))


@pytest.mark.parametrize("kind", ["linear-analog", "conv2d", "embedding-bag", "hashed-table"])
def test_the_tolerance_catches_twice_the_programming_noise(kind):
    base, doubled = _moments(kind, "cpu", 0), _moments(kind, "cpu", 0, programming_sigma=0.06)
    assert float(doubled[3]) > 1.3 * float(base[3])  # the error grows...
    assert not _same_statistics(base, doubled)  # ...and the comparison sees it


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_gives_the_cpu_statistics(kind):
    assert _same_statistics(_moments(kind, "cpu", 0), _moments(kind, "cuda", 0))


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_programmed_on_cpu_then_moved_to_cuda(kind):
    assert _same_statistics(_moments(kind, "cpu", 0), _moments(kind, "cuda", 0, move_after_program=True))


def _stray_tensors(module: nn.Module, device: torch.device) -> list[str]:
    """Tensors of ``module`` and its children not on ``device``: parameters, buffers, and any
    tensor held as a plain attribute (which ``.to()`` would not move)."""
    stray = []
    for name, m in module.named_modules():
        held = {**m._parameters, **m._buffers, **{k: v for k, v in vars(m).items() if isinstance(v, torch.Tensor)}}
        stray += [f"{name}.{k}" for k, v in held.items() if v is not None and v.device != device]
    return stray


@pytest.mark.parametrize("kind", KINDS)
def test_to_after_program_moves_every_tensor(kind):
    _, cim, x = _case(kind)
    cimflow.program(cim, 0)
    instances = [m for m in cim.modules() if isinstance(m, ArrayInstance)]
    assert instances and all(m.seed == 0 for m in instances)
    assert any(b is not None for m in instances for b in m._buffers.values())  # programmed state lives in buffers
    cim.to("meta")
    assert _stray_tensors(cim, torch.device("meta")) == []


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_to_cuda_after_program_moves_every_tensor(kind):
    _, cim, _ = _case(kind)
    cimflow.program(cim, 0)
    cim.to("cuda")
    assert _stray_tensors(cim, torch.device("cuda", torch.cuda.current_device())) == []


@pytest.mark.parametrize("kind", ["linear-analog", "conv2d", "embedding-bag"])
def test_state_dict_round_trips(kind):
    model, cim, x = _case(kind)
    cimflow.program(cim, 0)
    state = cim.state_dict()
    assert set(state) == set(model.state_dict())  # the instance's buffers stay out of it
    _, other, _ = _case(kind)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)  # different weights, then the saved ones loaded back
    other.load_state_dict(state)
    cimflow.program(other, 0)
    with torch.no_grad():
        a, b = cim(*x), other(*x)
    # same weights, same instance seed: the same conductances; only the read noise draws differ
    assert float((a - b).abs().mean()) <= 0.1 * float(a.std())
