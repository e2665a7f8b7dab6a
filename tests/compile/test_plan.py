"""Partition, capacity, replication, placement, schedule and the Plan's JSON round-trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.compile.plan import ARRAY, DIGITAL_UNIT, HOST, Plan
from cimflow.errors import CompileError


class Attention(nn.Module):
    def __init__(self, d: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        x = self.norm(x + self.o(a @ v))
        return x + self.fc2(torch.relu(self.fc1(x)))


def _mlp():
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 10))


def test_transformer_block_attention_matmuls_on_digital_unit():
    plan = cimflow.compile(Attention(), "pcm-hermes-like", torch.randn(2, 16, 32))
    dyn = [o for o in plan.ops if o.kind == "dynamic_matmul"]
    assert len(dyn) == 2 and all(o.substrate == DIGITAL_UNIT for o in dyn)
    mvm = [o for o in plan.ops if o.kind == "static_mvm"]
    assert {o.name for o in mvm} == {"q", "k", "v", "o", "fc1", "fc2"} and all(o.substrate == ARRAY for o in mvm)
    assert all(o.substrate == DIGITAL_UNIT for o in plan.ops if o.op_type in ("softmax", "LayerNorm"))


def test_tiling_counts_and_utilization():
    chip = chip_with("ideal", **{"arrays.analog.rows": 128, "arrays.analog.cols": 128})
    plan = cimflow.compile(nn.Sequential(nn.Linear(300, 100)), chip, torch.randn(5, 300), replicate=False)
    op = plan.op("0")
    # 300 inputs -> 3 row tiles of 128; 100 outputs on 64 weight columns (differential) -> 2 col tiles
    assert (op.tiles.row_tiles, op.tiles.col_tiles, op.arrays) == (3, 2, 6)
    assert op.utilization == pytest.approx(300 * 100 / (6 * 128 * 64))
    assert op.mvm_count == 5 and op.macs == 5 * 300 * 100


def test_capacity_error_names_the_numbers():
    chip = chip_with("ideal", **{"cores.count": 1, "cores.arrays": {"analog": 2, "digital": 1}})
    needed = r"9 arrays of kind 'analog' \(256x256\) are needed but the chip has 2 .*'0' with 9 arrays \(700x300"
    with pytest.raises(CompileError, match=needed):
        cimflow.compile(nn.Sequential(nn.Linear(700, 300)), chip, torch.randn(1, 700))


def test_rules_by_name_type_regex_and_bad_target():
    model = _mlp()
    plan = cimflow.compile(model, "ideal", torch.randn(2, 64), rules={"type:Linear": "digital", "re:4": "host", "0": "analog"})
    assert plan.op("0").array_kind == "analog"
    assert plan.op("2").array_kind == "digital"
    assert plan.op("4").substrate == HOST
    with pytest.raises(CompileError, match="not 'host', 'digital', 'digital_unit'"):
        cimflow.compile(model, "ideal", torch.randn(2, 64), rules={"0": "nowhere"})
    with pytest.raises(CompileError, match="no static weight matrix"):
        cimflow.compile(model, "ideal", torch.randn(2, 64), rules={"1": "analog"})


def test_replication_balances_the_pipeline_within_capacity():
    chip = chip_with("ideal", **{"cores.count": 4, "cores.arrays": {"analog": 4, "digital": 1}})
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    x = torch.randn(1, 3, 16, 16)
    flat = cimflow.compile(model, chip, x, replicate=False)
    rep = cimflow.compile(model, chip, x)
    assert rep.op("0").replication > 1  # the conv does 256 MVMs per image: the bottleneck
    assert sum(rep.arrays_used().values()) <= chip.arrays_on_chip("analog")
    assert rep.schedule.pipelined_interval_s < flat.schedule.pipelined_interval_s
    assert rep.op("0").latency_s == pytest.approx(flat.op("0").latency_s / rep.op("0").replication)


def test_placement_fills_cores_and_reports_traffic():
    chip = chip_with("ideal", **{"cores.count": 16, "cores.arrays": {"analog": 2, "digital": 1}})
    plan = cimflow.compile(_mlp(), chip, torch.randn(4, 64), replicate=False)
    usage = plan.placement.core_usage
    assert sum(u["analog"] for u in usage) == sum(o.arrays for o in plan.array_ops())
    assert all(u["analog"] <= 2 for u in usage)
    assert plan.placement.traffic_byte_hops >= 0 and plan.placement.traffic_bytes > 0
    # consecutive layers are on the same or neighbouring cores: at most a few hops each
    assert plan.placement.traffic_byte_hops <= 3 * plan.placement.traffic_bytes


def test_schedule_critical_path_and_modes():
    x = torch.randn(3, 64)
    p = cimflow.compile(_mlp(), "ideal", x, replicate=False)
    lbl = cimflow.compile(_mlp(), "ideal", x, mode="layer_by_layer")
    s = p.schedule
    assert s.layer_by_layer_s == pytest.approx(sum(o.latency_s for o in p.ops))
    assert s.critical_path_s == pytest.approx(s.layer_by_layer_s)  # a chain: every op is on the path
    assert s.pipelined_interval_s == pytest.approx(max(o.latency_s for o in p.ops))
    assert {"0", "2", "4"} <= set(s.critical_path)
    assert lbl.schedule.throughput_per_s == pytest.approx(1 / lbl.schedule.layer_by_layer_s)
    with pytest.raises(CompileError, match="schedule mode"):
        cimflow.compile(_mlp(), "ideal", x, mode="warp")


def test_plan_json_round_trip(tmp_path):
    plan = cimflow.compile(Attention(), "hybrid-rram-sram-28nm", torch.randn(2, 16, 32))
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()
    assert json.loads(path.read_text())["schema_version"] == 1
    data = plan.to_dict()
    data["schema_version"] = 99
    with pytest.raises(CompileError, match="schema version 99"):
        Plan.from_dict(data)
    with pytest.raises(CompileError, match="must be JSON"):
        Plan.from_json("not json")


def test_a_plan_file_with_an_array_op_but_no_array_kind_or_tiles_is_refused():
    plan = cimflow.compile(nn.Sequential(nn.Linear(8, 4)), "hybrid-rram-sram-28nm", torch.randn(1, 8))
    assert [o.placed_kind() for o in plan.array_ops()] == [o.array_kind for o in plan.array_ops()]
    for key in ("array_kind", "tiles"):
        data = plan.to_dict()
        array_op = next(o for o in data["ops"] if o["substrate"] == ARRAY)
        array_op[key] = None
        with pytest.raises(CompileError, match="on arrays but names no array_kind or tiles"):
            Plan.from_dict(data)
    host_op = next(o for o in plan.ops if o.substrate != ARRAY)
    with pytest.raises(CompileError, match="is not on an array"):
        host_op.placed_kind()


def test_graph_json_must_be_an_object():
    from cimflow.compile.graph import Graph

    with pytest.raises(CompileError, match="must be an object"):
        Graph.from_json("[1, 2]")


def test_simulate_plan_equals_convert_on_same_seed():
    chip = chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [0.03]},
                                 "arrays.analog.device.read_noise": 0.01, "arrays.analog.adc.bits": 7})
    torch.manual_seed(0)
    model = _mlp()
    x = torch.randn(8, 64)
    plan = cimflow.compile(model, chip, x, rules={"2": "digital"})
    a = cimflow.simulate(plan, model, seed=3, t="1h")
    b = cimflow.drift(cimflow.program(cimflow.convert(model, chip, overrides={"2": "digital"}), seed=3), "1h")
    assert torch.equal(a(x), b(x))
    assert a[2].array_kind == "digital" and a[0].array_kind == "analog"


def test_sensitivity_partition_moves_the_most_sensitive_layer_first():
    torch.manual_seed(0)
    model = _mlp()
    with torch.no_grad():  # one huge weight per column: the rest sit in the noise of layer 2
        model[2].weight[:, 0] = 50.0
    chip = chip_with("ideal", **{"arrays.analog.device.programming_noise": {"coefficients": [0.02]}, "arrays.analog.adc.bits": 8})
    x = torch.randn(64, 64)
    result = cimflow.partition_by_sensitivity(model, chip, x, budget=0.05)
    assert max(result.sensitivity, key=result.sensitivity.get) == "2"
    assert result.moved[0] == "2"
    assert result.met and result.history[-1] <= 0.05 < result.history[0]
    plan = cimflow.compile(model, chip, x, rules=result.rules)
    assert plan.op("2").array_kind == "digital" and result.digital_arrays >= 1


def test_the_digital_unit_is_one_pipeline_stage_shared_by_its_ops():
    import torch
    from torch import nn

    import cimflow

    # one small matmul, then eight element-wise ops that all run on the one digital unit
    model = nn.Sequential(nn.Linear(8, 8), *[nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.ReLU()] * 2)
    plan = cimflow.compile(model, "hybrid-rram-sram-28nm", torch.zeros(4096, 8))
    unit = [o.latency_s for o in plan.ops if o.substrate == "digital_unit"]
    arrays = [o.latency_s for o in plan.ops if o.substrate == "array"]
    assert len(unit) == 8 and sum(unit) > max(arrays) > max(unit)
    # before: the interval was the slowest single op (the matmul); the unit's ops add up instead
    assert plan.schedule.pipelined_interval_s == pytest.approx(sum(unit))
    assert plan.schedule.bottleneck == "digital unit (all its ops)"
