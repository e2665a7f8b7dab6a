"""The ``fast`` read (cimflow.sim.fastmm: read-noise variance in bfloat16, read groups over
their true rows) against the ``exact`` float32 read: the same signal, the output noise equal
in mean and variance per column within a tolerance computed from the sample size. The
bfloat16 path is forced on, so these run on any CPU (slowly where it has no matrix units)."""

from __future__ import annotations

import pytest
import torch
from cimtest import chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.sim import cim_layers, fastmm
from cimflow.sim.layers import patch_max, patch_view


@pytest.fixture
def matrix_units(monkeypatch):
    monkeypatch.setattr(fastmm, "matrix_units_available", lambda: True)


def _layer(mode: str, in_f: int = 600, out_f: int = 12, read_noise: float = 0.025):
    chip = chip_with("pcm-hermes-like", **{"arrays.pcm.rows": 512, "arrays.pcm.device.read_noise": read_noise})
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(in_f, out_f, bias=False))
    cim = cimflow.convert(model, chip)
    cim_layers(cim)[0][1].engine.set_read_noise_mode(mode)
    return cimflow.drift(cimflow.program(cim, seed=5), "1d")


def _reads(cim, x: torch.Tensor, reads: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([cim(x.expand(2000, -1)) for _ in range(reads // 2000)])


def test_fast_read_noise_has_the_exact_reads_moments(matrix_units):
    """Mean and variance of every output column over 20,000 reads of one input (two read
    groups of 512 + 88 rows, 8-bit ADC) agree between the modes within 5 standard errors;
    the same criterion rejects ``column_mean``, so it has the power to see a wrong variance."""
    torch.manual_seed(11)
    x = torch.relu(torch.randn(1, 600)) * torch.rand(1, 600) * 3  # uneven magnitudes, many zeros
    reads = 20000
    samples = {mode: _reads(_layer(mode), x, reads) for mode in ("fast", "exact", "column_mean")}
    eng = cim_layers(_layer("fast"))[0][1].engine
    assert eng.grid.read_groups == 2 and eng.grid.group_sizes() == [512, 88]
    exact, fast, approx = samples["exact"], samples["fast"], samples["column_mean"]
    assert not torch.equal(exact, fast)  # different arithmetic, not the same code path
    var_e, var_f, var_a = exact.var(0), fast.var(0), approx.var(0)

    def var_se2(y: torch.Tensor) -> torch.Tensor:
        """Squared standard error of a column's sample variance from its fourth central moment:
        after the ADC an output is discrete, far from Gaussian when the noise is below a step."""
        d = y - y.mean(0)
        return ((d**4).mean(0) - d.square().mean(0) ** 2) / reads

    se_var = (var_se2(exact) + var_se2(fast)).sqrt()  # the difference of two independent estimates
    assert bool(((var_f - var_e).abs() <= 5 * se_var).all()), (var_f / var_e)
    se_mean = (2 * var_e / reads).sqrt()
    assert bool(((fast.mean(0) - exact.mean(0)).abs() <= 5 * se_mean + 1e-7).all())
    assert bool(((var_a - var_e).abs() > 5 * (var_se2(exact) + var_se2(approx)).sqrt()).any())  # the test can fail


def test_fast_read_keeps_drift_compensation(matrix_units):
    """Per-column drift compensation (ahead of the ADC) gives the same outputs in both modes,
    without read noise, up to the int8 planes moving a rare partial sum across a code boundary."""
    torch.manual_seed(13)
    x = torch.randn(64, 600)
    outs = []
    for mode in ("fast", "exact"):
        cim = _layer(mode, read_noise=0.0)
        cimflow.compensate(cim, "per_column")
        cimflow.drift(cim, "30d")
        with torch.no_grad():
            outs.append(cim(x))
    assert cim_layers(cim)[0][1].engine.output_gain is not None  # compensation is on
    scale = float(outs[1].abs().max())
    assert float(((outs[0] - outs[1]).abs() > 1e-5 * scale).float().mean()) < 0.01


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 4), group_rows=st.integers(1, 40), last=st.integers(1, 40), out=st.integers(1, 12),
       n=st.integers(1, 9), seed=st.integers(0, 2**31 - 1), spread=st.floats(-6, 6))
def test_grouped_products_equal_the_padded_products(groups, group_rows, last, out, n, seed, spread):
    """Each group's product over its true rows equals the zero-padded float64 product; the
    bfloat16 variance is within 1 % of the float64 one (8-bit codes, positive cell variances)."""
    last = min(last, group_rows)
    rows = (groups - 1) * group_rows + last
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(groups, group_rows, out, generator=gen) * torch.exp(spread * torch.rand(groups, group_rows, out, generator=gen))
    w[-1, last:] = float("nan")  # rows past the last group's true rows are never read
    codes = torch.randint(-127, 128, (n, rows), generator=gen).float()
    padded = torch.cat([codes, codes.new_zeros(n, groups * group_rows - rows)], 1).view(n, groups, group_rows).transpose(0, 1)
    w0 = torch.nan_to_num(w, nan=0.0)
    ref = torch.matmul(padded.double(), w0.double())
    got = fastmm.grouped_products(codes, w, rows)
    assert got.shape == (groups, n, out) and bool(torch.isfinite(got).all())
    # float32 rounding is relative to the sum of |products| (a sum that cancels keeps that error)
    magnitude = torch.matmul(padded.double().abs(), w0.double().abs())
    assert bool(((got.double() - ref).abs() <= 1e-5 * magnitude + 1e-30).all())
    cell = w0.square() * 6e-4 + 1e-9
    var = fastmm.variance_products(codes, cell.to(torch.bfloat16), rows).double()
    vref = torch.matmul(padded.double().square(), cell.double())
    assert bool(((var - vref).abs() <= 0.01 * vref + 1e-30).all())


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3),
       sw=st.integers(1, 3), dh=st.integers(1, 3), dw=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_patch_max_equals_max_pool(h, w, kh, kw, sh, sw, dh, dw, seed):
    """The separable patch maximum (convolution input ranges) is max_pool2d's, exactly."""
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if span_h > h or span_w > w:
        return
    a = torch.rand(2, 1, h, w, generator=torch.Generator().manual_seed(seed))
    expect = torch.nn.functional.max_pool2d(a, (kh, kw), stride=(sh, sw), dilation=(dh, dw))
    assert torch.equal(patch_max(a, (kh, kw), (sh, sw), (dh, dw)), expect)


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2), seed=st.integers(0, 2**31 - 1))
def test_patch_view_is_unfold(c, h, w, kh, kw, sh, sw, dh, dw, seed):
    """The strided patch view, reshaped, is F.unfold's columns (same order, same values)."""
    if dh * (kh - 1) + 1 > h or dw * (kw - 1) + 1 > w:
        return
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))
    cols = torch.nn.functional.unfold(x, (kh, kw), dilation=(dh, dw), stride=(sh, sw))
    view = patch_view(x, (kh, kw), (sh, sw), (dh, dw))
    assert torch.equal(view.reshape(2, c * kh * kw, -1), cols)


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Conv1d(4, 7, 5, stride=2, padding=2), (3, 4, 30)),
    (lambda: nn.Conv2d(4, 6, (3, 2), stride=2, dilation=(1, 2), padding="valid"), (2, 4, 11, 10)),
    (lambda: nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"), (2, 2, 7, 7)),
])
def test_convolution_read_from_patch_view_equals_general_path(make, shape):
    """No-grad convolutions (patch view, separable ranges) against the general im2col path
    without read noise: the same outputs up to a rare ADC code at a rounding boundary."""
    chip = chip_with("pcm-hermes-like", **{"arrays.pcm.device.read_noise": 0.0})
    torch.manual_seed(8)
    model = nn.Sequential(make())
    x = torch.randn(shape)
    cim = cimflow.program(cimflow.convert(model, chip), 0)
    general = cim(x).detach()  # parameters require grad: the general path
    with torch.no_grad():
        fast = cim(x)
    assert fast.shape == general.shape
    scale = float(general.abs().max())
    assert float(((fast - general).abs() > 1e-4 * scale).float().mean()) < 0.01
    assert float((fast - general).abs().max()) < 0.05 * scale


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 140), n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), zero_row=st.booleans())
def test_per_vector_input_range_is_the_max_magnitude_for_every_width(width, n, seed, zero_row):
    """The per-vector input range is max |x| per row, by either form (short rows: one |x|
    pass; long rows: max and min), and the floor for an all-zero row."""
    from cimflow.sim.array_state import EPS

    lin = nn.Linear(width, 3)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), "ideal"), 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=gen) * torch.exp(4 * torch.rand(n, 1, generator=gen) - 2)
    if zero_row:
        x[0] = 0.0
    got = cim[0].engine._input_scale(x)
    assert got.shape == (n, 1)
    assert torch.equal(got, x.abs().amax(dim=-1, keepdim=True).clamp_min(EPS))


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 3), group_rows=st.integers(1, 40), last=st.integers(1, 40), out=st.integers(1, 12),
       n=st.integers(1, 9), seed=st.integers(0, 2**31 - 1), spread=st.floats(-6, 6))
def test_int8_signal_planes_are_within_their_bound(groups, group_rows, last, out, n, seed, spread):
    """The two int8 planes represent each weight within 1/508 of its column's scale, and the
    int8 partial sums equal the float64 product of those weights within sum |code| * scale / 508."""
    last = min(last, group_rows)
    rows = (groups - 1) * group_rows + last
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(groups, group_rows, out, generator=gen) * torch.exp(spread * torch.rand(groups, group_rows, out, generator=gen))
    w[-1, last:] = 0.0
    planes = fastmm.int8_planes(w)
    assert planes.hi.dtype == planes.lo.dtype == torch.int8 and planes.scale.shape == (groups, 1, out)
    rebuilt = planes.scale.double() * (planes.hi.double() + planes.lo.double() / fastmm.LO_LEVELS)
    bound = planes.scale.double() / (2 * fastmm.LO_LEVELS) + 1e-6 * w.double().abs()  # and float32 rounding of w / scale
    assert bool(((rebuilt - w.double()).abs() <= bound).all())
    codes = torch.randint(-127, 128, (n, rows), generator=gen)
    got = fastmm.int_signal_products(codes.to(torch.int8), planes, rows).double() * planes.scale.double()
    padded = torch.cat([codes, codes.new_zeros(n, groups * group_rows - rows)], 1).view(n, groups, group_rows).transpose(0, 1)
    ref = torch.matmul(padded.double(), w.double())
    err_bound = torch.matmul(padded.double().abs(), bound) + 1e-6 * torch.matmul(padded.double().abs(), w.double().abs())
    assert bool(((got - ref).abs() <= err_bound + 1e-30).all())


@pytest.mark.parametrize("fused", ["1", "0"], ids=["fused", "unfused"])
def test_int8_read_matches_the_float_read_without_noise(matrix_units, monkeypatch, fused):
    """The integer read (forced on for a small read) and the float32 one give the same ADC
    codes but where the planes' rounding moves a partial sum across a code boundary: at most
    one ADC step, on a small fraction of the outputs."""
    torch.manual_seed(14)
    x = torch.randn(256, 600)
    cim_e = _layer("exact", out_f=64, read_noise=0.0)
    cim_f = _layer("fast", out_f=64, read_noise=0.0)
    monkeypatch.setattr(fastmm, "BF16_MIN_MACS", 0)
    monkeypatch.setenv("CIMFLOW_FUSED_READ", fused)
    eng = cim_layers(cim_f)[0][1].engine
    with torch.no_grad():
        y_f, y_e = cim_f(x), cim_e(x)
    assert ("_fused_operands" if fused == "1" else "_int_analog") in eng.__dict__  # the integer path really ran
    diff = (y_f - y_e).abs()
    steps_adc = (1 << (eng.spec.analog_adc().bits - 1)) - 1
    # one ADC step of every group, per output: full scale x weight scale x input scale / steps
    step = (eng.adc_range[0, :, 0] * eng.w_scale).sum(0) * x.abs().amax(1, keepdim=True) / steps_adc
    assert bool((diff <= step * 1.0001).all())
    assert float((diff > 1e-5 * float(y_e.abs().max())).float().mean()) < 0.01


@pytest.mark.parametrize(("flags", "amx_granted", "expected"), [
    ({"avx512_vnni": True, "avx512_bf16": True}, False, "AVX-512 VNNI + BF16"),  # AMD Zen 4: no AMX, the AVX-512 dot products
    ({"avx512_vnni": True, "avx512_bf16": False}, False, None),  # Ice Lake: int8 only, bfloat16 emulated
    ({"avx2": True, "avx_vnni": True}, False, None),  # no bfloat16 dot product
    ({"amx_int8": True, "amx_bf16": True}, True, "AMX"),  # AMX, granted to the process
    ({"amx_int8": True, "amx_bf16": True}, False, None),  # AMX the kernel refused, nothing else
    ({"amx_int8": True, "amx_bf16": True, "avx512_vnni": True, "avx512_bf16": True}, False, "AVX-512 VNNI + BF16"),
    ({}, False, None),  # a torch that cannot tell
])
def test_matrix_units_are_amx_or_avx512_vnni_with_bf16(monkeypatch, flags, amx_granted, expected):
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: amx_granted)
    assert fastmm._has_matrix_units(flags) is (expected is not None)
    assert fastmm._matrix_unit_kind(flags) == expected
    monkeypatch.setattr(fastmm, "_cpu_capability", lambda: flags)
    assert fastmm.matrix_units_name() == (expected or "none: float32 reads")


def test_matrix_units_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("CIMFLOW_MATRIX_UNITS", "0")
    assert fastmm.matrix_units_available() is False
    assert fastmm.matrix_units_name().startswith("off")
