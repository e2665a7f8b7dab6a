"""cimflow.cost.cell_tech: each cell technology's cost law (read energy, programming, area,
leakage) moves with its parameters as its closed form says, and technologies differ where
physics says so (NOR flash is not SRAM)."""

from __future__ import annotations

import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.cost.cell_tech import (
    CELL_LAWS,
    MOM_CAP_F_PER_UM2,
    MRAM_CRITICAL_CURRENT_A,
    MRAM_WRITE_V,
    RRAM_WRITE_V,
    SRAM_BIT_LEAKAGE_W,
    array_leakage_w,
    cell_law,
    program_cost,
    pulses_per_write,
    write_pulse,
)
from cimflow.cost.estimate import CostOptions, estimate, kind_costs

BASE = "rram-analog-generic"


def with_device(**device):
    """rram-analog-generic with its device replaced (model and technology named), no cell area and
    no write cost given (so the technology's laws apply)."""
    base = chip_with(BASE)
    data = base.arrays["rram"].device.model_dump(mode="json", exclude_none=True)
    data = {k: v for k, v in data.items() if k not in ("model", "drift", "programming_noise", "write") or k in device}
    data.update(device)
    return chip_with(BASE, **{"arrays.rram.device": data, "arrays.rram.read.area_per_cell_um2": None})


def report(chip):
    model = nn.Sequential(nn.Linear(256, 128, bias=False))
    return estimate(cimflow.compile(model, chip, torch.zeros(2, 256), replicate=False))


# ---------------------------------------------------------------- technologies differ
def test_nor_flash_is_not_sram():
    sram, flash = with_device(technology="sram"), with_device(technology="nor_flash")
    a, b = report(sram), report(flash)
    assert a.energy_j != b.energy_j
    # SRAM holds its weights only while powered, so it leaks; a NOR-flash cell leaks nothing
    assert a.by_component["leakage"] > b.by_component["leakage"]
    assert a.area_by_component["cells"] / b.area_by_component["cells"] == pytest.approx(
        CELL_LAWS["sram"].area_f2 / CELL_LAWS["nor_flash"].area_f2, rel=1e-9)
    # programming a flash cell takes ISPP pulses of channel-hot-electron energy; an SRAM write is one bit-line swing
    assert b.program_energy_j > 1000 * a.program_energy_j and b.program_time_s > a.program_time_s
    # the read itself follows the same ohmic law for both: same conductance, voltage and pulse, same cell energy
    assert a.by_component["cells_lines"] == pytest.approx(b.by_component["cells_lines"], rel=1e-12)


@pytest.mark.parametrize("technology", sorted(set(CELL_LAWS) - {"charge_sram"}))
def test_every_technology_has_its_law(technology: str):
    chip = with_device(technology=technology)
    law = cell_law(chip.arrays["rram"])
    assert law.name == technology and law.source
    r = report(chip)
    assert math.isfinite(r.energy_j) and r.program_energy_j > 0 and r.area_mm2 > 0


# ---------------------------------------------------------------- read energy
def charge_chip(area_um2: float = 1.0, supply: float = 0.8):
    return with_device(technology="sram", model="charge_sram", g_min=0.0, g_max=1e-9, levels=2, read_noise=0.0,
                       capacitor_area_um2=area_um2) if supply == 0.8 else chip_with(
        BASE, **{"arrays.rram.device": {"technology": "sram", "model": "charge_sram", "g_min": 0.0, "g_max": 1e-9, "levels": 2,
                                       "capacitor_area_um2": area_um2}, "technology.supply_v": supply})


def test_charge_domain_cell_energy_is_c_v_squared():
    options = CostOptions(weight_fill=0.6)
    for area, supply in [(1.0, 0.8), (2.0, 0.8), (1.0, 1.2)]:
        chip = charge_chip(area, supply)
        spec = chip.arrays["rram"]
        kc = kind_costs(spec, "rram", chip, options)
        fill = 0.5 if spec.weight_encoding.scheme == "offset" else 0.3
        assert kc.e_cell_conduction == pytest.approx(area * MOM_CAP_F_PER_UM2 * supply**2 * fill, rel=1e-12)
    # no static current: the conductance does not enter
    a = kind_costs(charge_chip().arrays["rram"], "rram", charge_chip(), options).e_cell_conduction
    other = chip_with(BASE, **{"arrays.rram.device": {"technology": "sram", "model": "charge_sram", "g_min": 0.0, "g_max": 1e-3,
                                                      "levels": 2, "capacitor_area_um2": 1.0}, "technology.supply_v": 0.8})
    assert kind_costs(other.arrays["rram"], "rram", other, options).e_cell_conduction == pytest.approx(a, rel=1e-12)


def test_ohmic_cell_energy_is_g_v_squared_t():
    options = CostOptions(weight_fill=1.0)
    energies = {}
    for g_max, v, t in [(1e-5, 0.2, 1e-8), (2e-5, 0.2, 1e-8), (1e-5, 0.4, 1e-8), (1e-5, 0.2, 2e-8)]:
        chip = chip_with(BASE, **{"arrays.rram.device.g_min": 0.0, "arrays.rram.device.g_max": g_max,
                                  "arrays.rram.read.read_voltage": v, "arrays.rram.read.read_pulse_s": t})
        energies[g_max, v, t] = kind_costs(chip.arrays["rram"], "rram", chip, options).e_cell_conduction
    base = energies[1e-5, 0.2, 1e-8]
    assert energies[2e-5, 0.2, 1e-8] == pytest.approx(2 * base, rel=1e-12)
    assert energies[1e-5, 0.4, 1e-8] == pytest.approx(4 * base, rel=1e-12)
    assert energies[1e-5, 0.2, 2e-8] == pytest.approx(2 * base, rel=1e-12)


def test_charge_cell_area_is_the_larger_of_cell_and_capacitor():
    small, large = charge_chip(0.01), charge_chip(20.0)
    node = small.technology.node_nm * 1e-9
    cells = small.arrays["rram"].rows * small.arrays["rram"].cols
    assert report(small).area_by_component["cells"] == pytest.approx(
        small.arrays_on_chip("rram") * cells * max(300 * node**2, 0.01e-12), rel=1e-9)
    assert report(large).area_by_component["cells"] == pytest.approx(large.arrays_on_chip("rram") * cells * 20e-12, rel=1e-9)


# ---------------------------------------------------------------- programming
def test_nor_flash_ispp_pulses_follow_the_window_and_step():
    for window, step in [(4.0, 0.1), (4.0, 0.2), (2.0, 0.1)]:
        chip = with_device(technology="nor_flash", model="nor_flash", vth_window_v=window, ispp_step_v=step)
        assert pulses_per_write(chip.arrays["rram"]) == pytest.approx(window / (2 * step), rel=1e-12)


def test_mram_pulses_are_one_over_the_switching_probability():
    for pulse, ratio in [(10e-9, 1.005), (2e-9, 1.005), (10e-9, 0.9)]:
        chip = with_device(technology="mram", model="mram", levels=2, write_pulse_s=pulse, write_current_ratio=ratio)
        spec = chip.arrays["rram"]
        tau = 1e-9 * math.exp(60.0 * (1 - ratio))
        assert pulses_per_write(spec) == pytest.approx(1 / (1 - math.exp(-pulse / tau)), rel=1e-9)
        energy, t = write_pulse(spec, chip.technology.supply_v)
        assert t == pulse and energy == pytest.approx(MRAM_CRITICAL_CURRENT_A * ratio * MRAM_WRITE_V * pulse, rel=1e-12)
    short = with_device(technology="mram", model="mram", levels=2, write_pulse_s=1e-9)
    assert pulses_per_write(short.arrays["rram"]) > 1.2  # a short pulse often fails and is repeated


def test_rram_pulse_energy_is_v_squared_g_t_and_the_chip_can_override_it():
    for g_max in (1e-5, 4e-5):
        chip = chip_with(BASE, **{"arrays.rram.device.g_max": g_max, "arrays.rram.device.write": {}})
        energy, t = write_pulse(chip.arrays["rram"], chip.technology.supply_v)
        assert t == CELL_LAWS["rram"].write_pulse_s
        assert energy == pytest.approx(RRAM_WRITE_V**2 * g_max * t, rel=1e-12)
    given = chip_with(BASE, **{"arrays.rram.device.write": {"energy_pj": 3.0, "latency_ns": 20.0}})
    assert write_pulse(given.arrays["rram"], 1.0) == pytest.approx((3e-12, 20e-9))


def test_program_cost_is_cells_times_pulses_times_pulse():
    chip = with_device(technology="pcm")
    spec = chip.arrays["rram"]
    cost = program_cost(spec, 1000, chip.technology.supply_v)
    energy, t = write_pulse(spec, chip.technology.supply_v)
    assert cost.pulses == 1000 * CELL_LAWS["pcm"].pulses_per_write
    assert cost.energy_j == pytest.approx(cost.pulses * energy)
    assert cost.time_s == pytest.approx(math.ceil(1000 / spec.cols) * CELL_LAWS["pcm"].pulses_per_write * t)
    # the estimate programs every weight cell of the plan once
    r = report(chip)
    cells = 256 * 128 * spec.cells_per_weight
    assert r.program_energy_j == pytest.approx(program_cost(spec, cells, chip.technology.supply_v).energy_j, rel=1e-12)


# ---------------------------------------------------------------- leakage
def test_only_volatile_cells_leak_and_in_proportion_to_bits_and_supply():
    for technology in ("rram", "pcm", "nor_flash", "mram", "fefet"):
        assert array_leakage_w(with_device(technology=technology)) == 0.0
    chip = with_device(technology="sram")
    spec = chip.arrays["rram"]
    bits = chip.arrays_on_chip("rram") * spec.rows * spec.cols
    assert array_leakage_w(chip) == pytest.approx(bits * SRAM_BIT_LEAKAGE_W * chip.technology.supply_v / 0.9, rel=1e-12)
