"""Drift compensation from a reference read: it restores the output scale after a
synthetic drift (exactly for uniform drift, within a computed tolerance for a spread of
drift exponents, per column when columns drift differently), for matrix layers and
embedding tables; and the embedding ADC calibration."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.errors import CimflowError

DEV = "arrays.analog.device."


def _drifting(nu_mean, nu_std, **extra):
    return chip_with("ideal", **{DEV + "drift": {"nu_mean": nu_mean, "nu_std": nu_std, "t0_s": 1.0}, **extra})


def _layer(chip, in_f=256, out_f=64, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=False)
    return cimflow.program(cimflow.convert(nn.Sequential(lin), chip), seed=seed)


def _outputs(cim, x, t, mode):
    cimflow.compensate(cim, mode)
    cimflow.drift(cim, t)
    with torch.no_grad():
        return cim(x)


@pytest.mark.parametrize("mode", ["global", "per_column"])
def test_uniform_drift_is_undone_exactly(mode):
    nu, t = 0.05, 1e6
    # programming noise and stuck cells too: the reference read sees the real conductances
    cim = _layer(_drifting(nu, 0.0, **{DEV + "programming_noise": {"coefficients": [0.03]}, DEV + "stuck_on_rate": 0.01}))
    x = torch.randn(32, 256)
    y0 = _outputs(cim, x, 1.0, None)
    y_t = _outputs(cim, x, t, None)
    assert torch.allclose(y_t, y0 * t**-nu, rtol=1e-4, atol=1e-5 * float(y0.abs().max()))
    y_c = _outputs(cim, x, t, mode)
    assert torch.allclose(y_c, y0, rtol=1e-4, atol=1e-5 * float(y0.abs().max()))
    assert float(cim[0].engine.output_gain.mean()) == pytest.approx(t**nu, rel=1e-5)
    assert _outputs(cim, x, t, None).sub(y_t).abs().max() < 1e-5 * float(y0.abs().max())  # off again: no gain


def test_a_spread_of_drift_exponents_is_undone_on_average():
    nu, nu_std, t, rows = 0.05, 0.01, 1e6, 256
    cim = _layer(_drifting(nu, nu_std), in_f=rows)
    x = torch.randn(256, rows)
    y0 = _outputs(cim, x, 1.0, None)
    y_c = _outputs(cim, x, t, "global")
    slope = float((y_c * y0).sum() / (y0 * y0).sum())
    # each cell scales by exp(-nu_i L), L = ln(t/t0): relative spread ~ nu_std L per cell; the
    # layer's gain is estimated from 2 x rows x out cells and the fit pools rows x out of them
    spread = nu_std * math.log(t)
    assert abs(slope - 1.0) < 6 * spread / math.sqrt(rows * 64)
    y_t = _outputs(cim, x, t, None)
    assert float((y_t * y0).sum() / (y0 * y0).sum()) < 0.55  # uncompensated: about exp(-0.05 ln 1e6) = 0.50


def test_per_column_compensation_undoes_column_specific_drift():
    t = 1e4
    cim = _layer(_drifting(0.0, 0.0))
    eng = cim[0].engine
    nu_col = torch.linspace(0.0, 0.1, 64)  # a synthetic drift: column j drifts with nu_j
    eng.nu_pos = nu_col.expand_as(eng.nu_pos).clone()
    eng.nu_neg = nu_col.expand_as(eng.nu_neg).clone()
    x = torch.randn(64, 256)
    y0 = _outputs(cim, x, 1.0, None)
    err = {}
    for mode in ("global", "per_column"):
        err[mode] = float((_outputs(cim, x, t, mode) - y0).norm() / y0.norm())
    assert err["per_column"] < 1e-4
    assert err["global"] > 0.1  # one factor cannot undo column-specific drift
    gain = eng.output_gain
    assert torch.allclose(gain, t**nu_col, rtol=1e-4)


def test_drift_compensation_of_embedding_tables():
    nu, t = 0.05, 1e6
    chip = _drifting(nu, 0.0, **{DEV + "programming_noise": {"coefficients": [0.02]}})
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(300, 16, mode="sum"))
    cim = cimflow.program(cimflow.convert(model, chip), seed=0)
    idx = torch.randint(0, 300, (64, 4))
    y0 = _outputs(cim, idx, 1.0, None)
    # a 24-bit ADC over a 256-row read: steps of 256 / (2**23 - 1) cells, ~1e-4 of the largest sum here
    atol = 1e-4 * float(y0.abs().max())
    assert torch.allclose(_outputs(cim, idx, t, None), y0 * t**-nu, rtol=1e-4, atol=atol)
    assert torch.allclose(_outputs(cim, idx, t, "global"), y0, rtol=1e-4, atol=atol)
    assert torch.allclose(_outputs(cim, idx, t, "per_column"), y0, rtol=1e-4, atol=atol)


def test_compensation_is_re_read_at_every_time_and_digital_arrays_are_untouched():
    cim = _layer(_drifting(0.04, 0.0))
    cimflow.compensate(cim, "global")
    for t in (10.0, 1e3, 1e6):
        cimflow.drift(cim, t)
        assert float(cim[0].engine.output_gain) == pytest.approx(t**0.04, rel=1e-5)
    dig = cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(16, 4)), "sram-digital-22nm"), 0)
    cimflow.compensate(dig, "per_column")
    cimflow.drift(dig, "1y")
    assert dig[0].engine.output_gain is None


def test_bad_compensation_mode_is_refused():
    cim = _layer(_drifting(0.01, 0.0), in_f=8, out_f=4)
    with pytest.raises(CimflowError, match="global"):
        cimflow.compensate(cim, "median")
    with pytest.raises(CimflowError, match="convert"):
        cimflow.compensate(nn.Sequential(nn.Linear(2, 2)), "global")


def test_calibration_sets_percentile_adc_ranges_of_embedding_tables():
    chip = chip_with("ideal", **{"arrays.analog.adc": {"bits": 6, "range": "percentile", "percentile": 99.0}})
    torch.manual_seed(0)
    cim = cimflow.program(cimflow.convert(nn.Sequential(nn.EmbeddingBag(200, 8, mode="sum")), chip), seed=0)
    bag = cim[0]
    before = bag.adc_range
    idx = torch.randint(0, 200, (256, 2))
    cimflow.calibrate(cim, [idx[:128], idx[128:]])
    # the 99th percentile of real pooled sums (2 rows) is below the worst case a full read could give
    assert bag.adc_range_calibrated is not None and 0 < bag.adc_range < before
