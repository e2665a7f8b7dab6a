"""The system model: closed-form cases where one resource is known to bind."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cimflow
from cimflow.chip import load_preset
from cimflow.cost import estimate
from cimflow.cost.system import DEFAULT_LEAKAGE_W_PER_MM2, ChipTraffic, system_model
from cimflow.errors import CimflowError


@pytest.fixture(scope="module")
def mlp_plan():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    plan = cimflow.compile(model, "hybrid-rram-sram-28nm", torch.zeros(32, 64))
    return plan, estimate(plan, batch_size=32)


def test_dram_binds_when_cold_rows_need_more_than_its_bandwidth(mlp_plan):
    plan, cost = mlp_plan
    chip = plan.chip
    # 1e6 rows per query x 64 B each = 64 MB/query against 51.2 GB/s: 800 QPS exactly
    sys = system_model(cost, plan, [ChipTraffic(dram_lookups=1e6, dram_bytes_per_lookup=64.0)])
    assert sys.bound_by == "DRAM"
    assert sys.qps == pytest.approx(chip.dram.bandwidth_bytes_per_s / 64e6)
    assert sys.utilization["DRAM"] == pytest.approx(1.0)
    assert all(u <= 1.0 + 1e-12 for u in sys.utilization.values())


def test_host_link_binds_on_the_larger_direction(mlp_plan):
    plan, cost = mlp_plan
    sys = system_model(cost, plan, [ChipTraffic(host_in_bytes=1e6, host_out_bytes=4e6)])
    assert sys.bound_by == "host link"
    assert sys.qps == pytest.approx(plan.chip.host_link.bandwidth_bytes_per_s / 4e6)
    # link energy counts both directions at the link's energy per bit
    assert sys.energy_by_part["host_link"] == pytest.approx(5e6 * 8 * plan.chip.host_link.energy_per_bit_pj * 1e-12)


def test_compute_binds_without_traffic_and_static_power_is_charged_per_query(mlp_plan):
    plan, cost = mlp_plan
    sys = system_model(cost, plan, [ChipTraffic(host_in_bytes=1.0, host_out_bytes=1.0)])  # (256 B of fp32 inputs would bind the link)
    slow = max(o.latency_s for o in plan.array_ops())
    unit = sum(o.latency_s for o in plan.ops if o.substrate == "digital_unit")
    assert sys.bound_by in ("arrays", "digital unit")
    assert sys.qps == pytest.approx(32 / max(slow, unit))
    board = plan.chip.board
    assert sys.energy_by_part["board_static"] == pytest.approx(board.static_power_w / sys.qps)
    assert sys.energy_by_part["leakage"] == pytest.approx(board.leakage_w_per_mm2 * sys.area_mm2_per_chip / sys.qps)
    assert sys.qps_per_w == pytest.approx(1 / sum(sys.energy_by_part.values()))


def test_a_chip_without_leakage_gets_the_documented_default_and_says_so():
    chip = load_preset("sram-digital-22nm")
    assert chip.board is None
    model = nn.Sequential(nn.Linear(32, 16))
    plan = cimflow.compile(model, chip, torch.zeros(4, 32))
    sys = system_model(estimate(plan, batch_size=4), plan, [ChipTraffic(host_in_bytes=128, host_out_bytes=64)])
    assert sys.energy_by_part["leakage"] == pytest.approx(DEFAULT_LEAKAGE_W_PER_MM2 * sys.area_mm2_per_chip / sys.qps)
    assert any("states no leakage" in n for n in sys.notes)
    assert any("no host_link" in n for n in sys.notes)


def test_several_chips_add_chip_links_and_static_power(mlp_plan):
    plan, cost = mlp_plan
    one = system_model(cost, plan, [ChipTraffic(link_out_bytes=1e6)])
    assert "chip link" not in " ".join(one.utilization)  # one chip has no chip links
    four = system_model(cost, plan, [ChipTraffic(link_in_bytes=1e6, link_out_bytes=2e6)] * 4)
    assert four.chips == 4 and four.bound_by.startswith("chip link")
    assert four.qps == pytest.approx(plan.chip.chip_link.bandwidth_bytes_per_s / 2e6)
    assert four.qps_per_chip == pytest.approx(four.qps / 4)
    assert four.energy_by_part["board_static"] == pytest.approx(4 * plan.chip.board.static_power_w / four.qps)


def test_bad_traffic_is_refused(mlp_plan):
    plan, cost = mlp_plan
    with pytest.raises(CimflowError, match="at least one chip"):
        system_model(cost, plan, [])
    with pytest.raises(CimflowError, match="dram_lookups"):
        ChipTraffic(dram_lookups=-1.0)
    with pytest.raises(CimflowError, match="host_in_bytes"):
        ChipTraffic(host_in_bytes=math.nan)


def test_buffers_and_interconnect_bind_when_the_chip_gives_their_bandwidth(mlp_plan):
    plan, cost = mlp_plan
    unbounded = system_model(cost, plan, [ChipTraffic(host_in_bytes=1.0)])
    assert any("interconnect" in n for n in unbounded.notes) and any("buffers" in n for n in unbounded.notes)
    chip = plan.chip.model_copy(update={"buffer": plan.chip.buffer.model_copy(update={"bandwidth_bytes_per_s": 1e6})})
    bits = sum(c.events.get("buffer_bits", 0.0) for c in cost.per_op)
    slow = system_model(cost, plan, [ChipTraffic(host_in_bytes=1.0)], chip=chip)
    assert slow.bound_by == "on-chip buffers"
    assert slow.qps == pytest.approx(1e6 / (bits / 8 / 32))


# ---------------------------------------------------------------- the PIM tier's cost law
@pytest.fixture(scope="module")
def pim_plan():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    plan = cimflow.compile(model, "hbm-pim-recsys", torch.zeros(32, 64))
    return plan, estimate(plan, batch_size=32)


@pytest.mark.parametrize("which", ["PIM banks", "PIM units", "PIM interface"])
def test_each_pim_resource_binds_at_its_closed_form(pim_plan, which: str):
    plan, cost = pim_plan
    pim = plan.chip.pim
    # internal bandwidth = units x access_bytes x clock; ops = units x lanes x clock
    assert pim.internal_bandwidth_bytes_per_s == pytest.approx(pim.units * pim.access_bytes * pim.clock_hz)
    assert pim.ops_per_s == pytest.approx(pim.units * pim.lanes * pim.clock_hz)
    big = {"PIM banks": dict(pim_internal_bytes=1e9, pim_ops=1.0, pim_external_bytes=1.0),
           "PIM units": dict(pim_internal_bytes=1.0, pim_ops=1e9, pim_external_bytes=1.0),
           "PIM interface": dict(pim_internal_bytes=1.0, pim_ops=1.0, pim_external_bytes=1e9)}[which]
    sys = system_model(cost, plan, [ChipTraffic(pim_lookups=1.0, **big)])
    capacity = {"PIM banks": pim.internal_bandwidth_bytes_per_s, "PIM units": pim.ops_per_s,
                "PIM interface": pim.bandwidth_bytes_per_s}[which]
    assert sys.bound_by == which
    assert sys.qps == pytest.approx(capacity / 1e9)
    assert sys.utilization[which] == pytest.approx(1.0)
    assert all(u <= 1.0 + 1e-12 for u in sys.utilization.values())


def test_pim_traffic_on_a_chip_without_pim_is_refused(mlp_plan):
    plan, cost = mlp_plan
    with pytest.raises(CimflowError, match="no 'pim' block"):
        system_model(cost, plan, [ChipTraffic(pim_lookups=1.0, pim_internal_bytes=64.0)])


def test_pim_energy_in_estimate_is_the_dram_tiers_closed_form():
    from cimflow.compile.tiers import pim_traffic

    # the hybrid chip (rows pooled in RRAM) given the PIM block of hbm-pim-recsys as a further tier
    chip = load_preset("hybrid-rram-sram-28nm").model_copy(update={"pim": load_preset("hbm-pim-recsys").pim})
    bag = nn.EmbeddingBag(10_000, 64, mode="sum")
    idx, off = torch.zeros(20 * 32, dtype=torch.long), torch.arange(0, 20 * 32, 20)
    plan = cimflow.compile(bag, chip, (idx, off))
    op = next(o for o in plan.ops if o.op_type == "EmbeddingBag")
    base = {"bags": 32, "lookups": 640, "hot_lookups": 0.0, "dram_lookups": 0.0}
    plain = estimate(plan, stats={op.name: base}, batch_size=32)
    with_pim = estimate(plan, stats={op.name: {**base, "pim_lookups": 320.0}}, batch_size=32)
    t = pim_traffic(chip, 64, 20, 0.5)
    p = chip.pim
    per_bag = (t.internal_bytes * 8 * p.internal_energy_per_bit_pj + t.ops * p.energy_per_op_pj
               + t.external_bytes * 8 * p.external_energy_per_bit_pj + t.lookups * p.row_activation_pj) * 1e-12
    assert with_pim.by_component["dram"] - plain.by_component["dram"] == pytest.approx(32 * per_bag, rel=1e-9)
    bad = {**base, "hot_lookups": 400.0, "pim_lookups": 400.0}
    with pytest.raises(CimflowError, match="pim_lookups <= lookups"):
        estimate(plan, stats={op.name: bad}, batch_size=32)


def test_a_table_pooling_on_the_unit_adds_one_vector_per_bag_for_its_pim_rows():
    bag = nn.EmbeddingBag(10_000, 64, mode="sum")
    idx, off = torch.zeros(20 * 32, dtype=torch.long), torch.arange(0, 20 * 32, 20)
    plan = cimflow.compile(bag, "hbm-pim-recsys", (idx, off), rules={"*": "digital_unit"})
    op = next(o for o in plan.ops if o.op_type == "EmbeddingBag")
    assert op.substrate == "digital_unit"
    base = {"bags": 32, "lookups": 640, "hot_lookups": 0.0, "dram_lookups": 0.0}
    plain = estimate(plan, stats={op.name: base}, batch_size=32).by_component["digital_unit"]
    all_pim = estimate(plan, stats={op.name: {**base, "pim_lookups": 640.0}}, batch_size=32).by_component["digital_unit"]
    # 20 rows per bag become one pooled vector per bag
    assert all_pim == pytest.approx(plain / 20, rel=1e-9)
