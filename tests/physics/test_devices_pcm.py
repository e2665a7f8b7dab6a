"""PCM plug-in: drift exponent vs conductance, 1/f noise vs log t, Arrhenius-aged drift."""

from __future__ import annotations

import math

import torch

from cimflow.chip.devices import PCMDevice
from cimflow.physics.devices import GeneratorDraws, arrhenius_factor, evaluate_curve, model_for
from cimflow.physics.devices.pcm import PCMModel

G_MAX = 25e-6
N = 40_000


def pcm(**kw) -> PCMModel:
    model = model_for(PCMDevice(technology="pcm", g_min=0.0, g_max=G_MAX, levels=256, **kw))
    assert isinstance(model, PCMModel)
    return model


def draws(seed: int = 0) -> GeneratorDraws:
    return GeneratorDraws((N,), seed, "pcm-test", "pos")


def joshi_moments(x: float) -> tuple[float, float]:
    """The published drift-exponent moments (Joshi et al. 2020, as in aihwkit's PCMLikeNoiseModel)."""
    mean = min(max(-0.0155 * math.log(x) + 0.0244, 0.049), 0.1)
    std = min(max(-0.0125 * math.log(x) - 0.0059, 0.008), 0.045)
    return mean, std


def folded(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and standard deviation of |X|, X ~ N(mu, sigma) (the folded normal)."""
    mean = sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * math.erf(mu / (sigma * math.sqrt(2)))
    return mean, math.sqrt(mu * mu + sigma * sigma - mean * mean)


def test_drift_exponent_follows_the_published_conductance_dependence() -> None:
    model = pcm()
    for x in (0.02, 0.1, 0.3, 1.0):
        target = torch.full((N,), x * G_MAX)
        nu = model.sample_state(target, target, draws())[0]
        mean, std = folded(*joshi_moments(x))  # nu = |N(mean, std)|
        assert abs(float(nu.mean()) - mean) < 5 * std / math.sqrt(N), (x, float(nu.mean()), mean)
        assert abs(float(nu.std()) - std) < 6 * std / math.sqrt(2 * N), (x, float(nu.std()), std)
    # and the dependence is real: low-conductance cells drift faster than high ones
    low, high = joshi_moments(0.02)[0], joshi_moments(1.0)[0]
    assert low > high + 0.03


def test_hermes_piecewise_curve_evaluates_each_piece() -> None:
    from cimflow.chip.devices import StateCurve

    curve = StateCurve.model_validate({"pieces": [
        {"form": "log", "coefficients": [-0.0182, -0.0387], "y_min": 0.072, "y_max": 0.13},
        {"x_from": 0.0945, "coefficients": [0.0736, -0.0126, -0.0436]}]})
    x = torch.tensor([0.01, 0.05, 0.2, 1.0])
    y = evaluate_curve(curve, x)
    expected = [min(max(-0.0182 - 0.0387 * math.log(v), 0.072), 0.13) if v < 0.0945 else 0.0736 - 0.0126 * v - 0.0436 * v * v
                for v in x.tolist()]
    assert torch.allclose(y, torch.tensor(expected), atol=1e-7)


def test_drift_is_a_power_law_in_time_and_absent_before_t0() -> None:
    model = pcm(read_noise=0.0, noise_q_s={"pieces": [{"coefficients": [0.0]}]})
    target = torch.full((N,), 0.5 * G_MAX)
    state = model.sample_state(target, target, draws())
    assert torch.equal(model.conductance(target, state, model.t0), target)
    t = 86_400.0
    g = model.conductance(target, state, t)
    assert torch.allclose(g, target * (t / model.t0) ** -state[0], rtol=1e-5)


def test_accumulated_read_noise_grows_with_log_time() -> None:
    """sigma(t) / G(t) = Q_s sqrt(ln((t + t_read) / (2 t_read))) with Q_s = 0.0088 x^-0.65."""
    model = pcm()
    x = 0.5
    target = torch.full((N,), x * G_MAX)
    state = model.sample_state(target, target, draws())
    q_s = 0.0088 * x**-0.65
    no_noise = state.clone()
    no_noise[2] = 0.0
    for t in (60.0, 3600.0, 86_400.0, 3.15e7):
        g = model.conductance(target, state, t)
        drifted = model.conductance(target, no_noise, t)
        rel = (g - drifted) / drifted
        expected = q_s * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))
        assert abs(float(rel.std()) - expected) < 5 * expected / math.sqrt(2 * N), (t, float(rel.std()), expected)
        assert abs(float(rel.mean())) < 5 * expected / math.sqrt(N)


def test_drift_is_thermally_activated_through_the_arrhenius_factor() -> None:
    ea = 0.3
    hot = pcm(drift={"t0_s": 20.0, "activation_energy_ev": ea}, temperature_k=358.0,
              noise_q_s={"pieces": [{"coefficients": [0.0]}]})
    room = pcm(drift={"t0_s": 20.0, "activation_energy_ev": ea}, noise_q_s={"pieces": [{"coefficients": [0.0]}]})
    target = torch.full((N,), 0.3 * G_MAX)
    state = room.sample_state(target, target, draws())
    factor = arrhenius_factor(ea, 358.0)
    assert math.isclose(factor, math.exp(-ea / 8.617333262e-5 * (1 / 358.0 - 1 / 300.0)))
    t = 3600.0
    assert torch.allclose(hot.conductance(target, state, t), room.conductance(target, state, 20.0 + factor * (t - 20.0)))
    assert float(hot.conductance(target, state, t).mean()) < float(room.conductance(target, state, t).mean())


def test_generic_drift_is_thermally_activated_when_given_an_activation_energy() -> None:
    from cimflow.chip.spec import Device
    from cimflow.physics.device import apply_drift
    from cimflow.sim.array_state import drifted

    def device(**kw) -> Device:
        drift = {"nu_mean": 0.05, "t0_s": 1.0, **kw.pop("drift", {})}
        return Device(technology="rram", g_min=0.0, g_max=G_MAX, levels=8, drift=drift, **kw)

    g = torch.full((8,), 0.5 * G_MAX)
    nu = torch.full((8,), 0.05)
    t = 1e5
    room = drifted(g, nu, t, device())
    assert torch.equal(room, apply_drift(g, nu, t, 1.0))  # Ea = 0: the original law, bit for bit
    assert torch.equal(drifted(g, nu, t, device(drift={"activation_energy_ev": 0.5})), room)  # at 300 K nothing changes
    hot = drifted(g, nu, t, device(drift={"activation_energy_ev": 0.5}, temperature_k=350.0))
    factor = arrhenius_factor(0.5, 350.0)
    assert torch.allclose(hot, apply_drift(g, nu, 1.0 + factor * (t - 1.0), 1.0))
    assert float(hot.mean()) < float(room.mean())
