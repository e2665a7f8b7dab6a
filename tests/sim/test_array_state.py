"""The array-instance lifecycle shared by matrix layers and embedding tables (sim/array_state.py)."""

from __future__ import annotations

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.errors import SimulationError
from cimflow.sim.array_state import ArrayInstance, compensation_gain, percentile_values


def _noisy():
    return chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [0.05]},
                                 "arrays.analog.device.drift": {"nu_mean": 0.05, "nu_std": 0.01, "t0_s": 1.0},
                                 "arrays.analog.adc.bits": 8})


def _instance(kind: str) -> tuple[nn.Module, ArrayInstance]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16) if kind == "linear" else nn.EmbeddingBag(100, 8, mode="sum"))
    cim = cimflow.convert(model, _noisy())
    layer = cim[0]
    return cim, layer.engine if kind == "linear" else layer


@pytest.mark.parametrize("kind", ["linear", "table"])
def test_both_owners_share_one_lifecycle(kind):
    cim, inst = _instance(kind)
    assert isinstance(inst, ArrayInstance)
    with pytest.raises(SimulationError, match="not programmed"):
        inst.set_time(10.0)
    for bad in (-1, 1.5, True):
        with pytest.raises(SimulationError, match="verify_iterations"):
            inst.set_program_verify(bad)
    with pytest.raises(SimulationError, match="verify_tolerance"):
        inst.set_program_verify(2, tolerance=-0.1)
    with pytest.raises(SimulationError, match="compensation mode"):
        inst.set_compensation("sideways")
    cimflow.program(cim, 3)
    assert inst.seed == 3 and inst.t_seconds == 1.0 and inst.write_pulses > 0
    inst.set_compensation("global")
    assert inst.output_gain is not None and float(inst.output_gain) == pytest.approx(1.0, abs=1e-6)  # at t0: nothing drifted
    inst.set_time(1e4)
    # drift G (t/t0)^-nu with nu ~ 0.05: the factor undoes about (1e4)^0.05 = 1.58
    assert 1.4 < float(inst.output_gain) < 1.8
    inst.set_compensation(None)
    assert inst.output_gain is None


def test_a_changed_table_is_programmed_again_before_forward_not_inside_it():
    cim, bag = _instance("table")
    cimflow.program(cim, 0)
    idx = torch.randint(0, 100, (4, 5))
    before = bag.pool_cache.clone()
    with torch.no_grad():
        bag.weight[:10].neg_()  # (a scaled table would program the same normalized cells)
    bag.forward(idx)  # forward itself never programs
    assert torch.equal(bag.pool_cache, before)
    bag(idx)  # the call runs the pre-hook first
    assert not torch.equal(bag.pool_cache, before)
    assert bag.refresh() is False  # up to date now


def test_compensation_gain_closed_forms():
    ref, now = torch.tensor([2.0, 4.0, 1e-12]), torch.tensor([1.0, 2.0, 1e-14])
    assert float(compensation_gain("global", ref, now)) == pytest.approx(6.0 / 3.0)
    per = compensation_gain("per_column", ref, now)
    assert per.tolist()[:2] == pytest.approx([2.0, 2.0]) and per[2] == 1.0  # a column reading nothing keeps 1


def test_percentile_values_nearest_rank():
    v = torch.arange(1.0, 101.0).flip(0).view(1, 100)
    assert float(percentile_values(v, 99.0, dim=1)) == 99.0
    assert float(percentile_values(v, 100.0, dim=1)) == 100.0
    assert float(percentile_values(v, 0.5, dim=1)) == 1.0


def test_set_buffers_sets_registered_buffers_only():
    """``set_buffers`` writes what ``inst.name = tensor`` writes (a buffer ``.to`` and
    ``state_dict`` see), and refuses a name that is not a buffer or a value that is not a tensor."""
    _, inst = _instance("linear")
    w = torch.full((2, 3), 0.5, dtype=torch.float64)
    inst.set_buffers(w_scale=w, output_gain=None)
    assert inst.w_scale is w and inst.output_gain is None
    assert dict(inst.named_buffers())["w_scale"] is w
    assert inst.to(torch.float32).w_scale.dtype == torch.float32  # moved like any buffer
    with pytest.raises(TypeError, match="not a buffer"):
        inst.set_buffers(not_a_buffer=w)
    with pytest.raises(TypeError, match="not a tensor"):
        inst.set_buffers(w_scale=[1.0])
