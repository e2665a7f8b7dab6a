"""MRAM switching probability and read disturb; charge-domain SRAM capacitor mismatch vs Pelgrom."""

from __future__ import annotations

import math

import torch

from cimflow.chip.devices import ChargeSRAMDevice, MRAMDevice
from cimflow.physics.devices import GeneratorDraws, model_for, switching_probability
from cimflow.physics.devices.mram import MRAMModel

G_MAX = 50e-6
N = 200_000


def draws(seed: int = 2) -> GeneratorDraws:
    return GeneratorDraws((N,), seed, "dev-test", "pos")


def binomial_tol(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n) + 1 / n


def test_switching_probability_closed_form() -> None:
    # 1 - exp(-t_p / (tau0 exp(Delta (1 - I/Ic0))))
    for pulse, ratio, delta in ((10e-9, 1.0, 60.0), (10e-9, 0.95, 40.0), (5e-9, 1.02, 60.0)):
        expected = 1 - math.exp(-pulse / (1e-9 * math.exp(delta * (1 - ratio))))
        assert math.isclose(switching_probability(pulse, ratio, delta, 1e-9), expected, rel_tol=1e-12)


def test_write_error_rate_matches_the_fraction_of_failed_writes() -> None:
    spec = MRAMDevice(technology="mram", g_min=5e-6, g_max=G_MAX, levels=2, write_current_ratio=0.96, thermal_stability=60.0)
    model = model_for(spec)
    assert isinstance(model, MRAMModel)
    wer = model.write_error_rate
    assert 0.01 < wer < 0.9
    target = torch.full((N,), G_MAX)
    g, pulses = model.program(target, draws())
    failed = float((g == 5e-6).float().mean())
    assert abs(failed - wer) < binomial_tol(wer, N)
    assert pulses == N
    # g_min targets are the reset state: never wrong
    g_low, _ = model.program(torch.full((N,), 5e-6), draws())
    assert bool((g_low == 5e-6).all())


def test_hotter_cells_switch_more_easily() -> None:
    cold = model_for(MRAMDevice(technology="mram", g_min=0, g_max=G_MAX, levels=2, write_current_ratio=0.96))
    hot = model_for(MRAMDevice(technology="mram", g_min=0, g_max=G_MAX, levels=2, write_current_ratio=0.96, temperature_k=400))
    assert isinstance(cold, MRAMModel) and isinstance(hot, MRAMModel)
    assert hot.write_error_rate < cold.write_error_rate
    assert hot.read_flip_probability > cold.read_flip_probability


def test_read_disturb_flips_the_expected_fraction() -> None:
    spec = MRAMDevice(technology="mram", g_min=0, g_max=G_MAX, levels=2, read_current_ratio=0.6, thermal_stability=40.0,
                      reads_per_second=1e4)
    model = model_for(spec)
    assert isinstance(model, MRAMModel)
    g = torch.full((N,), G_MAX)
    state = model.sample_state(g, g, draws())
    p = model.read_flip_probability
    for t in (10.0, 1e3, 1e5):
        expected = 1 - (1 - p) ** ((t - model.t0) * 1e4)
        flipped = float((model.conductance(g, state, t) == 0).float().mean())
        assert abs(flipped - expected) < binomial_tol(expected, N), (t, flipped, expected)
    # flips are monotone in time: a cell flipped at t stays flipped later
    early, late = model.conductance(g, state, 1e3) == 0, model.conductance(g, state, 1e5) == 0
    assert bool((late | ~early).all())


def test_capacitor_mismatch_sigma_follows_pelgrom() -> None:
    for area, a_c in ((0.5, 0.5), (2.0, 1.0)):
        spec = ChargeSRAMDevice(technology="sram", g_min=0.0, g_max=1e-6, levels=2, capacitor_area_um2=area, pelgrom_a_pct_um=a_c)
        sigma = a_c / 100 / math.sqrt(2 * area)
        assert math.isclose(spec.mismatch_sigma, sigma)
        model = model_for(spec)
        target = torch.full((N,), 1e-6)
        g, _ = model.program(target, draws())
        rel = g / target - 1
        assert abs(float(rel.std()) - sigma) < 6 * sigma / math.sqrt(2 * N)
        assert abs(float(rel.mean())) < 5 * sigma / math.sqrt(N)
        # static: nothing moves with time
        assert torch.equal(model.conductance(g, torch.zeros_like(g), 3.15e7), g)
        # off cells carry no charge, whatever their capacitor
        off, _ = model.program(torch.zeros(N), draws())
        assert bool((off == 0).all())
