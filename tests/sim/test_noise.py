"""Layer-level statistics of the chip's non-idealities: programming noise, read noise,
drift, stuck cells and IR drop, each against a tolerance computed from the sample size."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow

G_MAX = 100e-6  # the ideal preset's window is [0, 100 uS]


def _one_layer(chip, in_f=200, out_f=100, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=False)
    return lin, cimflow.program(cimflow.convert(nn.Sequential(lin), chip), seed=seed)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_programming_noise_on_effective_weights(sigma):
    chip = chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [sigma]}})
    lin, cim = _one_layer(chip)
    eng = cim[0].engine
    w_norm = lin.weight.detach().t() / eng.w_scale
    err = eng.w_eff[0].reshape(-1, 100)[:200] - w_norm
    # differential pair, constant sigma per cell (normalized by g_max - g_min = g_max). The
    # g_min-side cell (0 S) is clipped at 0 S: max(0, sigma Z) has variance
    # sigma^2 (1/2 - 1/(2 pi)) and mean sigma / sqrt(2 pi) whose sign follows the weight's
    # sign; pooled over both signs the error variance is sigma^2 (1 + 1/2) = 1.5 sigma^2.
    # Weights near 0 would have both cells clipped: keep |w| > 4 sigma.
    sample = err[w_norm.abs() > 4 * sigma]
    n = sample.numel()
    assert n > 2000
    expected = sigma * math.sqrt(1.5)
    assert abs(float(sample.std()) - expected) < 6 * expected / math.sqrt(2 * n)


def test_read_noise_output_std_matches_model():
    rel = 0.05
    chip = chip_with("ideal", **{"arrays.analog.device.read_noise": rel})
    lin, cim = _one_layer(chip, in_f=64, out_f=8)
    x = torch.randn(1, 64)
    reps = 4000
    with torch.no_grad():
        ys = torch.cat([cim(x.expand(500, 64)) for _ in range(reps // 500)])
    eng = cim[0].engine
    g_pos, g_neg = eng.g_pos[0], eng.g_neg[0]
    xs = x[0] / x.abs().max()
    var = (xs[:, None] ** 2 * rel**2 * (g_pos**2 + g_neg**2)).sum(0) / (G_MAX**2)
    expected = var.sqrt() * x.abs().max() * eng.w_scale
    measured = ys.std(dim=0)
    tol = 6 * expected / math.sqrt(2 * reps)
    assert bool(((measured - expected).abs() <= tol).all())
    assert torch.allclose(ys.mean(0), lin(x)[0], atol=float(6 * expected.max() / math.sqrt(reps)) + 1e-5)


def test_column_mean_read_noise_equals_exact_when_cells_share_a_conductance():
    chip = chip_with("ideal", **{"arrays.analog.device.read_noise": 0.05})
    lin = nn.Linear(32, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -0.5]).unsqueeze(1).expand(4, 32))
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip), 0)
    eng = cim[0].engine
    x = torch.randn(3, 32)
    exact = eng._read_noise_variance(cimflow_grouped(eng, x))
    eng.set_read_noise_mode("column_mean")
    approx = eng._read_noise_variance(cimflow_grouped(eng, x))
    assert torch.allclose(exact, approx, rtol=1e-5)


def cimflow_grouped(eng, x):
    xs = x / x.abs().amax(1, keepdim=True)
    return eng._grouped(xs.t()).permute(2, 0, 1).unsqueeze(0).unsqueeze(0)  # (1, 1, G, N, gr)


def test_drift_follows_power_law():
    nu = 0.06
    chip = chip_with("ideal", **{"arrays.analog.device.drift": {"nu_mean": nu, "nu_std": 0.0, "t0_s": 1.0}})
    lin, cim = _one_layer(chip, 50, 20)
    w0 = cim[0].engine.w_eff.clone()
    for t in (10.0, 86400.0, 3.15e7):
        cimflow.drift(cim, t)
        assert torch.allclose(cim[0].engine.w_eff, w0 * t ** (-nu), rtol=1e-5, atol=1e-7)
    cimflow.drift(cim, "1s")
    assert torch.allclose(cim[0].engine.w_eff, w0)


def test_drift_spread_matches_nu_std():
    chip = chip_with("ideal", **{"arrays.analog.device.drift": {"nu_mean": 0.05, "nu_std": 0.02, "t0_s": 1.0}})
    _, cim = _one_layer(chip, 200, 100)
    nu = cim[0].engine.nu_pos
    n = nu.numel()
    assert abs(float(nu.mean()) - 0.05) < 6 * 0.02 / math.sqrt(n)
    assert abs(float(nu.std()) - 0.02) < 6 * 0.02 / math.sqrt(2 * n) + 1e-3  # clipping at 0 is 0.6 % of draws


def test_stuck_rates_match():
    p_on, p_off = 0.01, 0.03
    chip = chip_with("ideal", **{"arrays.analog.device.stuck_on_rate": p_on, "arrays.analog.device.stuck_off_rate": p_off,
                                  "arrays.analog.device.g_min": 1e-6})
    _, cim = _one_layer(chip, 200, 100)
    g = torch.cat([cim[0].engine.g_pos.flatten(), cim[0].engine.g_neg.flatten()])
    n = g.numel()
    on = float((g == 100e-6).float().mean())
    for rate, observed in ((p_on, on), (p_off, None)):
        if observed is not None:
            # weights of magnitude exactly max|w| also sit at g_max: at most one per column and side
            assert abs(observed - rate) < 6 * math.sqrt(rate * (1 - rate) / n) + 200 / n


def test_ir_drop_attenuates_far_cells_more():
    chip = chip_with("ideal", **{"arrays.analog.wire_resistance": 2.0, "arrays.analog.rows": 64, "arrays.analog.cols": 64})
    lin = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip), 0)
    w = cim[0].engine.w_eff[0, 0]  # (rows, out)
    assert float(w.max()) < 1.0
    # row 0 is farthest from the sense amplifier, column 31 farthest from the driver
    assert float(w[0, 31]) < float(w[63, 31]) and float(w[63, 31]) < float(w[63, 0])
    g = 100e-6
    # row 63 (next to the sense amplifier), logical column 0 -> physical column 0: 1 + 1 segments
    expected = 1.0 / (1 + g * 2.0 * 2)
    assert abs(float(w[0, 31]) - 1.0 / (1 + g * 2.0 * (63 + 64))) < 1e-5  # row 0, physical column 62: 63 + 64 segments
    assert abs(float(w[63, 0]) - expected) < 1e-5
