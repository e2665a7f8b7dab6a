"""CrossbarEngine.program(draws=, t_seconds=): programming at a time equals programming then
set_time; a draw source replaces the seeded generators (the device model's laws on its draws)."""

from __future__ import annotations

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.chip import load_preset
from cimflow.errors import SimulationError
from cimflow.physics.devices import GeneratorDraws
from cimflow.sim.engine import CrossbarEngine

PCM = "arrays.pcm"


def _pcm(adc_range: str, **more: object):
    return chip_with("pcm-hermes-like", **{f"{PCM}.adc.range": adc_range, **more})


def _layer(chip, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cimflow.convert(nn.Sequential(nn.Linear(300, 40)), chip)[0]


def _state(eng: CrossbarEngine) -> dict[str, torch.Tensor | None]:
    return {"w_eff": eng.w_eff, "read_var": eng.read_var, "adc_range": eng.adc_range, "g_pos": eng.g_pos, "nu_pos": eng.nu_pos}


@pytest.mark.parametrize("adc_range", ["expected", "per_array_max", "fixed", "percentile"])
@pytest.mark.parametrize("law", ["pcm", "generic"])
def test_programming_at_a_time_equals_programming_then_set_time(adc_range: str, law: str) -> None:
    more: dict[str, object] = {}
    if law == "generic":
        more = {f"{PCM}.device": {"technology": "pcm", "g_min": 0.0, "g_max": 2e-5, "levels": 256, "read_noise": 0.02,
                                  "programming_noise": {"coefficients": [1e-3, 0.02]},
                                  "drift": {"nu_mean": 0.05, "nu_std": 0.01, "t0_s": 20.0}}}
    chip = _pcm(adc_range, **more)
    a, b = _layer(chip), _layer(chip)
    with torch.no_grad():
        a.program(7)
        a.set_time(3600.0)
        b.program(7, t_seconds=3600.0)
    assert b.engine.t_seconds == a.engine.t_seconds == 3600.0
    for key, want in _state(a.engine).items():
        got = _state(b.engine)[key]
        assert want is not None and got is not None and torch.allclose(got, want, rtol=1e-6, atol=0), key
    # and at t0 (or no time given) the same as a plain program
    with torch.no_grad():
        b.program(7, t_seconds=b.engine.spec.device.drift.t0_s)
        a.program(7)
    assert torch.equal(a.engine.w_eff, b.engine.w_eff) and torch.equal(a.engine.adc_range, b.engine.adc_range)


class _Source:
    """A draw source: per-cell normals from one generator per purpose, scaled by ``k``; no stuck cells."""

    def __init__(self, scale: float) -> None:
        self.scale, self.shapes = scale, []

    def cells(self, shape):
        self.shapes.append(shape)
        base = GeneratorDraws(shape, 1, "src", "all")

        class Scaled:
            def normal(inner, purpose, k=0):  # noqa: N805
                return base.normal(purpose, k) * self.scale

            def uniform(inner, purpose, k=0):  # noqa: N805
                return base.uniform(purpose, k)

        return Scaled()

    def stuck(self, shape):
        codes = torch.zeros(shape, dtype=torch.int8)
        codes.view(-1)[::97] = 1  # every 97th cell stuck on
        return codes


@pytest.mark.parametrize("chip_name", ["pcm-hermes-like", "rram-analog-generic"])
def test_a_draw_source_replaces_the_generators(chip_name: str) -> None:
    layer = _layer(load_preset(chip_name))
    eng = layer.engine
    dev = eng.spec.device
    zero = _Source(0.0)
    with torch.no_grad():
        layer.program(5, draws=zero)
    s = eng.g_pos.shape[0]
    assert zero.shapes == [(2 * s, *eng.g_pos.shape[1:])]  # one source for both signs, (2 S, in, out)
    # zero normals: every healthy cell at its target, every 97th cell stuck at g_max
    cells = torch.cat([eng.g_pos, eng.g_neg])
    stuck = torch.zeros(cells.numel(), dtype=torch.bool)
    stuck[::97] = True
    assert torch.all(cells.view(-1)[stuck] == dev.g_max)
    healthy = cells.view(-1)[~stuck]
    step = (dev.g_max - dev.g_min) / (dev.n_levels - 1)
    levels = (healthy - dev.g_min) / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # on the level grid: no programming noise drawn
    with torch.no_grad():
        layer.program(5)
    assert not torch.equal(torch.cat([eng.g_pos, eng.g_neg]), cells)  # the seeded generators do draw noise
    # unit normals: the programming noise is back, with the draw source's values
    with torch.no_grad():
        layer.program(5, draws=_Source(1.0))
    noisy = torch.cat([eng.g_pos, eng.g_neg]).view(-1)[~stuck]
    assert float((noisy - healthy).abs().mean()) > 1e-3 * dev.g_max


def test_a_draw_source_needs_a_paired_encoding() -> None:
    chip = chip_with("rram-analog-generic", **{"arrays.rram.weight_encoding": {"scheme": "offset"}})
    layer = _layer(chip)
    with pytest.raises(SimulationError, match="draw source"), torch.no_grad():
        layer.program(0, draws=_Source(1.0))
