"""NOR flash (ISPP, retention vs temperature), FeFET retention and RRAM relaxation against closed forms."""

from __future__ import annotations

import math

import torch

from cimflow.chip.devices import FeFETDevice, NORFlashDevice, RRAMDevice
from cimflow.physics.devices import GeneratorDraws, arrhenius_factor, model_for

G_MAX = 10e-6
N = 20_000


def draws(shape: tuple[int, ...] = (N,), seed: int = 1) -> GeneratorDraws:
    return GeneratorDraws(shape, seed, "dev-test", "pos")


def flash(**kw) -> NORFlashDevice:
    return NORFlashDevice(technology="nor_flash", g_min=0.0, g_max=G_MAX, levels=16, **kw)


def test_ispp_without_spread_lands_within_half_a_step_of_every_target() -> None:
    spec = flash(pulse_sigma_v=0.0, ispp_step_v=0.1, vth_window_v=4.0)
    model = model_for(spec)
    target = torch.rand(N, generator=torch.Generator().manual_seed(3)) * G_MAX
    g, pulses = model.program(target, draws())
    step_g = 0.1 / 4.0 * G_MAX
    assert float((g - target).abs().max()) <= 0.5 * step_g * (1 + 1e-5)
    # pulses: each cell needs ceil((V_target - step/2) / step) steps
    vth_target = (G_MAX - target) / G_MAX * 4.0
    expected = torch.clamp(torch.ceil((vth_target - 0.05) / 0.1 - 1e-6), min=0).sum()
    assert abs(pulses - int(expected)) <= N * 1e-3


def test_ispp_error_is_uniform_over_one_step_plus_the_pulse_spread() -> None:
    """Final V_th error ~ U(-step/2, step/2) plus the accumulated spread of the last pulse's
    overshoot: its mean is ~0 and its variance at least step^2/12."""
    spec = flash(pulse_sigma_v=0.01, ispp_step_v=0.1)
    model = model_for(spec)
    target = torch.full((N,), 0.4 * G_MAX)
    g, _ = model.program(target, draws())
    err_v = (target - g) / G_MAX * 4.0  # V_th error, volts (positive: over-programmed)
    assert abs(float(err_v.mean())) < 0.01
    assert float(err_v.std()) >= 0.1 / math.sqrt(12) * 0.95
    assert float(err_v.abs().max()) < 0.05 + 6 * 0.01 * math.sqrt(40)  # half a step + a few sigma of 40 pulses


def test_flash_retention_follows_log_time_and_arrhenius() -> None:
    """Programmed cells lose rate ln(1 + (t_eff - t0)/tau) of their charge, t_eff aged by exp(-Ea/k (1/T - 1/300))."""
    rate, tau, ea = 0.01, 1.0, 1.1
    target = torch.full((4,), 0.25 * G_MAX)
    for temperature in (300.0, 358.0, 400.0):
        model = model_for(flash(retention_rate=rate, retention_tau_s=tau, temperature_k=temperature, pulse_sigma_v=0.0))
        g0 = target.clone()
        for t in (1e3, 1e6, 3.15e7):
            t_eff = 1.0 + arrhenius_factor(ea, temperature) * (t - 1.0)
            kept = max(0.0, 1 - rate * math.log1p((t_eff - 1.0) / tau))
            expected = G_MAX - (G_MAX - g0) * kept
            assert torch.allclose(model.conductance(g0, torch.zeros_like(g0), t), expected, rtol=1e-6)
    hot, room = (model_for(flash(temperature_k=k, retention_rate=rate)) for k in (358.0, 300.0))
    g_hot, g_room = hot.conductance(target, target, 3.15e7), room.conductance(target, target, 3.15e7)
    assert float(g_hot.mean()) > float(g_room.mean()) > float(target.mean())  # charge loss: toward erased, faster when hot


def test_fefet_window_closes_toward_its_middle() -> None:
    spec = FeFETDevice(technology="fefet", g_min=1e-6, g_max=G_MAX, levels=8, retention_rate=0.02, retention_tau_s=10.0)
    model = model_for(spec)
    g = torch.tensor([1e-6, 3e-6, 8e-6, G_MAX])
    middle = 0.5 * (1e-6 + G_MAX)
    t = 1e5
    kept = 1 - 0.02 * math.log1p((t - 1.0) / 10.0)
    expected = middle + (g - middle) * kept
    assert torch.allclose(model.conductance(g, torch.zeros_like(g), t), expected)


def test_rram_relaxation_spreads_linearly_in_decades() -> None:
    spec = RRAMDevice(technology="rram", g_min=0.0, g_max=G_MAX, levels=8, relaxation_shift_per_decade=-0.002,
                      relaxation_sigma_per_decade={"pieces": [{"coefficients": [0.004, 0.004]}]}, drift={"t0_s": 1.0})
    model = model_for(spec)
    x = 0.5
    target = torch.full((N,), x * G_MAX)
    state = model.sample_state(target, target, draws())
    sigma = 0.004 + 0.004 * x
    for t in (10.0, 1e3, 1e5):
        decades = math.log10(t)
        rel = (model.conductance(target, state, t) - target) / G_MAX
        assert abs(float(rel.mean()) - (-0.002 * decades)) < 5 * sigma * decades / math.sqrt(N)
        assert abs(float(rel.std()) - sigma * decades) < 6 * sigma * decades / math.sqrt(2 * N)
    assert torch.equal(model.conductance(target, state, 1.0), target)


def test_nor_flash_no_longer_simulates_like_sram() -> None:
    """The same network on the same array, once with a generic SRAM-labelled device and once
    with the NOR-flash model: ISPP errors and retention loss change the outputs (and more so a year later)."""
    import cimflow
    from cimflow.chip import chip_from_dict, load_preset

    def chip(device: dict):
        data = load_preset("rram-analog-generic").model_dump(mode="json", exclude_none=True)
        for array in data["arrays"].values():
            if array["kind"] == "analog":
                array["device"] = device
        return chip_from_dict(data)

    window = {"g_min": 0.0, "g_max": G_MAX, "levels": 16}
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    x = torch.randn(64, 64)
    with torch.no_grad():
        ref = net(x)
        outs = {}
        for name, device in (("sram", {"technology": "sram", **window}),
                             ("nor_flash", {"technology": "nor_flash", "model": "auto", "retention_rate": 0.01, **window})):
            cim = cimflow.program(cimflow.convert(net, chip(device)), seed=4)
            now = cim(x)
            cimflow.drift(cim, "1y")
            outs[name] = (now, cim(x))
        err = {k: [float((y - ref).norm() / ref.norm()) for y in v] for k, v in outs.items()}
    assert not torch.equal(outs["sram"][0], outs["nor_flash"][0])
    assert err["sram"][0] == err["sram"][1]  # the generic device without drift does not move
    assert err["nor_flash"][1] > err["nor_flash"][0] + 0.005  # retention loss after a year
