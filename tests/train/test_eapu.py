"""EaPU on-chip learning: stochastic pulse counts are unbiased, small updates are written
with a probability instead of being lost, the device state is the model's weight, and the
write energy is pulses x the device's energy per pulse."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with

import cimflow
from cimflow.errors import CimflowError
from cimflow.train import eapu_train
from cimflow.train.eapu import pulse_counts
from cimflow.vision import accuracy, load_digits_data, small_cnn, train_classifier


def test_stochastic_pulse_counts_are_unbiased_and_rounding_loses_small_updates():
    gen = torch.Generator().manual_seed(0)
    ratio = torch.full((200_000,), 0.3)
    eapu = pulse_counts(ratio, "eapu", 0.0, gen)
    n = ratio.numel()
    assert set(eapu.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(eapu.mean()) - 0.3) < 6 * math.sqrt(0.3 * 0.7 / n)
    big = pulse_counts(torch.full((n,), 2.25), "eapu", 0.0, gen)
    assert set(big.unique().tolist()) == {2.0, 3.0} and abs(float(big.mean()) - 2.25) < 6 * math.sqrt(0.25 * 0.75 / n)
    assert float(pulse_counts(ratio, "deterministic", 0.0, gen).sum()) == 0  # round(0.3) = 0: the update is lost
    assert float(pulse_counts(ratio, "eapu", 0.5, gen).sum()) == 0  # below the threshold: skipped


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    data = load_digits_data(seed=0)
    torch.manual_seed(0)
    return train_classifier(small_cnn(channels=8, hidden=32), data, epochs=8, batch=64, seed=0), data


def test_eapu_trains_on_chip_and_counts_its_write_energy(trained):
    model, data = trained
    chip = cimflow.load_chip("rram-analog-generic")
    result = eapu_train(model, chip, data, steps=12, lr=0.05, batch_size=64, seed=0)
    cim = result.cim_model
    device = chip.array("rram").device
    assert result.steps == 12
    assert result.update_pulses == sum(h["pulses"] for h in result.history if "pulses" in h) > 0
    assert result.program_pulses == sum(n * 2 for n in (layer.weight.numel() for _, layer in cimflow.sim.cim_layers(cim)))
    assert result.write_energy_j == pytest.approx((result.program_pulses + result.update_pulses) * device.write.energy_j)
    assert result.update_energy_j == pytest.approx(result.update_pulses * device.write.energy_j)
    assert 0 < result.write_fraction < 0.2  # most desired updates write nothing
    assert sum(cimflow.sim.write_pulses(cim).values()) == result.program_pulses + result.update_pulses
    # the model's weights are the device's state (no re-programming from float weights)
    for _, layer in cimflow.sim.cim_layers(cim):
        eng = layer.engine
        w = ((eng.g_pos[0] - eng.g_neg[0]) / eng.denominator * eng.w_scale).t().reshape(layer.weight.shape)
        assert torch.allclose(layer.weight.detach(), w)
        assert eng._weight_version == layer.weight._version
    assert accuracy(cim, data.x_test, data.y_test) > 0.8


def test_deterministic_updates_lose_what_eapu_writes(trained):
    model, data = trained
    kwargs = dict(steps=8, lr=0.02, batch_size=64, seed=0)
    eapu = eapu_train(model, "rram-analog-generic", data, **kwargs)
    deterministic = eapu_train(model, "rram-analog-generic", data, mode="deterministic", **kwargs)
    assert eapu.update_pulses > 5 * max(deterministic.update_pulses, 1)


def test_eapu_refuses_encodings_it_does_not_model(trained):
    model, data = trained
    offset = chip_with("ideal", **{"arrays.analog.weight_encoding": {"scheme": "offset"}})
    with pytest.raises(CimflowError, match="differential"):
        eapu_train(model, offset, data, steps=1)
    with pytest.raises(CimflowError, match="mode"):
        eapu_train(model, "rram-analog-generic", data, steps=1, mode="sometimes")
