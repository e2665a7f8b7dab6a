"""Embedding tables in arrays under float64 and bfloat16 modules: the simulated state stays
float32 (so a seed gives the same reads whatever the module's dtype), the output and the
gradient take the weight's dtype, as ``nn.EmbeddingBag`` does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cimflow
from cimflow.sim import CIMEmbeddingBag

CHIP = "hybrid-rram-sram-28nm"  # RRAM tables with programming and read noise, 8-bit ADC


class Tables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(300, 12, mode="mean", include_last_offset=True)
        self.emb = nn.Embedding(300, 12)

    def forward(self, v: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.bag(v, o), self.emb(v[: o.numel() - 1])], dim=1)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 300, (400,), generator=g), torch.tensor([0, 1, 5, 40, 41, 200, 400])


def _programmed(dtype: torch.dtype | None, when: str) -> nn.Module:
    torch.manual_seed(0)
    model = Tables()
    if dtype is not None and when == "before":
        model = model.to(dtype)
    cim = cimflow.program(cimflow.convert(model, CHIP), seed=5)
    if dtype is not None and when == "after":
        cim = cim.to(dtype)
    return cim


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("when", ["before", "after"])
def test_reads_do_not_depend_on_the_module_dtype(dtype, when):
    v, o = _inputs()
    ref = _programmed(None, "")
    cim = _programmed(dtype, when)
    assert isinstance(cim.bag, CIMEmbeddingBag)
    for m in (cim.bag, cim.emb):
        assert m.pool_cache is not None and m.pool_cache.dtype == torch.float32  # the state stays float32
        assert m.w_scale.dtype == torch.float32
    with torch.no_grad():
        expected, out = ref(v, o), cim(v, o)
    assert out.dtype == dtype
    # the same seed draws the same reads; only the output's rounding to dtype differs (and,
    # for a table converted before programming, the table's own rounding to bfloat16)
    if dtype == torch.float64 or when == "after":  # programmed from the same values: the output's rounding only
        assert torch.allclose(out.float(), expected, atol=1e-6, rtol=1e-6 if dtype == torch.float64 else 2**-8)
    else:  # a bfloat16 table's values move by up to 2^-9 of themselves: a few codes move by one step
        assert float((out.float() - expected).abs().mean()) < 0.01 * float(expected.abs().mean())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_straight_through_gradient_in_the_weight_dtype(dtype):
    v, o = _inputs()
    cim = _programmed(dtype, "after")
    cim.train()
    out = cim(v, o)
    out.float().sum().backward()
    grad = cim.bag.weight.grad
    assert grad is not None and grad.dtype == dtype
    # mean pooling: d(sum of outputs)/d(row) = sum over the row's lookups of 1 / (its bag's size)
    sizes = o.diff()
    bag_of = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    expected = torch.zeros(300).index_add_(0, v, 1.0 / sizes[bag_of].double().float())
    assert torch.allclose(grad.float()[:, 0], expected, atol=1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_int32_indices_and_offsets_read_the_same_rows_on_the_ideal_chip():
    torch.manual_seed(0)
    model = Tables()
    cim = cimflow.program(cimflow.convert(model, "ideal"), seed=0)
    v, o = _inputs()
    with torch.no_grad():
        assert torch.allclose(cim(v.int(), o.int()), model(v, o), atol=1e-4)
