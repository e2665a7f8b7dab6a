"""The ``fast`` read (cimflow.sim.fastmm: int8 weight limbs, bfloat16 noise variance, read
groups block-diagonal) against the ``exact`` float32 read: the signal to float32 rounding,
the output noise equal in mean and variance per column within a tolerance computed from
the sample size. The matrix-unit path is forced on, so these run on any CPU."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.sim import cim_layers, fastmm


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
    se_var = var_e * math.sqrt(2.0 / (reads - 1)) * math.sqrt(2.0)  # difference of two estimates
    assert bool(((var_f - var_e).abs() <= 5 * se_var).all()), (var_f / var_e)
    se_mean = (2 * var_e / reads).sqrt()
    assert bool(((fast.mean(0) - exact.mean(0)).abs() <= 5 * se_mean + 1e-7).all())
    assert bool(((var_a - var_e).abs() > 5 * se_var).any())  # the test can fail


def test_fast_read_signal_equals_exact_without_noise(matrix_units):
    """Without read noise the two modes compute the same partial sums (float32 rounding):
    at most a rare ADC code flips at a rounding boundary, by one step."""
    torch.manual_seed(12)
    x = torch.randn(256, 600)
    cim_f, cim_e = _layer("fast", read_noise=0.0), _layer("exact", read_noise=0.0)
    with torch.no_grad():
        y_f, y_e = cim_f(x), cim_e(x)
    assert not torch.equal(y_f, torch.zeros_like(y_f))
    differ = (y_f - y_e).abs() > 1e-5 * float(y_e.abs().max())
    assert float(differ.float().mean()) < 0.005


def test_fast_read_keeps_drift_compensation_and_groups(matrix_units):
    """Per-column drift compensation (ahead of the ADC) gives the same outputs in both modes."""
    torch.manual_seed(13)
    x = torch.randn(64, 600)
    outs = []
    for mode in ("fast", "exact"):
        cim = _layer(mode, read_noise=0.0)
        cimflow.compensate(cim, "per_column")
        cimflow.drift(cim, "30d")
        with torch.no_grad():
            outs.append(cim(x))
    scale = float(outs[1].abs().max())
    assert float(((outs[0] - outs[1]).abs() > 1e-5 * scale).float().mean()) < 0.005


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 40), n=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       spread=st.floats(-6, 6))
def test_limbs_reproduce_the_float_matmul(rows, cols, n, seed, spread):
    """codes @ W through three int8 limbs is within float32 rounding of the float64 product
    (error <= 2^-21 of sum_i |code_i| max|W_col|); the bfloat16 variance within 1 %."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * torch.exp(spread * torch.rand(rows, cols, generator=gen))
    codes = torch.randint(-127, 128, (n, rows), generator=gen).float()
    var = w.square() * 6e-4 + 1e-9
    plan = fastmm.make_plan(w.unsqueeze(0), var.unsqueeze(0), [rows])
    acc, v = fastmm.signal_and_variance(codes, plan)
    ref = codes.double() @ w.double()
    bound = (codes.abs().double().sum(1, keepdim=True) * w.abs().double().amax(0)) * 2.0**-21 + 1e-30
    assert bool(((acc.double() * plan.col_scale.double() - ref).abs() <= bound).all())
    vref = codes.double().square() @ var.double()
    v = v.double() * plan.col_scale.double().square()
    assert bool(((v - vref).abs() <= 0.01 * vref + 1e-30).all())


def test_block_diagonal_keeps_each_group_on_its_own_columns():
    grouped = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2) + 1
    full = fastmm.block_diagonal(grouped, [3, 1])
    assert full.shape == (4, 4)
    assert torch.equal(full[:3, :2], grouped[0]) and torch.equal(full[3:, 2:], grouped[1, :1])
    assert float(full[:3, 2:].abs().sum()) == 0.0 and float(full[3:, :2].abs().sum()) == 0.0
