"""cimflow.cost.estimate: closed forms, monotonicity, data dependence, whole plans."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import pytest
import torch
from cimtest import chip_with
from rich.console import Console
from torch import nn

import cimflow
from cimflow.compile.plan import Plan
from cimflow.cost.adc_law import ADC_ENOB_LOSS_BITS, load_adc_law
from cimflow.cost.components import (
    ADC_FOM_J_PER_STEP,
    ADC_FOM_NODE_M,
    ADC_FOM_SUPPLY_V,
    DCIM_BIT_OP_J,
    adc_fom_energy_j,
    adc_thermal_energy_j,
    add_energy_j,
    retarget_energy,
)
from cimflow.cost.estimate import CostOptions, estimate, group_counts, leakage_power_w, zero_read_fraction
from cimflow.cost.report_types import COMPONENTS, print_cost
from cimflow.errors import ChipSpecError, CimflowError
from cimflow.mapping.tiling import TileGrid
from cimflow.sim.stats import gather_stats

PJ = 1e-12
REAL_PRESETS = ("rram-analog-generic", "pcm-hermes-like", "sram-digital-22nm", "hybrid-rram-sram-28nm")


def _one_read_chip(**changes):
    """rram-analog-generic with a one-read DAC input (8 bits): one vector = one read per array."""
    base = {"arrays.rram.input_encoding.scheme": "dac"}
    base.update(changes)
    return chip_with("rram-analog-generic", **base)


def _plan(chip, in_features=256, out_features=128, batch=1, **kw):
    model = nn.Sequential(nn.Linear(in_features, out_features, bias=False))
    return cimflow.compile(model, chip, torch.randn(batch, in_features), replicate=False, **kw)


# ----------------------------------------------------------------------------- closed forms

def test_group_counts_match_the_tilegrid_groups():
    for in_f, rows, per_read in [(700, 256, 256), (700, 256, 100), (1000, 1024, 32), (33, 1024, 32), (4096, 512, 96), (5, 8, 3)]:
        grid = TileGrid(in_f, 10, rows, 16, per_read)
        assert dict(group_counts(grid)) == dict(Counter(grid.group_sizes()))


def test_one_array_one_read_equals_hand_computation():
    chip = _one_read_chip()
    plan = _plan(chip)
    cost = estimate(plan).op("0")
    spec = chip.arrays["rram"]
    v_supply = chip.technology.supply_v
    rows, cols_used, weight_cols = 256, 2 * 128, 128  # differential: 2 cells per weight column
    g_mean = spec.device.g_min + (spec.device.g_max - spec.device.g_min) * 0.5 * 0.5  # fill 0.5, one cell of the pair
    per_cell = g_mean * spec.read.read_voltage**2 * spec.read.read_pulse_s + spec.read.line_capacitance_f * v_supply**2
    assert cost.events["array_reads"] == 1 and cost.events["conversions"] == weight_cols
    assert cost.energy_j["cells_lines"] == pytest.approx(rows * cols_used * per_cell, rel=1e-12)
    assert cost.energy_j["dac_drivers"] == pytest.approx(rows * 0.5 * PJ, rel=1e-12)
    assert cost.energy_j["adc"] == pytest.approx(weight_cols * 9.5 * PJ, rel=1e-12)
    # accumulator: 8 ADC bits + 8 input bits = 16 bits; Horowitz 45 nm line through int8/int32 adds,
    # C V^2 scaled to 130 nm / 1.2 V
    add_16 = (0.03 + (0.1 - 0.03) * 8 / 24) * PJ * (130 / 45) * (1.2 / 0.9) ** 2
    assert cost.energy_j["adder_tree_shift_add"] == pytest.approx(weight_cols * add_16, rel=1e-12)
    assert cost.energy_j["buffers"] == pytest.approx((rows * 8 + 128 * 8) * 0.80 * PJ, rel=1e-12)
    assert cost.energy_j == cost.fixed_energy_j and not cost.data_dependent


def test_bit_serial_multiplies_reads_by_pulses_and_groups():
    # 8-bit bit-serial -> 7 pulses; max_active_rows 100 -> 700 inputs in groups 100,100,56 | 100,100,56 | 100,88
    chip = chip_with("rram-analog-generic", **{"arrays.rram.max_active_rows": 100})
    plan = _plan(chip, in_features=700, out_features=200, batch=3)
    ev = estimate(plan).op("0").events
    tiles = plan.op("0").tiles
    groups = len(tiles.group_sizes())
    assert groups == 8 and tiles.col_tiles == 2
    assert ev["array_reads"] == 3 * 7 * groups * 2
    assert ev["conversions"] == 3 * 7 * groups * 200
    assert ev["driven_rows"] == 3 * 7 * 700 * 2
    assert ev["cell_reads"] == 3 * 7 * 700 * 200 * 2


def test_digital_cim_bit_ops_closed_form():
    plan = _plan("sram-digital-22nm", in_features=256, out_features=64)
    cost = estimate(plan).op("0")
    bit_ops = 256 * 64 * 4 * 4  # rows x weight columns x weight bits x input bits
    assert cost.events["bit_ops"] == bit_ops
    assert cost.energy_j["adder_tree_shift_add"] == pytest.approx(bit_ops * 0.0014045 * PJ, rel=1e-12)
    assert cost.energy_j["adc"] == cost.energy_j["cells_lines"] == cost.energy_j["dac_drivers"] == 0.0
    # macro level: 2 ops per MAC / adder-tree energy = the published 89 TOPS/W
    assert 2 * 256 * 64 / cost.energy_j["adder_tree_shift_add"] / 1e12 == pytest.approx(89.0, rel=1e-3)


def test_chip_area_closed_form():
    report = estimate(_plan("sram-digital-22nm", 64, 64))
    macros = 64 * 8 * 256 * 256 * 3.07e-12
    buffer_bits = (2 * 2**20 + 64 * 32 * 1024) * 8
    buffer = buffer_bits * (160 / 0.7) * (22e-9) ** 2
    assert report.area_by_component["cells"] == pytest.approx(macros, rel=1e-12)
    assert report.area_by_component["buffers"] == pytest.approx(buffer, rel=1e-12)
    assert report.area_m2 == pytest.approx(macros + buffer, rel=1e-12)


def test_leakage_is_power_times_interval():
    chip = _one_read_chip(**{"arrays.rram.adc.conversion.leakage_uw": 2.0})
    report = estimate(_plan(chip))
    adcs = 48 * 256 // 2  # 48 arrays, one ADC per 2 columns
    assert report.by_component["leakage"] == pytest.approx(adcs * 2e-6 / report.throughput_per_s, rel=1e-12)


def test_leakage_counts_the_digital_unit_and_the_buffers():
    base = _one_read_chip()
    leaky = _one_read_chip(**{"digital_unit.leakage_uw": 300.0, "buffer.leakage_uw_per_kib": 0.5})
    buffer_kib = ((base.buffer.capacity_bytes or 0) + base.cores.buffer_bytes * base.cores.count) / 1024
    assert buffer_kib > 0
    assert leakage_power_w(base) == 0.0
    assert leakage_power_w(leaky) == pytest.approx((300.0 + 0.5 * buffer_kib) * 1e-6, rel=1e-12)
    report = estimate(_plan(leaky))
    assert report.by_component["leakage"] == pytest.approx(leakage_power_w(leaky) / report.throughput_per_s, rel=1e-12)


# ----------------------------------------------------------------------------- monotonicity

def _adc_energy(chip, options=None) -> float:
    return estimate(_plan(chip), options=options).op("0").energy_j["adc"]


def _survey_law(bits: float, chip) -> float:
    """The median survey law by hand at the chip's node, supply and conversion rate (2020 design)."""
    law = load_adc_law("median")
    spec = chip.arrays["rram"]
    rate = 1.0 / spec.adc.conversion.latency_s if spec.adc.conversion.latency_s > 0 else chip.clock_hz
    node, supply, enob = chip.technology.node_nm * 1e-9, chip.technology.supply_v, bits - ADC_ENOB_LOSS_BITS
    v_typ = 10 ** (law.supply_intercept + law.supply_slope * math.log10(node / 28e-9))
    walden = (10**law.log10_walden_j * 2 ** (law.enob_exponent * enob) * (node / 28e-9) ** law.node_exponent
              * (supply / v_typ) ** law.supply_exponent * (1 + rate / 10**law.log10_corner_hz))
    return walden + 0.5 * 10 ** ((6.02 * enob + 1.76 - 186.7) / 10)


def test_more_adc_bits_cost_more_with_the_converter_law():
    chips = {b: _one_read_chip(**{"arrays.rram.adc.conversion": {}, "arrays.rram.adc.bits": b}) for b in range(3, 17)}
    energies = [_adc_energy(chips[b]) for b in range(3, 17)]
    assert all(b > a for a, b in itertools.pairwise(energies))
    # the survey law by hand: 128 conversions of one read
    for b in (4, 8, 16):
        assert _adc_energy(chips[b]) == pytest.approx(128 * _survey_law(b, chips[b]), rel=1e-9)
    law = load_adc_law("median")
    assert energies[1] / energies[0] == pytest.approx(2**law.enob_exponent, rel=2e-2)  # Walden regime
    high = [_adc_energy(_one_read_chip(**{"arrays.rram.adc.conversion": {}, "arrays.rram.adc.bits": b})) for b in (23, 24)]
    assert high[1] / high[0] > 3.0  # towards the thermal regime: 4x per bit


def test_walden_fom_option_replaces_the_survey_law():
    chip = _one_read_chip(**{"arrays.rram.adc.conversion": {}, "arrays.rram.adc.bits": 8})
    fom = _adc_energy(chip, CostOptions(adc_fom_j_per_step=ADC_FOM_J_PER_STEP))
    node, supply = chip.technology.node_nm * 1e-9, chip.technology.supply_v
    assert fom == pytest.approx(128 * adc_fom_energy_j(8, node, supply), rel=1e-9)
    frontier = _adc_energy(chip, CostOptions(adc_law="frontier"))
    assert frontier < _adc_energy(chip)  # the best tenth of converters spends less than the median
    assert _adc_energy(chip, CostOptions(adc_year=2010)) > _adc_energy(chip)  # older designs cost more
    for bad in ({"adc_law": "best"}, {"adc_year": 1990}, {"adc_year": 2030}, {"adc_year": 2020.0}):
        with pytest.raises(CimflowError, match="CostOptions"):
            CostOptions(**bad)


def test_converter_law_has_a_walden_and_a_thermal_regime():
    node, supply = ADC_FOM_NODE_M, ADC_FOM_SUPPLY_V
    assert adc_fom_energy_j(8, node, supply) == pytest.approx(ADC_FOM_J_PER_STEP * 256, rel=1e-2)
    # The thermal floor by hand: 8 bits -> SNDR 49.92 dB; 0.5 * 10^((49.92 - 186.7) / 10) J.
    assert adc_thermal_energy_j(8) == pytest.approx(0.5 * 10 ** ((6.02 * 8 + 1.76 - 186.7) / 10))
    assert adc_thermal_energy_j(8) == pytest.approx(1.05e-14, rel=1e-2)
    # Above ~15 bits each bit costs ~4x, below ~2x.
    assert adc_fom_energy_j(20, node, supply) / adc_fom_energy_j(19, node, supply) > 3.5
    assert adc_fom_energy_j(7, node, supply) / adc_fom_energy_j(6, node, supply) < 2.01


def test_chip_adc_energy_moves_from_its_quoted_bits_along_the_converter_law():
    chips = {b: _one_read_chip(**{"arrays.rram.adc.bits": b, "arrays.rram.adc.energy_quoted_at_bits": 8}) for b in (6, 8, 10)}
    e = {b: _adc_energy(chip) for b, chip in chips.items()}
    assert e[6] < e[8] < e[10]
    assert e[8] == pytest.approx(128 * 9.5 * PJ)
    for b in (6, 10):
        ratio = _survey_law(b, chips[b]) / _survey_law(8, chips[b])
        assert e[b] == pytest.approx(e[8] * ratio, rel=1e-9)
    unquoted = _adc_energy(_one_read_chip(**{"arrays.rram.adc.bits": 10}))
    assert unquoted == pytest.approx(128 * 9.5 * PJ)  # quoted at its own bits: used as given


def test_bigger_node_costs_more_per_op():
    def per_mac(node_nm: float) -> tuple[float, float]:
        analog = _one_read_chip(**{"technology.node_nm": node_nm, "arrays.rram.adc.conversion": {}})
        digital = chip_with("sram-digital-22nm", **{"technology.node_nm": node_nm, "arrays.sram_dcim.adder_tree": None})
        a = estimate(_plan(analog)).op("0")
        d = estimate(_plan(digital, 256, 64)).op("0")
        return (a.energy_j["adc"] + a.energy_j["adder_tree_shift_add"]) / (256 * 128), d.energy_j["adder_tree_shift_add"] / (256 * 64)

    values = [per_mac(n) for n in (7, 14, 28, 65, 130)]
    for (a0, d0), (a1, d1) in itertools.pairwise(values):
        assert a1 > a0 and d1 > d0
    # the digital default is Chih et al.'s 1.40 fJ re-targeted by C V^2: linear in the node
    assert values[-1][1] / values[0][1] == pytest.approx(130 / 7)
    assert retarget_energy(DCIM_BIT_OP_J, 22e-9, 0.72, 44e-9, 1.44) == pytest.approx(8 * DCIM_BIT_OP_J)


def test_add_energy_matches_horowitz_points():
    assert add_energy_j(8, 45e-9, 0.9) == pytest.approx(0.03e-12)
    assert add_energy_j(32, 45e-9, 0.9) == pytest.approx(0.1e-12)
    assert add_energy_j(16, 45e-9, 0.9) < add_energy_j(24, 45e-9, 0.9)


# ----------------------------------------------------------------------------- data-dependent

def _simulated_mlp(preset: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96, bias=False), nn.ReLU(), nn.Linear(96, 10))
    plan = cimflow.compile(model, preset, torch.randn(8, 64))
    return plan, cimflow.simulate(plan, model, seed=0)


@pytest.mark.parametrize("preset", ["rram-analog-generic", "pcm-hermes-like"])
def test_all_zero_input_skips_every_read_and_conversion(preset):
    plan, sim = _simulated_mlp(preset)
    stats = gather_stats(sim, [torch.zeros(16, 64)])
    assert stats["0"]["nonzero_inputs"] == 0
    report = estimate(plan, stats)
    op = report.op("0")
    assert op.data_dependent and report.data_dependent
    for c in ("cells_lines", "dac_drivers", "adc", "adder_tree_shift_add"):
        assert op.fixed_energy_j[c] > 0 and op.energy_j[c] == 0.0
    assert op.events["array_reads"] == 0 and op.events["conversions"] == 0
    assert op.energy_j["buffers"] == op.fixed_energy_j["buffers"] > 0
    assert report.energy_j < report.fixed_energy_j
    assert report.energy_ratio == pytest.approx(report.energy_j / report.fixed_energy_j)


def test_measured_density_scales_cells_and_skips_groups_in_closed_form():
    chip = _one_read_chip(**{"arrays.rram.max_active_rows": 64})  # 4 groups of 64 rows
    plan = _plan(chip)
    d = 0.03
    report = estimate(plan, {"0": {"input_density": d, "input_elements": 256}})
    op = report.op("0")
    assert op.energy_j["cells_lines"] == pytest.approx(d * op.fixed_energy_j["cells_lines"], rel=1e-12)
    assert op.energy_j["dac_drivers"] == pytest.approx(d * op.fixed_energy_j["dac_drivers"], rel=1e-12)
    assert op.energy_j["adc"] == pytest.approx((1 - (1 - d) ** 64) * op.fixed_energy_j["adc"], rel=1e-12)
    # a measured count of all-zero reads wins over the independence estimate
    measured = estimate(plan, {"0": {"input_density": d, "input_elements": 256, "reads": 400, "zero_reads": 100}}).op("0")
    assert measured.energy_j["adc"] == pytest.approx(0.75 * op.fixed_energy_j["adc"], rel=1e-12)


def test_real_data_moves_the_estimate_and_says_by_how_much():
    plan, sim = _simulated_mlp("rram-analog-generic")
    stats = gather_stats(sim, [torch.relu(torch.randn(32, 64))])  # about half the inputs are zero
    report = estimate(plan, stats)
    assert 0.3 < stats["0"]["input_density"] < 0.7
    assert report.energy_j < report.fixed_energy_j
    assert report.relative_change == pytest.approx(report.energy_j / report.fixed_energy_j - 1)
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["data_dependent"] is True


def test_bad_statistics_are_refused_with_a_message():
    plan = _plan(_one_read_chip())
    with pytest.raises(CimflowError, match="must map layer names"):
        estimate(plan, [1, 2])
    with pytest.raises(CimflowError, match=r"stats\['0'\]\['input_density'\] must be a fraction"):
        estimate(plan, {"0": {"input_density": 3.0, "input_elements": 10}})
    report = estimate(plan, {"nope": {"input_density": 0.5, "input_elements": 10}})
    assert any("nope" in n for n in report.notes) and not report.data_dependent


def test_embedding_lookups_read_only_the_groups_they_touch():
    bag = nn.EmbeddingBag(5000, 16, mode="sum")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = bag

        def forward(self, idx, offsets):
            return self.bag(idx, offsets)

    pooling, bags = 6, 4
    idx = torch.randint(0, 5000, (pooling * bags,))
    offsets = torch.arange(0, pooling * bags, pooling)
    plan = cimflow.compile(Model(), "hybrid-rram-sram-28nm", (idx, offsets), replicate=False)
    op_plan = plan.op("bag")
    assert op_plan.array_kind == "rram_emb"
    cost = estimate(plan).op("bag")
    dense_groups = len(op_plan.tiles.group_sizes())
    slices = 2
    # fewer reads than looked-up rows (a group may hold several), far fewer than a dense read
    assert cost.events["conversions"] <= bags * pooling * 16 * slices * (1 + 1e-12)
    assert cost.events["conversions"] < 0.1 * bags * dense_groups * 16 * slices
    assert cost.activity["fixed_row_activity"] == pytest.approx(pooling / 5000)
    # buffer traffic: indices in (13 bits each for 5000 rows), pooled rows out
    assert cost.events["buffer_bits"] == pytest.approx(bags * pooling * 13 + bags * 16 * 8)


# ----------------------------------------------------------------------------- whole plans

def _cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_estimate_of_a_compiled_model_is_consistent(preset):
    plan = cimflow.compile(_cnn(), preset, torch.randn(2, 1, 8, 8))
    report = estimate(plan)
    assert report.energy_j > 0 and math.isfinite(report.energy_j)
    assert set(report.by_component) == set(COMPONENTS)
    per_op = sum(o.total_energy_j for o in report.per_op)
    chip_level = report.by_component["interconnect"] + report.by_component["leakage"]
    assert report.energy_j == pytest.approx(per_op + chip_level, rel=1e-12)
    assert report.fixed_energy_j == pytest.approx(report.energy_j, rel=1e-12)
    macs = sum(o.macs for o in plan.ops)
    assert report.macs == macs > 0 and report.batch_size == 2
    assert report.tops_per_w == pytest.approx(2 * macs / report.energy_j / 1e12)
    assert report.qps_per_w == pytest.approx(2 / report.energy_j)
    assert report.latency_s == pytest.approx(plan.schedule.latency_s)
    assert report.throughput_per_s == pytest.approx(plan.schedule.throughput_per_s)
    assert report.power_w == pytest.approx(report.energy_j * report.throughput_per_s)
    used = sum(o.area_m2 for o in report.per_op)
    assert 0 < used <= sum(report.area_by_component[c] for c in ("cells", "adc", "dac", "adder_tree"))
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["chip"] == preset


def test_host_ops_add_host_time_energy_and_dram():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    plan = cimflow.compile(model, "hybrid-rram-sram-28nm", torch.randn(4, 64), rules={"2": "host"})
    report = estimate(plan, host="laptop-cpu")
    op = report.op("2")
    assert op.substrate == "host" and op.latency_s > 0
    flops, moved = 2 * 4 * 128 * 10, (128 * 10 + 4 * 128 + 4 * 10) * 4
    assert op.latency_s == pytest.approx(max(flops / 384e9, moved / (4266e6 * 16)))
    assert op.energy_j["host"] == pytest.approx(28.0 * op.latency_s)
    assert op.energy_j["dram"] == pytest.approx(128 * 10 * 32 * 20e-12)  # the chip's DRAM: 20 pJ/bit
    assert report.host_latency_s == pytest.approx(op.latency_s)
    assert report.latency_s == pytest.approx(plan.schedule.latency_s + op.latency_s)


def test_json_round_trip_of_the_plan_gives_the_same_estimate():
    plan = cimflow.compile(_cnn(), "pcm-hermes-like", torch.randn(2, 1, 8, 8))
    again = Plan.from_json(plan.to_json())
    assert estimate(again).energy_j == pytest.approx(estimate(plan).energy_j, rel=1e-12)


def test_print_cost_shows_ops_components_and_totals():
    plan, sim = _simulated_mlp("pcm-hermes-like")
    report = estimate(plan, gather_stats(sim, [torch.randn(8, 64)]))
    console = Console(record=True, width=220)
    print_cost(report, console)
    text = console.export_text()
    for word in ("adc", "cells_lines", "TOPS/W", "QPS/W", "mm²", "data-dependent", "fixed estimate"):
        assert word in text


def test_options_are_checked():
    with pytest.raises(CimflowError, match="weight_fill"):
        CostOptions(weight_fill=1.5)
    with pytest.raises(CimflowError, match="estimate needs a cimflow Plan"):
        estimate("not a plan")
    with pytest.raises(CimflowError, match="compiled without example inputs"):
        estimate(cimflow.compile(nn.Sequential(nn.Linear(8, 4)), "pcm-hermes-like"))


def test_zero_read_fraction_limits():
    counts = [(32, 10), (5, 1)]
    assert zero_read_fraction(counts, 0.0) == 1.0 and zero_read_fraction(counts, 1.0) == 0.0
    assert zero_read_fraction(counts, 0.1) == pytest.approx((10 * 0.9**32 + 0.9**5) / 11)


class _BagModel(nn.Module):
    def __init__(self, rows: int = 20_000, dim: int = 16) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(rows, dim, mode="sum")
        self.fc = nn.Linear(dim, 4)

    def forward(self, idx, offsets):
        return self.fc(self.bag(idx, offsets))


def test_embedding_reads_follow_the_simulator_and_its_expectation():
    torch.manual_seed(0)
    model, k, bags, rows = _BagModel(), 10, 200, 20_000
    idx, offsets = torch.randint(0, rows, (k * bags,)), torch.arange(0, k * bags, k)
    plan = cimflow.compile(model, "hybrid-rram-sram-28nm", (idx, offsets))
    stats = gather_stats(cimflow.simulate(plan, model, seed=0), [(idx, offsets)])
    assert stats["bag"]["bags"] == bags and stats["bag"]["lookups"] == k * bags
    cost = estimate(plan, stats).op("bag")
    tiles = plan.op("bag").tiles
    assert cost.data_dependent and cost.events["array_reads"] == pytest.approx(stats["bag"]["reads"] * tiles.col_tiles)
    assert cost.events["driven_rows"] == pytest.approx(k * bags)
    # fixed estimate: expected row tiles touched per bag; the simulator's mean over `bags` bags
    # must agree within 5 standard errors (occupancy variance of k lookups in R tiles)
    r = tiles.row_tiles
    mean = r * (1 - (1 - 1 / r) ** k)
    var = r * (r - 1) * (1 - 2 / r) ** k + r * (1 - 1 / r) ** k - (r * (1 - 1 / r) ** k) ** 2
    fixed_reads = cost.fixed_energy_j["adc"] / (tiles.out_features * 2 * 1.0 * PJ) / bags
    assert fixed_reads == pytest.approx(mean)
    assert abs(stats["bag"]["reads"] / bags - mean) < 5 * math.sqrt(var / bags)


def test_hot_and_dram_lookups_leave_the_arrays():
    torch.manual_seed(0)
    model, k, bags = _BagModel(), 10, 8
    idx, offsets = torch.randint(0, 20_000, (k * bags,)), torch.arange(0, k * bags, k)
    plan = cimflow.compile(model, "hybrid-rram-sram-28nm", (idx, offsets))
    stats = {"bag": {"bags": 100, "lookups": 1000, "reads": 300, "hot_lookups": 500, "dram_lookups": 100}}
    cost = estimate(plan, stats).op("bag")
    assert cost.events["driven_rows"] == pytest.approx(bags * 4.0)  # (1000 - 500 - 100) / 100 per bag
    assert cost.events["array_reads"] == pytest.approx(bags * 3.0)
    # hot (5 per bag) and cold (1 per bag) rows are both added into their bag on the digital unit
    assert cost.energy_j["digital_unit"] == pytest.approx(bags * 6.0 * 16 * 0.093 * PJ)
    # a cold row of 16 int8 values (dram.stored_bits 8) moves one whole 64-byte burst, plus an activation
    assert cost.energy_j["dram"] == pytest.approx(bags * 1.0 * (64 * 8 * 20 * PJ + 1000 * PJ))
    with pytest.raises(CimflowError, match="hot_lookups"):
        estimate(plan, {"bag": {"bags": 1, "lookups": 1, "reads": 1, "hot_lookups": 2}})


def test_the_chips_host_block_runs_the_host_ops():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    example = torch.randn(4, 64)

    def host_op(chip, host=None):
        plan = cimflow.compile(model, chip, example, rules={"2": "host"})
        report = estimate(plan, host=host)
        return report, report.op("2")

    laptop = chip_with("hybrid-rram-sram-28nm", **{"host": {"preset": "laptop-cpu"}})
    report, op = host_op(laptop)
    assert report.host == "laptop-cpu" and op.energy_j["host"] == pytest.approx(28.0 * op.latency_s)
    # An explicit host argument wins over the chip's block.
    assert host_op(laptop, host="nvidia-h100")[0].host == "nvidia-h100"
    # A preset with an override: the same roofline at a tenth of the power.
    frugal = chip_with("hybrid-rram-sram-28nm", **{"host": {"preset": "laptop-cpu", "power_w": 2.8}})
    report, op_frugal = host_op(frugal)
    assert "laptop-cpu" in report.host and op_frugal.latency_s == pytest.approx(op.latency_s)
    assert op_frugal.energy_j["host"] == pytest.approx(2.8 * op.latency_s)
    # A host described in full, in the schema's units.
    inline = chip_with("hybrid-rram-sram-28nm", **{"host": {
        "name": "edge-soc", "peak_gflops": 10.0, "memory_bandwidth_gb_per_s": 1.0, "power_w": 1.0}})
    report, op_inline = host_op(inline)
    assert report.host == "edge-soc" and op_inline.latency_s > op.latency_s
    assert op_inline.energy_j["host"] == pytest.approx(1.0 * op_inline.latency_s)


def test_bad_host_blocks_are_refused_clearly():
    with pytest.raises(ChipSpecError, match="peak_gflops, memory_bandwidth_gb_per_s, power_w"):
        chip_with("hybrid-rram-sram-28nm", **{"host": {"name": "half-described"}})
    with pytest.raises(ChipSpecError):
        chip_with("hybrid-rram-sram-28nm", **{"host": {"preset": "laptop-cpu", "power_w": -1}})
    unknown = chip_with("hybrid-rram-sram-28nm", **{"host": {"preset": "abacus"}})
    plan = cimflow.compile(nn.Sequential(nn.Linear(8, 8)), unknown, torch.randn(1, 8))
    with pytest.raises(CimflowError, match="unknown host 'abacus'; host presets are"):
        estimate(plan)
