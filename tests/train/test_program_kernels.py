"""The compiled fast path of cached-draw programming (train/program_kernels.py) against its
torch form (train/draws.py ``_cells_torch``): the same instance from the same draws, every
output (conductances, weight scales, effective weights, read-noise variances, ADC ranges)
equal up to float rounding, over the laws the fast path covers; and the kernels' exponential
against numpy's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cimtest import chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.sim import fused_read
from cimflow.train import draws as draws_module
from cimflow.train.draws import InstanceDraws

pytestmark = pytest.mark.skipif(not fused_read.available(), reason="numba not importable or CIMFLOW_FUSED_READ=0: no kernels to compare")

DEV = "arrays.analog.device."


def _chip(coefficients=(0.01, 0.04, -0.02), stuck=0.0, read_noise=0.03, nu=0.05, adc="per_array_max", scaling="per_column"):
    return chip_with("ideal", **{DEV + "g_min": 10e-6, DEV + "levels": 33, DEV + "read_noise": read_noise,
                                 DEV + "programming_noise": {"coefficients": list(coefficients)},
                                 DEV + "stuck_on_rate": stuck, DEV + "stuck_off_rate": stuck / 2,
                                 DEV + "drift": {"nu_mean": nu, "nu_std": nu / 4, "t0_s": 10.0},
                                 "arrays.analog.rows": 128, "arrays.analog.adc.range": adc, "arrays.analog.adc.bits": 8,
                                 "arrays.analog.weight_scaling": scaling})


def _instance(chip, compiled: bool, monkeypatch, t: float, in_f: int = 300, out_f: int = 70, nan: bool = False):
    """Program instance 7 of a fixed Linear on ``chip`` from pools seeded 0 (the same draws
    every call), through the compiled kernels or the torch form; the engine's outputs.
    ``nan``: one weight is NaN (a diverged training step)."""
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        lin.weight[3].zero_()  # an all-zero column: its scale is 1
        lin.weight[5, :10] = 1.0  # levels clamped at the top
        if nan:
            lin.weight[7, 20] = float("nan")
    cim = cimflow.convert(nn.Sequential(lin), chip)
    ran = []
    real = draws_module._compiled_kernels

    def spy(*args):
        k = real(*args) if compiled else None
        ran.append(k is not None)
        return k

    monkeypatch.setattr(draws_module, "_compiled_kernels", spy)
    draws = InstanceDraws(0)
    draws.program_layer("0", cim[0], 6, t)  # the first instance is checked against (and left as) the engine's own refresh
    draws.program_layer("0", cim[0], 7, t)
    assert ran == [compiled, compiled] and not draws.fallbacks
    work = draws._pools["0"].work
    assert work is not None and (work._scratch is None) == compiled  # the compiled form needs no scratch buffers
    eng = cim[0].engine
    return {key: getattr(eng, key).clone() for key in ("g_pos", "g_neg", "w_scale", "w_eff", "read_var", "adc_range")
            if getattr(eng, key) is not None}


CASES = {
    "drift, read noise, sums": ({}, 1e5),
    "at t0": ({}, None),
    "stuck cells": ({"stuck": 0.02}, 3e4),
    "no read noise": ({"read_noise": 0.0}, 1e5),
    "no programming noise": ({"coefficients": (0.0,)}, 1e5),
    "constant sigma, per-layer scale": ({"coefficients": (0.02,), "scaling": "per_layer"}, 1e3),
    "degree-7 sigma": ({"coefficients": (0.01, 0.02, -0.01, 0.005, 0.0, 0.001, -0.002, 0.003)}, 1e5),
    "expected ADC range (the engine's law at t0)": ({"adc": "expected"}, 1e5),
    "fixed ADC range": ({"adc": "fixed"}, 1e5),
    "percentile ADC range, not calibrated": ({"adc": "percentile"}, 1e5),
    "strong drift": ({"nu": 1.0}, 1e12),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_compiled_cells_are_the_torch_forms(case, monkeypatch):
    changes, t = CASES[case]
    chip = _chip(**changes)
    fast = _instance(chip, True, monkeypatch, t)
    ref = _instance(chip, False, monkeypatch, t)
    assert fast.keys() == ref.keys()
    assert ("read_var" in ref) == (changes.get("read_noise", 0.03) > 0)
    for key, value in ref.items():
        assert fast[key].shape == value.shape, key
        top = float(value.abs().max())
        assert torch.allclose(fast[key], value, rtol=2e-6, atol=1e-6 * top), (key, float((fast[key] - value).abs().max()), top)
    # what is exact in both forms: the weight scales, which cells are stuck, padding rows
    assert torch.equal(fast["w_scale"], ref["w_scale"])
    dev = chip.arrays["analog"].device
    for value in (dev.g_max, dev.g_min):
        stuck = torch.cat([fast["g_pos"], fast["g_neg"]]) == value
        assert torch.equal(stuck, torch.cat([ref["g_pos"], ref["g_neg"]]) == value)
        if "stuck" in changes:
            assert int(stuck.sum()) > 0
        elif changes.get("coefficients") != (0.0,):  # a noisy healthy cell never lands exactly on either
            assert int(stuck.sum()) == 0
    rows = 300 - 2 * 128  # the last read group holds 44 of its 128 rows
    assert bool((fast["w_eff"][0, 2, rows:] == 0).all())


def test_a_nan_weight_stays_nan_in_both_forms(monkeypatch):
    """A diverged weight is not turned into a finite level by the compiled clamp: the same
    cells are NaN in both forms (never a silent finite number)."""
    chip = _chip()
    fast = _instance(chip, True, monkeypatch, 1e5, nan=True)
    ref = _instance(chip, False, monkeypatch, 1e5, nan=True)
    for key in ("g_pos", "g_neg", "w_eff"):
        assert bool(torch.isnan(ref[key]).any()), key
        assert torch.equal(torch.isnan(fast[key]), torch.isnan(ref[key])), key


def test_the_compiled_drift_is_the_closed_form_at_every_cell():
    """Effective weights and read variances of the compiled path against the drift law in
    float64 from the same conductances and exponents, cell by cell, with exponents up to
    ~2 at t / t0 = 10^11 (decays down to ~10^-20, where a wrong exponential would hide inside
    an absolute tolerance of the whole tensor)."""
    chip = _chip(nu=1.0)
    torch.manual_seed(0)
    cim = cimflow.convert(nn.Sequential(nn.Linear(50, 20, bias=False)), chip)
    t, t0, rn = 1e12, 10.0, 0.03
    draws = InstanceDraws(0)
    draws.program_layer("0", cim[0], 1, t)  # checked against (and left as) the engine's own refresh
    draws.program_layer("0", cim[0], 2, t)
    eng = cim[0].engine
    den = eng.denominator
    gp, gn = eng.g_pos[0].double(), eng.g_neg[0].double()  # (in, out)
    xp, xn = -eng.nu_pos[0].double() * math.log(t / t0), -eng.nu_neg[0].double() * math.log(t / t0)
    ep, en = torch.exp(xp), torch.exp(xn)
    assert float(torch.cat([ep, en]).min()) < 1e-15  # the range the test claims to cover
    w = (gp * ep - gn * en) / den
    var = ((gp * ep / den) ** 2 + (gn * en / den) ** 2) * rn**2
    # float32 rounds the exponent nu log(t / t0) itself by up to half an ulp: a relative error
    # of |x| 2^-24 in exp(x), on top of a few ulp of the arithmetic
    eps = 2.0**-24
    rel_p, rel_n = xp.abs() * eps + 8 * eps, xn.abs() * eps + 8 * eps
    assert bool(((eng.w_eff[0, 0, :50].double() - w).abs() <= (gp * ep * rel_p + gn * en * rel_n) / den + 1e-37).all())
    bound = 2 * ((gp * ep / den) ** 2 * rel_p + (gn * en / den) ** 2 * rel_n) * rn**2 + 4 * eps * var
    assert bool(((eng.read_var[0, 0, :50].double() - var).abs() <= bound + 1e-37).all())


def test_the_torch_form_runs_when_the_kernels_are_off(monkeypatch):
    chip = _chip()
    torch.manual_seed(0)
    cim = cimflow.convert(nn.Sequential(nn.Linear(40, 8, bias=False)), chip)
    weight = cim[0].weight.detach()
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "0")
    draws = InstanceDraws(0)
    draws.program_layer("0", cim[0], 1, 1e3)
    ws = draws._pools["0"].work
    assert ws is not None and ws._scratch is not None  # the torch form's buffers were made
    assert draws_module._compiled_kernels(weight, ws.g0[0], ws.g0[0], ws) is None
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    assert draws_module._compiled_kernels(weight, ws.g0[0], ws.g0[0], ws) is not None
    assert draws_module._compiled_kernels(weight.double(), ws.g0[0], ws.g0[0], ws) is None
    ws.sigma = [0.0] + ws.sigma * 8  # more coefficients than the kernel's Horner holds: never silently truncated
    assert draws_module._compiled_kernels(weight, ws.g0[0], ws.g0[0], ws) is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-120.0, 88.0, allow_nan=False), min_size=1, max_size=64))
def test_the_kernels_exponential_is_within_two_ulp_of_numpys(xs):
    from numba import njit

    from cimflow.train.program_kernels import _exp

    @njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = _exp(x[i])

    x = np.array(xs, np.float32)
    out = np.empty_like(x)
    run(x, out)
    ref = np.exp(x.astype(np.float64))
    normal = ref >= np.finfo(np.float32).tiny * math.exp(1.0)  # below: flushed to 0 by design
    assert np.all(np.abs(out[normal] - ref[normal]) <= 2 * np.spacing(ref[normal].astype(np.float32)))
    assert np.all(out[~normal] <= np.finfo(np.float32).tiny * math.exp(1.0))
