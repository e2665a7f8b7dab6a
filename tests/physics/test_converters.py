"""Tests of cimflow.physics.converters: symmetric mid-tread DAC/ADC quantization."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cimflow.physics import adc_quantize, dac_quantize, generator_for, quantize_symmetric

Quantizer = Callable[[torch.Tensor, int, "torch.Tensor | float"], torch.Tensor]
QUANTIZERS = [quantize_symmetric, dac_quantize, adc_quantize]
BITS = [2, 3, 4, 6, 8, 12]
RANGES = [1.0, 3.7, 2.5e-5]  # the last is a current-like full scale (amperes)


def _step(bits: int, range_: float) -> float:
    """Spacing of the code grid, computed independently of the code under test."""
    return range_ / (2 ** (bits - 1) - 1)


def _samples(range_: float, n: int = 20_000, spread: float = 1.5) -> torch.Tensor:
    """float64 values uniform in [-spread*range, spread*range] (so some clip)."""
    gen = generator_for(0, "converters", range_, spread)
    return (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * spread * range_


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("range_", RANGES)
def test_values_on_grid_and_within_range(quantize: Quantizer, bits: int, range_: float) -> None:
    step = _step(bits, range_)
    steps = 2 ** (bits - 1) - 1
    q = quantize(_samples(range_), bits, range_)
    codes = q / step
    assert torch.allclose(codes, torch.round(codes), rtol=0, atol=1e-9)
    assert int(torch.round(codes).abs().max()) <= steps
    assert float(q.abs().max()) <= range_ * (1 + 1e-12)


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("range_", RANGES)
def test_in_range_error_at_most_half_step(quantize: Quantizer, bits: int, range_: float) -> None:
    step = _step(bits, range_)
    x = _samples(range_, spread=1.0)
    err = (quantize(x, bits, range_) - x).abs()
    assert float(err.max()) <= step / 2 * (1 + 1e-9)
    # ... and the error is really that of the nearest code (not merely bounded):
    # with 20k uniform samples over 2*steps cells, the largest error comes close to step/2.
    assert float(err.max()) >= 0.45 * step


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bits", BITS)
def test_clipping_to_range(quantize: Quantizer, bits: int) -> None:
    range_ = 2.0
    x = torch.tensor([2.0001, 3.0, 1e6, float("inf"), -2.0001, -3.0, -1e6, -float("inf")], dtype=torch.float64)
    q = quantize(x, bits, range_)
    expected = torch.sign(x) * range_
    assert torch.equal(q, expected)


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bits", [1, *BITS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_maps_to_zero_exactly(quantize: Quantizer, bits: int, dtype: torch.dtype) -> None:
    q = quantize(torch.zeros(5, dtype=dtype), bits, 1.7)
    assert torch.equal(q, torch.zeros(5, dtype=dtype))


@pytest.mark.parametrize("quantize", QUANTIZERS)
def test_one_bit_is_sign_times_range(quantize: Quantizer) -> None:
    x = torch.tensor([-5.0, -0.3, -1e-9, 0.0, 1e-9, 0.2, 7.0], dtype=torch.float64)
    q = quantize(x, 1, 1.5)
    assert torch.equal(q, torch.tensor([-1.5, -1.5, -1.5, 0.0, 1.5, 1.5, 1.5], dtype=torch.float64))


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_tensor_range_broadcasts_per_row(quantize: Quantizer, bits: int) -> None:
    """A (rows, 1) range quantizes each row exactly as that row's scalar range would."""
    ranges = torch.tensor([[0.5], [1.0], [3.0], [1e-5]], dtype=torch.float64)
    gen = generator_for(1, "converters", "broadcast")
    x = (torch.rand(4, 300, generator=gen, dtype=torch.float64) * 2 - 1) * 1.3 * ranges
    q = quantize(x, bits, ranges)
    assert q.shape == x.shape
    for row in range(ranges.shape[0]):
        r = float(ranges[row, 0])
        assert torch.allclose(q[row], quantize(x[row], bits, r), rtol=1e-12, atol=0)
        if bits > 1:
            codes = q[row] / _step(bits, r)
            assert torch.allclose(codes, torch.round(codes), rtol=0, atol=1e-9)


@pytest.mark.parametrize("quantize", QUANTIZERS)
def test_tensor_range_broadcasts_per_column(quantize: Quantizer) -> None:
    ranges = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)  # shape (cols,)
    x = torch.full((2, 3), 0.9, dtype=torch.float64)
    q = quantize(x, 3, ranges)  # 3 steps per side: codes at k * range / 3
    expected = torch.tensor([1.0, 2.0 / 3.0, 4.0 / 3.0], dtype=torch.float64).expand(2, 3)
    assert torch.allclose(q, expected, rtol=1e-12, atol=0)


def test_dac_and_adc_equal_quantize_symmetric() -> None:
    x = _samples(2.0)
    for bits in (1, 4, 8):
        ref = quantize_symmetric(x, bits, 2.0)
        assert torch.equal(dac_quantize(x, bits, 2.0), ref)
        assert torch.equal(adc_quantize(x, bits, 2.0), ref)


def test_known_codes_by_hand() -> None:
    """3 bits over [-1, 1]: 3 steps per side, codes {0, ±1/3, ±2/3, ±1}."""
    x = torch.tensor([0.1, 0.2, 0.45, 0.55, 0.9, -0.2, -0.8], dtype=torch.float64)
    expected = torch.tensor([0.0, 1 / 3, 1 / 3, 2 / 3, 1.0, -1 / 3, -2 / 3], dtype=torch.float64)
    assert torch.allclose(quantize_symmetric(x, 3, 1.0), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_straight_through_gradient_inside_range(quantize: Quantizer, bits: int, dtype: torch.dtype) -> None:
    range_ = 2.0
    x = torch.linspace(-0.99 * range_, 0.99 * range_, 1001, dtype=dtype).requires_grad_(True)
    q = quantize(x, bits, range_)
    q.sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(x.grad, torch.ones_like(x), rtol=1e-5, atol=0)
    # the forward value with gradients on is the same quantized value
    assert torch.equal(q.detach(), quantize(x.detach(), bits, range_))


@pytest.mark.parametrize("quantize", QUANTIZERS)
def test_gradient_zero_outside_range(quantize: Quantizer) -> None:
    """Clipped values do not pass gradient (the docstring promises STE only inside)."""
    x = torch.tensor([-5.0, -2.5, 2.5, 5.0], dtype=torch.float64, requires_grad=True)
    quantize(x, 4, 2.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_straight_through_gradient_with_tensor_range() -> None:
    ranges = torch.tensor([[0.5], [4.0]], dtype=torch.float64)
    x = (torch.linspace(-0.9, 0.9, 50, dtype=torch.float64).unsqueeze(0) * ranges).requires_grad_(True)
    adc_quantize(x, 6, ranges).sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x), rtol=1e-12, atol=0)
