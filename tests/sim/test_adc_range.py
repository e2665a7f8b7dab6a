"""The ADC full scale: ``expected`` (the default) from the column-sum statistics, the worst case
(``per_array_max``) on request, and calibrated moments when data is given."""

from __future__ import annotations

import pytest
import torch
from cimtest import chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.chip.spec import ADC, InputEncoding
from cimflow.errors import ChipSpecError
from cimflow.sim.array_state import expected_full_scale, input_moments


def _chip(adc_range: str, bits: int = 8, **more):
    return chip_with("ideal", **{"arrays.analog.adc.bits": bits, "arrays.analog.adc.range": adc_range, "arrays.analog.cols": 512,
                                 "arrays.analog.input_encoding.bits": 8, **more})


def _identity_readback_error(adc_range: str) -> tuple[float, float]:
    """Relative (Frobenius) and rms / w_max error of a 256 x 256 uniform weight matrix read
    back row by row with identity inputs on one 256-row array, 8-bit ADC, no cell noise."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        lin.weight.uniform_(-1, 1)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), _chip(adc_range)), 0)
    with torch.no_grad():
        read = cim(torch.eye(256))
    w = lin.weight.detach().t()
    return float((read - w).norm() / w.norm()), float((read - w).square().mean().sqrt() / w.abs().max())


def test_expected_full_scale_reads_weights_back_far_better_than_the_worst_case():
    worst_rel, worst_rms = _identity_readback_error("per_array_max")
    exp_rel, exp_rms = _identity_readback_error("expected")
    # worst case: full scale ~ sum |w| ~ 128 w_max, one LSB ~ 1 w_max: most weights read as 0 or +-1
    assert worst_rms > 0.25
    # expected: full scale ~ m1 |sum w| + 4 sqrt(m2 sum w^2) ~ 35 w_max, LSB ~ 0.27 w_max, rounding
    # error rms ~ LSB / sqrt(12) ~ 0.08 w_max
    assert exp_rms < 0.11
    assert exp_rel < 0.4 * worst_rel


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("sigmas", [2.0, 4.0])
def test_column_sums_clip_no_more_often_than_the_normal_tail(signed, sigmas):
    """Inputs with the assumed moments (uniform magnitude in [0, 1], random or fixed sign): the
    fraction of column sums beyond the full scale stays under the two-sided normal tail at
    ``sigmas`` (the full scale bounds the mean and the standard deviation from above)."""
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(256, 64, generator=gen) * 2 - 1
    w[:, :16] += 0.5  # some columns with a large mean: the mean term matters for one-signed inputs
    full = expected_full_scale(w, 0, sigmas, InputEncoding())
    assert bool((full <= w.abs().sum(0) + 1e-6).all())  # never above the worst case
    x = torch.rand(4096, 256, generator=gen)
    if signed:
        x = x * torch.randint(0, 2, x.shape, generator=gen).mul(2).sub(1)
    psum = x @ w
    clipped = float((psum.abs() > full).float().mean())
    tail = float(torch.erfc(torch.tensor(sigmas / 2**0.5)))  # P(|z| > sigmas)
    n = psum.numel()
    assert clipped <= tail + 4 * (tail * (1 - tail) / n) ** 0.5


def test_input_moments_of_bit_serial_pulses():
    assert input_moments(InputEncoding()) == (0.5, pytest.approx(1 / 3))
    one_bit = InputEncoding(scheme="bit_serial", bits=8, bits_per_pulse=1)
    assert input_moments(one_bit) == (0.5, pytest.approx(0.5))  # a 1-bit digit: 0 or 1, mean square 1/2


def test_calibrated_expected_range_is_the_moments_of_the_partial_sums_seen():
    """Every calibration input the same vector: zero spread, so the full scale is the largest
    |partial sum| of each array's columns."""
    chip = _chip("expected", bits=8, **{"arrays.analog.adc.sigmas": 3.0})
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=False)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip), 0)
    eng = cim[0].engine
    x = torch.rand(1, 64).repeat(16, 1)
    cimflow.calibrate(cim, [x])
    x_q = torch.round(x[:1] / x[:1].abs().max() * 127) / 127  # the 8-bit DAC, per-vector range
    psum = (x_q @ eng.w_eff[0, 0, :64]).abs()
    assert float(eng.adc_range.max()) == pytest.approx(float(psum.max()), rel=1e-4)
    assert eng.adc_range_calibrated is not None


def test_table_expected_range_covers_pooled_reads():
    chip = chip_with("ideal", **{"arrays.analog.adc.bits": 8, "arrays.analog.adc.range": "expected",
                                 "arrays.analog.rows": 64, "arrays.analog.max_active_rows": 16})
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(640, 8, mode="sum")
    with torch.no_grad():
        bag.weight.uniform_(-1, 1)
    cim = cimflow.program(cimflow.convert(nn.Sequential(bag), chip), 0)
    layer = cim[0]
    full = layer.adc_range
    assert full < 16.0  # the worst case: 16 rows at full scale
    assert full == pytest.approx(4.0 * 16**0.5 * (1 / 3) ** 0.5, rel=0.15)  # 4 sigma of 16 uniform cells
    worst = cimflow.program(cimflow.convert(nn.Sequential(nn.EmbeddingBag(640, 8, mode="sum")), chip_with(
        "ideal", **{"arrays.analog.adc.range": "per_array_max", "arrays.analog.rows": 64, "arrays.analog.max_active_rows": 16})), 0)
    assert worst[0].adc_range == 16.0


@pytest.mark.parametrize("bad", [0.5, 17, -1.0])
def test_sigmas_out_of_bounds_is_one_clear_error(bad):
    with pytest.raises(ChipSpecError) as info:
        chip_with("ideal", **{"arrays.analog.adc.sigmas": bad})
    assert "sigmas" in str(info.value)
    assert ADC(bits=8).sigmas == 4.0


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       sigmas=st.floats(1.0, 16.0), offset=st.floats(-1.0, 1.0), pulses_bits=st.sampled_from([None, 1, 2, 4]))
def test_expected_full_scale_is_bounded_and_grows_with_sigmas(rows, cols, seed, sigmas, offset, pulses_bits):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(rows, cols, generator=gen) * 2 - 1 + offset).clamp(-1, 1)
    enc = InputEncoding() if pulses_bits is None else InputEncoding(scheme="bit_serial", bits=8, bits_per_pulse=pulses_bits)
    low, high = expected_full_scale(w, 0, 1.0, enc), expected_full_scale(w, 0, sigmas, enc)
    worst = w.abs().sum(0)
    assert bool((low >= 0).all()) and bool((high <= worst + 1e-5).all())
    assert bool((high >= low - 1e-6).all())
    m1, _ = input_moments(enc)
    # at least the mean term, unless clamped at the worst case
    assert bool(((low >= m1 * w.sum(0).abs() - 1e-5) | (low >= worst - 1e-5)).all())
