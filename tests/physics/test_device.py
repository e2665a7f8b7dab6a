"""Tests of cimflow.physics.device: cell-level effects.

Statistical tests use fixed seeds and 6-sigma tolerances computed from the sample size:
for n Gaussian draws of std sigma, the sample mean has std sigma/sqrt(n) and the sample
std has std about sigma/sqrt(2n); a rate p over n cells has std sqrt(p(1-p)/n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch

from cimflow.physics import (
    apply_drift,
    apply_stuck_at,
    drift_exponents_,
    generator_for,
    ir_drop_attenuate,
    ir_drop_path_cells,
    program_conductances,
    programming_sigma,
    quantize_to_levels,
    read_noise,
    sample_drift_exponents,
    sample_stuck_mask,
    stuck_codes_from,
)

Z = 6.0  # sigmas of tolerance for every statistical check
G_MIN = 0.1e-6  # S
G_MAX = 25e-6  # S (a PCM-like full scale)


def _mean_tol(sigma: float, n: int) -> float:
    return Z * sigma / math.sqrt(n)


def _std_tol(sigma: float, n: int) -> float:
    return Z * sigma / math.sqrt(2 * n)


def _rate_tol(p: float, n: int) -> float:
    return Z * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize("levels", [2, 3, 16, 256])
def test_quantize_to_levels_on_grid_nearest_and_clamped(levels: int) -> None:
    step = (G_MAX - G_MIN) / (levels - 1)
    gen = generator_for(0, "levels", levels)
    # uniform over a window wider than [g_min, g_max] so both sides clamp
    g = G_MIN - 0.2 * G_MAX + torch.rand(20_000, generator=gen, dtype=torch.float64) * 1.4 * G_MAX
    q = quantize_to_levels(g, G_MIN, G_MAX, levels)

    idx = (q - G_MIN) / step
    assert torch.allclose(idx, torch.round(idx), rtol=0, atol=1e-9)
    assert float(q.min()) >= G_MIN - 1e-9 * step and float(q.max()) <= G_MAX + 1e-9 * step

    # nearest level: brute force over the whole grid
    grid = G_MIN + torch.arange(levels, dtype=torch.float64) * step
    nearest = grid[(g.clamp(G_MIN, G_MAX).unsqueeze(1) - grid).abs().argmin(dim=1)]
    assert torch.allclose(q, nearest, rtol=0, atol=1e-9 * step)

    inside = (g >= G_MIN) & (g <= G_MAX)
    assert float((q[inside] - g[inside]).abs().max()) <= step / 2 * (1 + 1e-9)
    assert torch.allclose(q[g < G_MIN], torch.full_like(q[g < G_MIN], G_MIN), rtol=1e-12, atol=0)
    assert torch.allclose(q[g > G_MAX], torch.full_like(q[g > G_MAX], G_MAX), rtol=1e-12, atol=0)
    # every level is reachable from uniform inputs
    assert torch.unique(torch.round(idx)).numel() == levels


def test_quantize_to_levels_by_hand() -> None:
    g = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 1.0, 2.0], dtype=torch.float64)
    q = quantize_to_levels(g, 0.0, 1.0, 5)  # levels 0, .25, .5, .75, 1
    assert torch.equal(q, torch.tensor([0.0, 0.0, 0.25, 0.25, 0.75, 1.0, 1.0], dtype=torch.float64))


def test_quantize_to_levels_rejects_fewer_than_two_levels() -> None:
    with pytest.raises(ValueError):
        quantize_to_levels(torch.zeros(3), G_MIN, G_MAX, 1)


# --------------------------------------------------------------------------- programming


def _horner_by_hand(x: float, coefficients: Sequence[float]) -> float:
    return sum(c * x**k for k, c in enumerate(coefficients))


@pytest.mark.parametrize(
    "coefficients",
    [
        [],
        [0.02],
        [0.0, 0.05],
        # PCM-like quadratic (aihwkit PCMLikeNoise, Nandakumar et al. 2019: 0.26348, 1.9650,
        # -1.1731 uS at g_max = 25 uS), normalized to g_max
        [0.26348 / 25, 1.9650 / 25, -1.1731 / 25],
        [0.01, -0.03, 0.02, 0.004],
    ],
)
def test_programming_sigma_polynomial(coefficients: list[float]) -> None:
    g = torch.linspace(0.0, G_MAX, 101, dtype=torch.float64)
    sigma = programming_sigma(g, G_MAX, coefficients)
    expected = torch.tensor(
        [max(G_MAX * _horner_by_hand(float(v) / G_MAX, coefficients), 0.0) for v in g], dtype=torch.float64
    )
    assert sigma.shape == g.shape
    assert torch.allclose(sigma, expected, rtol=1e-12, atol=1e-24)


def test_programming_sigma_clips_negative_to_zero() -> None:
    g = torch.linspace(0.0, G_MAX, 11, dtype=torch.float64)
    # sigma = g_max * (0.01 - 0.02 x): positive for x < 0.5, negative (-> 0) above
    sigma = programming_sigma(g, G_MAX, [0.01, -0.02])
    x = g / G_MAX
    assert torch.equal(sigma[x > 0.5], torch.zeros_like(sigma[x > 0.5]))
    assert bool((sigma[x < 0.5] > 0).all())
    assert float(sigma[0]) == pytest.approx(0.01 * G_MAX, rel=1e-12)


_N_PER_STATE = 20_000
_STATES = [0.2, 0.4, 0.6, 0.8, 1.0]  # fractions of g_max, each >= 8 sigma above 0 S (no clipping)


@pytest.mark.parametrize(
    ("coefficients", "sigma_of"),
    [
        ([0.02], lambda g: 0.02 * G_MAX),                     # constant
        ([0.0, 0.05], lambda g: 0.05 * g),                    # proportional to the state
        ([0.26348 / 25, 1.9650 / 25, -1.1731 / 25],           # PCM-like quadratic
         lambda g: G_MAX * (0.26348 + 1.9650 * (g / G_MAX) - 1.1731 * (g / G_MAX) ** 2) / 25),
    ],
    ids=["constant", "proportional", "quadratic"],
)
def test_program_conductances_state_dependent_statistics(
    coefficients: list[float], sigma_of: Callable[[float], float]
) -> None:
    states = torch.tensor(_STATES, dtype=torch.float64) * G_MAX
    target = states.repeat_interleave(_N_PER_STATE).reshape(len(_STATES), _N_PER_STATE)
    g = program_conductances(target, G_MAX, coefficients, generator_for(0, "program", len(coefficients)))
    assert g.shape == target.shape and g.dtype == target.dtype
    err = g - target
    for k, state in enumerate(_STATES):
        sigma = sigma_of(state * G_MAX)
        assert abs(float(err[k].mean())) <= _mean_tol(sigma, _N_PER_STATE)
        assert abs(float(err[k].std()) - sigma) <= _std_tol(sigma, _N_PER_STATE)


def test_program_conductances_zero_coefficients_identical_copy() -> None:
    target = torch.rand(50, 40, generator=generator_for(0, "t"), dtype=torch.float64) * G_MAX
    for coefficients in ([0.0], [0.0, 0.0, 0.0], []):
        g = program_conductances(target, G_MAX, coefficients, generator_for(0, "p"))
        assert torch.equal(g, target)
        assert g.data_ptr() != target.data_ptr()  # a copy, not the same storage


def test_program_conductances_clips_at_zero() -> None:
    """Target 0 S with constant noise: half the cells would go negative; they read 0 S."""
    n = 40_000
    target = torch.zeros(n, dtype=torch.float64)
    g = program_conductances(target, G_MAX, [0.05], generator_for(0, "clip"))
    assert float(g.min()) >= 0.0
    zero_rate = float((g == 0).double().mean())
    assert abs(zero_rate - 0.5) <= _rate_tol(0.5, n)


def test_program_conductances_non_negative_everywhere() -> None:
    target = torch.rand(200, 200, generator=generator_for(1, "t"), dtype=torch.float32) * G_MAX
    g = program_conductances(target, G_MAX, [0.1, 0.2], generator_for(1, "p"))
    assert bool((g >= 0).all())
    assert torch.isfinite(g).all()


def test_program_conductances_reproducible_for_same_seed() -> None:
    target = torch.full((64, 64), 0.5 * G_MAX)
    a = program_conductances(target, G_MAX, [0.03], generator_for(5, "fc", "prog"))
    b = program_conductances(target, G_MAX, [0.03], generator_for(5, "fc", "prog"))
    c = program_conductances(target, G_MAX, [0.03], generator_for(6, "fc", "prog"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --------------------------------------------------------------------------- drift


def test_sample_drift_exponents_mean_and_std() -> None:
    nu_mean, nu_std = 0.05, 0.005  # mean 10 sigma above 0: clipping negligible
    shape = (400, 500)
    n = shape[0] * shape[1]
    nu = sample_drift_exponents(shape, nu_mean, nu_std, generator_for(0, "nu"), dtype=torch.float64)
    assert tuple(nu.shape) == shape and nu.dtype == torch.float64
    assert abs(float(nu.mean()) - nu_mean) <= _mean_tol(nu_std, n)
    assert abs(float(nu.std()) - nu_std) <= _std_tol(nu_std, n)


def test_sample_drift_exponents_clipped_at_zero() -> None:
    n = 100_000
    nu = sample_drift_exponents((n,), 0.0, 0.1, generator_for(0, "nu-clip"))
    assert float(nu.min()) == 0.0
    zero_rate = float((nu == 0).double().mean())
    assert abs(zero_rate - 0.5) <= _rate_tol(0.5, n)


def test_sample_drift_exponents_zero_std_constant() -> None:
    nu = sample_drift_exponents((7, 3), 0.06, 0.0, generator_for(0, "nu0"), dtype=torch.float64)
    assert torch.equal(nu, torch.full((7, 3), 0.06, dtype=torch.float64))


def test_sample_drift_exponents_zero_std_negative_mean_clipped() -> None:
    nu = sample_drift_exponents((3,), -0.1, 0.0, generator_for(0, "nu-neg"))
    assert bool((nu >= 0).all())


@pytest.mark.parametrize("per_cell", [True, False])
def test_apply_drift_power_law(per_cell: bool) -> None:
    t0 = 20.0  # s
    g0 = torch.rand(30, 40, generator=generator_for(0, "g0"), dtype=torch.float64) * G_MAX + G_MIN
    if per_cell:
        nu: torch.Tensor | float = sample_drift_exponents((30, 40), 0.05, 0.02, generator_for(0, "nu"),
                                                          dtype=torch.float64)
    else:
        nu = 0.06
    times = [t0 * f for f in (1.5, 10.0, 3600.0, 1e7)]
    for t in times:
        g = apply_drift(g0, nu, t, t0)
        slope = (torch.log(g) - torch.log(g0)) / math.log(t / t0)
        assert torch.allclose(slope, -torch.as_tensor(nu, dtype=torch.float64).expand_as(slope), rtol=0, atol=1e-12)
    # slope between two later times is also -nu (a straight line in log-log)
    g1, g2 = apply_drift(g0, nu, times[1], t0), apply_drift(g0, nu, times[3], t0)
    slope12 = (torch.log(g2) - torch.log(g1)) / math.log(times[3] / times[1])
    assert torch.allclose(slope12, -torch.as_tensor(nu, dtype=torch.float64).expand_as(slope12), rtol=0, atol=1e-12)


def test_apply_drift_identity_up_to_t0() -> None:
    g0 = torch.rand(10, 10, generator=generator_for(0, "g0"), dtype=torch.float64) * G_MAX
    for t in (0.0, 1.0, 19.999, 20.0):
        assert torch.equal(apply_drift(g0, 0.05, t, 20.0), g0)


def test_apply_drift_zero_exponent_is_identity() -> None:
    g0 = torch.rand(10, 10, generator=generator_for(0, "g0"), dtype=torch.float64) * G_MAX
    assert torch.allclose(apply_drift(g0, torch.zeros(10, 10, dtype=torch.float64), 1e6, 20.0), g0,
                          rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- read noise


@pytest.mark.parametrize("relative_sigma", [0.01, 0.05])
def test_read_noise_relative_std(relative_sigma: float) -> None:
    per_state = 40_000
    states = torch.tensor([1e-6, 5e-6, 20e-6], dtype=torch.float64)
    g = states.repeat_interleave(per_state).reshape(3, per_state)
    r = read_noise(g, relative_sigma, generator_for(0, "read", relative_sigma))
    rel = r / g - 1.0
    for k in range(3):
        assert abs(float(rel[k].mean())) <= _mean_tol(relative_sigma, per_state)
        assert abs(float(rel[k].std()) - relative_sigma) <= _std_tol(relative_sigma, per_state)


def test_read_noise_zero_is_identity() -> None:
    g = torch.rand(20, 20, generator=generator_for(0, "g"), dtype=torch.float64) * G_MAX
    assert torch.equal(read_noise(g, 0.0, generator_for(0, "r")), g)


def test_read_noise_fresh_draw_per_read() -> None:
    g = torch.full((100,), 10e-6, dtype=torch.float64)
    gen = generator_for(0, "reads")
    assert not torch.equal(read_noise(g, 0.02, gen), read_noise(g, 0.02, gen))


# --------------------------------------------------------------------------- stuck cells


def test_sample_stuck_mask_rates() -> None:
    shape = (500, 400)
    n = shape[0] * shape[1]
    on, off = 0.01, 0.03
    mask = sample_stuck_mask(shape, on, off, generator_for(0, "stuck"))
    assert tuple(mask.shape) == shape and mask.dtype == torch.int8
    assert set(torch.unique(mask).tolist()) <= {-1, 0, 1}
    on_rate = float((mask == 1).double().mean())
    off_rate = float((mask == -1).double().mean())
    assert abs(on_rate - on) <= _rate_tol(on, n)
    assert abs(off_rate - off) <= _rate_tol(off, n)


def test_sample_stuck_mask_zero_rates_all_healthy() -> None:
    mask = sample_stuck_mask((30, 20), 0.0, 0.0, generator_for(0, "stuck0"))
    assert torch.equal(mask, torch.zeros((30, 20), dtype=torch.int8))


def test_sample_stuck_mask_only_off() -> None:
    n = 100_000
    mask = sample_stuck_mask((n,), 0.0, 0.05, generator_for(0, "stuck-off"))
    assert not bool((mask == 1).any())
    assert abs(float((mask == -1).double().mean()) - 0.05) <= _rate_tol(0.05, n)


def test_stuck_codes_are_the_law_on_given_uniforms() -> None:
    u = torch.tensor([0.0, 0.0099, 0.01, 0.0399, 0.04, 0.5, 0.99999994])
    assert stuck_codes_from(u, 0.01, 0.03).tolist() == [1, 1, -1, -1, 0, 0, 0]
    assert stuck_codes_from(u, 0.0, 0.0).tolist() == [0] * 7
    assert stuck_codes_from(u, 0.0, 0.04).tolist() == [-1, -1, -1, -1, 0, 0, 0]


def test_drift_exponents_are_the_law_on_given_normals() -> None:
    z = torch.tensor([-3.0, -0.5, 0.0, 1.0])
    assert torch.allclose(drift_exponents_(z.clone(), 0.05, 0.02), torch.tensor([0.0, 0.04, 0.05, 0.07]))
    assert torch.equal(drift_exponents_(z.clone(), -0.1, 0.0), torch.zeros(4))  # zero spread, negative mean: clipped


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_stuck_at_replaces_exactly(dtype: torch.dtype) -> None:
    shape = (100, 80)
    g = torch.rand(shape, generator=generator_for(0, "g"), dtype=dtype) * G_MAX
    mask = sample_stuck_mask(shape, 0.1, 0.1, generator_for(0, "m"))
    out = apply_stuck_at(g, mask, G_MIN, G_MAX)
    assert out.dtype == dtype and out.shape == g.shape
    g_max_t = torch.tensor(G_MAX, dtype=dtype)
    g_min_t = torch.tensor(G_MIN, dtype=dtype)
    assert bool((out[mask == 1] == g_max_t).all())
    assert bool((out[mask == -1] == g_min_t).all())
    assert torch.equal(out[mask == 0], g[mask == 0])
    assert int((mask != 0).sum()) > 0  # the test exercised both kinds of fault
    assert int((mask == 1).sum()) > 0 and int((mask == -1).sum()) > 0


def test_apply_stuck_at_zero_mask_no_change() -> None:
    g = torch.rand(20, 20, generator=generator_for(0, "g"), dtype=torch.float64) * G_MAX
    out = apply_stuck_at(g, torch.zeros((20, 20), dtype=torch.int8), G_MIN, G_MAX)
    assert torch.equal(out, g)


# --------------------------------------------------------------------------- IR drop


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (4, 3), (128, 64)])
def test_ir_drop_path_cells_closed_form(rows: int, cols: int) -> None:
    n = ir_drop_path_cells(rows, cols)
    assert tuple(n.shape) == (rows, cols)
    # corners: word line driven at column 0, bit line sensed below the last row
    assert float(n[0, 0]) == rows + 1
    assert float(n[0, cols - 1]) == rows + cols
    assert float(n[rows - 1, 0]) == 2
    assert float(n[rows - 1, cols - 1]) == cols + 1
    expected = torch.tensor([[(j + 1) + (rows - i) for j in range(cols)] for i in range(rows)], dtype=n.dtype)
    assert torch.equal(n, expected)


def test_ir_drop_path_cells_monotone() -> None:
    n = ir_drop_path_cells(16, 12)
    assert bool((n[:, 1:] - n[:, :-1] == 1).all())   # one more word-line segment per column
    assert bool((n[:-1, :] - n[1:, :] == 1).all())   # one more bit-line segment per row up


def test_ir_drop_attenuate_by_hand() -> None:
    g = torch.tensor([[10e-6, 20e-6], [1e-6, 0.0]], dtype=torch.float64)
    path = torch.tensor([[5.0, 6.0], [2.0, 3.0]], dtype=torch.float64)
    r = 2.5  # ohm per segment
    out = ir_drop_attenuate(g, path, r)
    expected = torch.tensor(
        [[10e-6 / (1 + 10e-6 * 2.5 * 5), 20e-6 / (1 + 20e-6 * 2.5 * 6)],
         [1e-6 / (1 + 1e-6 * 2.5 * 2), 0.0]],
        dtype=torch.float64,
    )
    assert torch.allclose(out, expected, rtol=1e-14, atol=0)
    # series resistance: 1/G_eff = 1/G + R * segments
    assert torch.allclose(1 / out[0, 0], torch.tensor(1 / 10e-6 + r * 5, dtype=torch.float64), rtol=1e-14)


def test_ir_drop_attenuate_farther_cells_attenuated_more() -> None:
    rows, cols = 32, 24
    g = torch.full((rows, cols), G_MAX, dtype=torch.float64)
    path = ir_drop_path_cells(rows, cols).double()
    ratio = ir_drop_attenuate(g, path, 1.0) / g
    assert bool((ratio < 1).all()) and bool((ratio > 0).all())
    assert bool((ratio[:, 1:] < ratio[:, :-1]).all())   # farther from the word-line driver
    assert bool((ratio[:-1, :] < ratio[1:, :]).all())   # farther from the bit-line sense
    assert float(ratio.argmin()) == cols - 1            # top-right corner is the worst cell


def test_ir_drop_attenuate_zero_resistance_identity() -> None:
    g = torch.rand(8, 8, generator=generator_for(0, "g"), dtype=torch.float64) * G_MAX
    assert torch.equal(ir_drop_attenuate(g, ir_drop_path_cells(8, 8).double(), 0.0), g)


def test_ir_drop_path_cells_for_the_cells_in_use_equal_the_full_table() -> None:
    """The index form (what the engine uses, so a 65536 x 65536 array costs nothing) picks
    the same entries as the full table."""
    rows, cols = 12, 10
    r = torch.tensor([0, 3, 11, 3])
    c = torch.tensor([9, 0, 4])
    full = ir_drop_path_cells(rows, cols)
    picked = ir_drop_path_cells(rows, cols, row_index=r, col_index=c)
    assert picked.shape == (4, 3)
    assert torch.equal(picked, full[r][:, c])
    big = ir_drop_path_cells(1 << 16, 1 << 16, row_index=torch.tensor([0, 65535]), col_index=torch.tensor([0, 65535]))
    assert big.tolist() == [[1.0 + 65536, 65536.0 + 65536], [1.0 + 1, 65536.0 + 1]]
