"""The compiled fast path of cached-draw programming (train/program_kernels.py) against its
torch form (train/draws.py ``_cells_torch``): the same instance from the same draws, every
output (conductances, per-cell state, weight scales, effective weights, read-noise
variances, ADC ranges) equal up to float rounding, over the laws the fast path covers (the
generic law and the PCM plug-in's, whose torch form is the model's own code); the kernels'
exponential against numpy's and their state curves against ``evaluate_curve``."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from cimtest import chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.chip.devices import StateCurve
from cimflow.physics.devices import evaluate_curve
from cimflow.sim import fused_read
from cimflow.train import draws as draws_module
from cimflow.train.draws import InstanceDraws

pytestmark = pytest.mark.skipif(not fused_read.available(), reason="numba not importable or CIMFLOW_FUSED_READ=0: no kernels to compare")

DEV = "arrays.analog.device."


def _chip(coefficients=(0.01, 0.04, -0.02), stuck=0.0, read_noise=0.03, nu=0.05, adc="per_array_max", scaling="per_column",
          cols=128):
    return chip_with("ideal", **{DEV + "g_min": 10e-6, DEV + "levels": 33, DEV + "read_noise": read_noise, "arrays.analog.cols": cols,
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
    keys = ("g_pos", "g_neg", "nu_pos", "nu_neg", "w_scale", "w_eff", "read_var", "adc_range")
    return {key: getattr(eng, key).clone() for key in keys if getattr(eng, key) is not None}


CASES = {
    "drift, read noise, sums": ({}, 1e5),
    "at t0": ({}, None),
    "stuck cells": ({"stuck": 0.02}, 3e4),
    "no read noise": ({"read_noise": 0.0}, 1e5),
    "no programming noise": ({"coefficients": (0.0,)}, 1e5),
    "constant sigma, per-layer scale": ({"coefficients": (0.02,), "scaling": "per_layer"}, 1e3),
    "degree-7 sigma": ({"coefficients": (0.01, 0.02, -0.01, 0.005, 0.0, 0.001, -0.002, 0.003)}, 1e5),
    "expected ADC range (the engine's law at t0)": ({"adc": "expected"}, 1e5),
    "expected ADC range, three arrays across the outputs": ({"adc": "expected", "cols": 32}, 1e5),
    "per-array ADC range, three arrays across the outputs": ({"cols": 32}, 1e5),
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


@pytest.mark.parametrize("law", ["generic", "pcm"])
def test_an_instance_programmed_at_two_threads_is_the_one_at_one(law, monkeypatch):
    """At several torch threads the kernel's read groups run on numba's threads
    (program_instance_threads): every output the bits of one thread's."""
    from cimflow.train import program_kernels

    chip, t = (_chip(), 1e5) if law == "generic" else (chip_with("pcm-hermes-like"), 86400.0)
    calls = []
    threaded = program_kernels.program_instance_threads
    monkeypatch.setattr(program_kernels, "program_instance_threads", lambda *a: calls.append(1) or threaded(*a))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _instance(chip, True, monkeypatch, t)
        assert not calls
        torch.set_num_threads(2)
        two = _instance(chip, True, monkeypatch, t)
    finally:
        torch.set_num_threads(threads)
    assert calls  # (several read groups: 300 inputs on 128- or 256-row arrays)
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert torch.equal(two[key], value), key


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
    cells = {"drift": ws.g0[0]}
    assert draws_module._compiled_kernels(weight, ws.g0[0], cells, ws) is None
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1")
    assert draws_module._compiled_kernels(weight, ws.g0[0], cells, ws) is not None
    assert draws_module._compiled_kernels(weight.double(), ws.g0[0], cells, ws) is None
    assert draws_module._compiled_kernels(weight, ws.g0[0], {**cells, "1/f": ws.g0[0].double()}, ws) is None  # every draw checked
    ws.sigma = [0.0] + ws.sigma * 8  # more coefficients than the kernel's Horner holds: never silently truncated
    assert draws_module._compiled_kernels(weight, ws.g0[0], cells, ws) is None


PCM = "arrays.pcm.device."
#: pcm-hermes-like's law with the other forms of the curves: Q_s a power law (PCMDevice's default),
#: the drift-exponent moments one polynomial and a log piece without clamps
OTHER_CURVES = {PCM + "noise_q_s": {"pieces": [{"form": "power", "coefficients": [0.0088, -0.65], "y_max": 0.2}]},
                PCM + "drift_nu_mean": {"pieces": [{"coefficients": [0.08, -0.05, 0.01]}]},
                PCM + "drift_nu_std": {"pieces": [{"form": "log", "coefficients": [0.005, -0.004]}]}}
PCM_CASES = {
    "one day (pcm-hermes-like: expected ADC range, stuck cells)": ({}, 86400.0),
    "at t0 (1/f noise already grown, no drift)": ({}, None),
    "before t0": ({}, 100.0),
    "per-array ADC range, no read noise": ({"arrays.pcm.adc.range": "per_array_max", PCM + "read_noise": 0.0}, 1e6),
    "fixed ADC range, no stuck cells": ({"arrays.pcm.adc.range": "fixed", PCM + "stuck_on_rate": 0.0, PCM + "stuck_off_rate": 0.0},
                                        3e4),
    "at 350 K (drift and 1/f noise at the effective time)": ({PCM + "temperature_k": 350.0}, 86400.0),
    "power-law Q_s, polynomial and unclamped log moments": (OTHER_CURVES, 1e7),
}


@pytest.mark.parametrize("case", list(PCM_CASES))
def test_the_compiled_pcm_cells_are_the_models_own(case, monkeypatch):
    """The PCM law: the compiled state (drift exponent from the level's moments, the 1/f
    normal, Q_s at |G| / g_max) and conductances against the torch form, which programs the
    state and ages the cells with PCMModel's own code (sample_state, conductance)."""
    changes, t = PCM_CASES[case]
    chip = chip_with("pcm-hermes-like", **changes)
    assert draws_module.pcm_physics(chip.arrays["pcm"].device)
    fast = _instance(chip, True, monkeypatch, t)
    ref = _instance(chip, False, monkeypatch, t)
    assert fast.keys() == ref.keys() and fast["nu_pos"].shape == (3, 1, 300, 70)
    for key, value in ref.items():
        top = float(value.abs().max())
        assert torch.allclose(fast[key], value, rtol=1e-5, atol=1e-6 * top), (key, float((fast[key] - value).abs().max()), top)
    assert torch.equal(fast["w_scale"], ref["w_scale"])
    assert torch.equal(fast["nu_pos"][1], ref["nu_pos"][1])  # the 1/f normals: the pool's, copied
    spread = torch.cat([fast["nu_pos"][0], fast["nu_neg"][0]])
    assert float(spread.std()) > 0.01 * float(spread.mean())  # drift exponents drawn, not the moments' means


def test_a_nan_weight_stays_nan_in_both_pcm_forms(monkeypatch):
    chip = chip_with("pcm-hermes-like")
    fast = _instance(chip, True, monkeypatch, 86400.0, nan=True)
    ref = _instance(chip, False, monkeypatch, 86400.0, nan=True)
    for key in ("g_pos", "g_neg", "w_eff"):
        assert bool(torch.isnan(ref[key]).any()), key
        assert torch.equal(torch.isnan(fast[key]), torch.isnan(ref[key])), key


@functools.cache
def _curve_kernel():
    """The kernels' curve evaluation (``_curve_row``) as a compiled function of its own, made once."""
    from numba import njit

    from cimflow.train.program_kernels import _curve_row

    @njit
    def run(rows, x, y):
        _curve_row(rows, x, y)

    return run


_PIECE = st.one_of(
    st.builds(lambda c, lo, hi: {"coefficients": c, "y_min": lo, "y_max": hi},
              st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=8), st.one_of(st.none(), st.floats(-2.0, 0.0)),
              st.one_of(st.none(), st.floats(0.0, 2.0))),
    st.builds(lambda c0, c1: {"form": "log", "coefficients": [c0, c1]}, st.floats(-1.0, 1.0), st.floats(-1.0, 1.0)),
    st.builds(lambda c0, c1, hi: {"form": "power", "coefficients": [c0, c1], "y_max": hi},
              st.floats(-1.0, 1.0), st.floats(-2.0, 3.0), st.one_of(st.none(), st.floats(0.0, 50.0))),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_PIECE, min_size=1, max_size=4), st.lists(st.floats(0.01, 0.99), min_size=3, max_size=3, unique=True),
       st.lists(st.floats(0.0, 2.0, width=32), min_size=1, max_size=40))
def test_the_kernels_curves_are_evaluate_curves(pieces, starts, xs):
    """Every form of piece (polynomials of up to 8 coefficients, log and power laws at their
    floors, clamps on either side) and where pieces take over (at and around ``x_from``):
    the compiled curve is ``evaluate_curve``'s up to float rounding."""
    from cimflow.train import program_kernels

    starts = sorted(starts)[:len(pieces) - 1]
    curve = StateCurve(pieces=[{**p, "x_from": 0.0 if k == 0 else starts[k - 1]} for k, p in enumerate(pieces)])
    x = np.array(xs + starts + [0.0, 1e-8, 1e-4, 1.0], np.float32)
    y = np.empty_like(x)
    _curve_kernel()(draws_module._curve_rows(curve, program_kernels), x, y)
    ref = evaluate_curve(curve, torch.from_numpy(x)).numpy()
    # float32 rounding of each piece's terms: |c_k| x^k per term; a log of up to |ln 1e-7| = 16,
    # a power law's exponent c1 ln x
    bound = np.zeros_like(x)
    for piece in curve.pieces:
        c = piece.coefficients
        if piece.form == "polynomial":
            size = sum(abs(ck) * np.maximum(x, 1.0) ** k for k, ck in enumerate(c))
        elif piece.form == "log":
            size = abs(c[0]) + abs(c[1]) * 17.0
        else:
            size = abs(c[0]) * np.maximum(x, 1e-3) ** c[1] * (1.0 + abs(c[1]) * 8.0)
        bound = np.maximum(bound, size)
    assert np.all(np.abs(y - ref) <= 1e-6 * bound + 1e-30), (curve, x, y, ref)


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
