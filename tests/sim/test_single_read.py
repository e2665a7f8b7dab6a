"""The fused training read (sim/single_read.py): its closed-form straight-through gradients
equal the general path's autograd - one read group and several, with and without ADC
clipping, with a fixed (calibrated) input range that clips - and its forward is the
inference read (same seed, same values); its read noise keeps the exact path's moments."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import alternating_read, chip_with
from torch import nn

import cimflow
from cimflow.errors import SimulationError
from cimflow.sim import draw_pool, single_read

PCM = "arrays.pcm.device."
# HERMES-like arrays (256 rows: 600 inputs take 3 read groups) without noise, so both
# paths compute the same forward values and the gradients can be compared exactly
QUIET_PCM = chip_with("pcm-hermes-like", **{PCM + "programming_noise": {"coefficients": [0.0]}, PCM + "read_noise": 0.0,
                                            PCM + "stuck_on_rate": 0.0, PCM + "stuck_off_rate": 0.0})
QUIET_IDEAL = chip_with("ideal", **{"arrays.analog.adc.bits": 6})


def _grads(chip, fused: bool, adc_scale: float = 1.0, input_range: float | None = None):
    single_read.ENABLED = fused
    try:
        torch.manual_seed(0)
        cim = cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(600, 64), nn.ReLU(), nn.Linear(64, 10)), chip), seed=0)
        for layer in (cim[0], cim[2]):
            layer.engine.adc_range = layer.engine.adc_range * adc_scale
            if input_range is not None:
                layer.engine.input_range = input_range
                layer.engine.spec = layer.engine.spec.model_copy(update={"input_encoding": layer.engine.spec.input_encoding.model_copy(
                    update={"range": "calibrated"})})
        x = (torch.rand(32, 600, generator=torch.Generator().manual_seed(1)) - 0.3).requires_grad_(True)
        y = cim(x)
        y.pow(2).sum().backward()
        return [y.detach(), x.grad, cim[0].weight.grad, cim[2].weight.grad]
    finally:
        single_read.ENABLED = True


@pytest.mark.parametrize("chip", [QUIET_IDEAL, QUIET_PCM], ids=["one-group", "three-groups"])
@pytest.mark.parametrize(("adc_scale", "input_range"), [(1.0, None), (0.05, None), (1.0, 0.4)], ids=["in-range", "adc-clips", "dac-clips"])
def test_fused_gradients_equal_the_general_paths_autograd(chip, adc_scale, input_range):
    fused = _grads(chip, True, adc_scale, input_range)
    general = _grads(chip, False, adc_scale, input_range)
    for name, a, b in zip(("output", "grad x", "grad W1", "grad W2"), fused, general, strict=True):
        scale = float(b.abs().max())
        assert scale > 0, name
        # one ADC or DAC code flipping by float rounding moves an output by one step; the rest is float error
        assert torch.allclose(a, b, rtol=1e-4, atol=2e-3 * scale), (name, float((a - b).abs().max()), scale)
    if adc_scale < 1:  # clipping really happened: some of the gradient was stopped
        assert float(fused[2].abs().sum()) < float(_grads(chip, True)[2].abs().sum())


def test_fused_forward_is_the_inference_read_for_the_same_seed():
    torch.manual_seed(0)
    lin = nn.Linear(600, 32)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), "pcm-hermes-like"), seed=3)
    x = torch.rand(64, 600)
    with torch.no_grad():
        expected = cim(x)
    cimflow.program(cim, seed=3)  # the same instance, its read-noise generator restarted
    got = cim(x.clone().requires_grad_(True))
    assert got.requires_grad
    assert torch.equal(got.detach(), expected)


def test_fused_read_noise_keeps_the_exact_moments():
    # each output's read noise is a Gaussian of known variance (cimtest.alternating_read)
    cim, x, ideal, var = alternating_read(100, 0.5, 400)
    y = cim(x.requires_grad_(True)).detach()
    n = y.numel()
    assert abs(float(y.mean()) - ideal) < 5 * math.sqrt(var / n)
    assert abs(float(y.var()) / var - 1) < 5 * math.sqrt(2 / n)


def test_pooled_read_noise_keeps_the_moments_and_fresh_values_per_read():
    # the same layer as above; the training reads' noise from a pool (draw_pool): each read's
    # noise has the exact variance, and two reads' noise at one output is uncorrelated
    cim, x, _, var = alternating_read(100, 0.5, 400)
    eng = cim[0].engine
    draw_pool.use_pooled_read_noise(eng, 7)
    x.requires_grad_(True)
    reads = [cim(x).detach() for _ in range(3)]
    n = reads[0].numel()
    for y in reads:
        assert abs(float(y.mean())) < 5 * math.sqrt(var / n)
        assert abs(float(y.var()) / var - 1) < 5 * math.sqrt(2 / n)
    for a, b in ((0, 1), (1, 2)):
        assert abs(float(torch.corrcoef(torch.stack([reads[a].flatten(), reads[b].flatten()]))[0, 1])) < 5 / math.sqrt(n)
    # a smaller read fits the same pool; inference reads keep the instance's generator
    assert cim(x[:10]).shape == (10, 50)
    with torch.no_grad():
        expected = cim(x.detach())
    cimflow.program(cim, seed=0)
    with torch.no_grad():
        assert torch.equal(cim(x.detach()), expected)
    draw_pool.use_pooled_read_noise(eng, None)
    assert eng._read_noise_pool is None


def test_a_pool_window_must_fit():
    pool = draw_pool.DrawPool(4, lambda count, gen: torch.randn(count, generator=gen), torch.Generator().manual_seed(0))
    assert pool.window(4).shape == (4,) and pool.window(6, 2).shape == (2,)
    for offset, count in ((5, 4), (-1, 2), (0, 5), (0, 0)):
        with pytest.raises(SimulationError, match="does not fit"):
            pool.window(offset, count)


def _bit_planes(codes: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Sign-magnitude bit planes of integer codes: ``codes == sum_b 2^b planes[b]``."""
    mag, sign = codes.abs(), codes.sign()
    return [sign * ((mag >> b) & 1) for b in range(bits)]


@pytest.mark.parametrize(("weight_bits", "input_bits"), [(4, 4), (8, 8), (3, 6)])
def test_digital_read_is_the_bit_serial_bit_sliced_integer_sum(weight_bits, input_bits):
    """A digital array's one-matmul read equals the bit-by-bit shift-add of (input bit,
    weight bit) products in exact integers, and the general (autograd) path's output."""
    torch.manual_seed(weight_bits * 10 + input_bits)
    lin = nn.Linear(300, 24)  # 300 rows: two row tiles of the 256-row digital array
    chip = chip_with("ideal", **{"arrays.digital.weight_bits": weight_bits, "arrays.digital.input_encoding.bits": input_bits})
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip, overrides={nn.Linear: "digital"}), 0)
    x = torch.randn(40, 300)
    x[3] = 0.0  # an all-zero vector reads zeros
    w = lin.weight.detach().t().double()
    w_steps, x_steps = (1 << (weight_bits - 1)) - 1, (1 << (input_bits - 1)) - 1
    sw = w.abs().amax(0)
    wc = torch.round(w / sw * w_steps).long()
    sx = x.double().abs().amax(1, keepdim=True).clamp_min(1e-12)
    xc = torch.round(x.double() / sx * x_steps).long()
    acc = torch.zeros(40, 24, dtype=torch.long)
    for b, xp in enumerate(_bit_planes(xc, input_bits - 1)):
        for c, wp in enumerate(_bit_planes(wc, weight_bits - 1)):
            acc += (xp @ wp) << (b + c)
    assert torch.equal(acc, xc @ wc)  # the shift-add is the integer product
    expect = acc.double() * (sx / x_steps) * (sw / w_steps) + lin.bias.detach().double()
    with torch.no_grad():
        fast = cim(x)
        assert torch.equal(cim(x), fast)  # the cached weights read the same again
    general = cim(x.clone().requires_grad_(True)).detach()  # the autograd path: no cache, no fusion
    scale = float(expect.abs().max())
    assert float((fast.double() - expect).abs().max()) <= 1e-6 * scale
    assert float((general.double() - expect).abs().max()) <= 1e-6 * scale
    assert bool(fast[3].eq(lin.bias.detach()).all())
    with torch.no_grad():  # new weights (twice the scale, the same codes), programmed again: the cache follows
        cim[0].weight.mul_(2.0)  # convert copied the model: the converted layer's own weight
    cimflow.program(cim, seed=1)
    with torch.no_grad():
        doubled = 2 * (expect - lin.bias.detach().double()) + lin.bias.detach().double()
        assert float((cim(x).double() - doubled).abs().max()) <= 2e-6 * scale


@pytest.mark.parametrize("weight_bits", [4, 8])
def test_digital_read_on_the_int8_units_is_the_same_integer_product(weight_bits, monkeypatch):
    """Forced onto the int8 matrix units, a digital array's read is the same exact integer
    product: equal to the float32 read (whose sums are exact below 2^24), and the fused
    inference read (the DAC writing int8 codes, one kernel for the scales) gives the unfused
    one's values bit for bit."""
    from cimflow.sim import fastmm, fused_read, single_read

    torch.manual_seed(weight_bits)
    chip = chip_with("ideal", **{"arrays.digital.weight_bits": weight_bits, "arrays.digital.input_encoding.bits": 8})
    cim = cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(300, 24)), chip, overrides={nn.Linear: "digital"}), 0)
    x = torch.randn(40, 300)
    with torch.no_grad():
        plain = cim(x)  # 288,000 multiply-adds: the float32 read
        monkeypatch.setattr(fastmm, "matrix_units_available", lambda: True)
        monkeypatch.setattr(fastmm, "BF16_MIN_MACS", 0)
        monkeypatch.setattr(single_read, "DIGITAL_INT_MIN_MACS", 1 << 62)
        on_ints = cim(x)  # the DAC's float32 codes copied to int8, then the torch passes
        assert "_int_digital" in cim[0].engine.__dict__
        monkeypatch.setattr(single_read, "DIGITAL_INT_MIN_MACS", 0)
        calls = []
        fused_read_of = single_read._fused_int_digital
        monkeypatch.setattr(single_read, "_fused_int_digital", lambda *a: calls.append(a) or fused_read_of(*a))
        fused = cim(x)
    assert torch.allclose(on_ints, plain, rtol=1e-6, atol=1e-6 * float(plain.abs().max()))
    assert len(calls) == int(fused_read.available())  # (the fused read needs numba)
    assert torch.equal(fused, on_ints)
