"""cimflow.cost.host: presets, roofline closed forms, RAPL reading, measured mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import cimflow
from cimflow.compile.capture import capture
from cimflow.cost.host import (
    HOST_PRESETS,
    HostSpec,
    RaplMeter,
    host_presets,
    measure_host,
    op_time_s,
    op_work,
    resolve_host,
    roofline,
)
from cimflow.errors import CimflowError


def test_presets_resolve_and_unknown_names_are_refused():
    assert {"server-cpu-2s", "laptop-cpu", "nvidia-a100", "nvidia-h100"} <= set(host_presets())
    assert resolve_host(None).name == "server-cpu-2s"
    for spec in HOST_PRESETS.values():
        assert spec.peak_flops > 0 and spec.memory_bandwidth_bytes_per_s > 0 and spec.power_w > 0 and spec.source
    with pytest.raises(CimflowError, match="unknown host 'tpu'.*laptop-cpu"):
        resolve_host("tpu")
    with pytest.raises(CimflowError, match="power_w"):
        HostSpec("x", "cpu", "", 1e9, 1e9, -1.0, 1, 0.0, 0.0)


def test_roofline_of_a_linear_layer_is_memory_bound_in_closed_form():
    graph = capture(nn.Sequential(nn.Linear(1024, 1024)), torch.randn(1, 1024))
    est = roofline(graph, "server-cpu-2s")
    host = HOST_PRESETS["server-cpu-2s"]
    flops = 2 * 1024 * 1024
    moved = (1024 * 1024 + 1024 + 1024) * 4
    t = max(flops / host.peak_flops, moved / host.memory_bandwidth_bytes_per_s)
    assert t == moved / host.memory_bandwidth_bytes_per_s  # batch 1: weights dominate
    assert est.latency_s == pytest.approx(t)
    assert est.energy_j == pytest.approx(host.power_w * t + 1024 * 1024 * 32 * 20e-12)
    assert est.per_op[0]["bound"] == "memory" and est.batch_size == 1
    assert json.loads(json.dumps(est.to_dict(), allow_nan=False))["host"] == "server-cpu-2s"


def test_big_batches_make_the_roofline_compute_bound():
    graph = capture(nn.Sequential(nn.Linear(1024, 1024)), torch.randn(4096, 1024))
    est = roofline(graph, "nvidia-a100")
    assert est.per_op[0]["bound"] == "compute"
    assert est.latency_s == pytest.approx(2 * 4096 * 1024 * 1024 / 19.5e12)
    assert est.qps == pytest.approx(4096 / est.latency_s)


def test_embedding_rows_are_random_dram_accesses():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(100_000, 16, mode="sum")

        def forward(self, idx, offsets):
            return self.bag(idx, offsets)

    idx, offsets = torch.randint(0, 100_000, (40,)), torch.arange(0, 40, 10)
    graph = capture(Model(), (idx, offsets))
    op = next(o for o in graph.ops if o.op_type == "EmbeddingBag")
    work = op_work(op)
    assert work.dram_activations == 40 and work.dram_bits == 40 * 16 * 32
    assert work.bytes == 40 * 64 + 4 * 16 * 4  # one 64-byte line per 64-byte row, then the pooled output
    assert op_time_s(work, HOST_PRESETS["laptop-cpu"]) == pytest.approx(work.bytes / (4266e6 * 16))


def test_roofline_accepts_a_plan():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    plan = cimflow.compile(model, "pcm-hermes-like", torch.randn(8, 32))
    est = roofline(plan, "laptop-cpu")
    assert est.batch_size == 8 and est.flops == 2 * 8 * (32 * 64 + 64 * 8) + 8 * 64
    with pytest.raises(CimflowError, match="needs a cimflow Graph or Plan"):
        roofline(42)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))


def test_measure_with_user_power(tmp_path):
    m = measure_host(_mlp(), torch.randn(16, 32), repeats=5, threads=1, power_w=12.5, rapl_root=tmp_path)
    assert m.power_source == "user" and "given" in m.power_note
    assert m.qps > 0 and m.batch_size == 16 and m.threads == 1
    assert m.energy_per_inference_j == pytest.approx(12.5 * m.latency_s)
    assert m.qps_per_w == pytest.approx(16 / m.energy_per_inference_j)
    assert m.latency_p90_s >= m.latency_s
    assert json.loads(json.dumps(m.to_dict(), allow_nan=False))["power_source"] == "user"


def test_measure_falls_back_to_the_preset_when_rapl_is_unreadable(tmp_path):
    m = measure_host(_mlp(), (torch.randn(4, 32),), repeats=3, threads=1, host="laptop-cpu", rapl_root=tmp_path / "none")
    assert m.power_source == "preset" and "laptop-cpu" in m.power_note
    assert m.power_w == pytest.approx(28.0 * 1 / 4)  # one of four cores
    assert m.qps > 0 and m.energy_per_inference_j == pytest.approx(m.power_w * m.latency_s)


def _fake_rapl(root: Path, energy_uj: int, max_uj: int = 2**32) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # a sub-zone: must not be added again
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5\n")
    return zone / "energy_uj"


def test_rapl_reader_handles_wrap_and_unreadable_counters(tmp_path):
    counter = _fake_rapl(tmp_path, 1_000, max_uj=10_000)
    reader = RaplMeter(tmp_path)
    assert [z.name for z in reader.zones] == ["intel-rapl:0"]
    before = reader.read()
    counter.write_text("3000\n")
    assert reader.joules_between(before, reader.read()) == pytest.approx(2_000e-6)
    counter.write_text("500\n")  # wrapped past 10,000 uJ
    assert reader.joules_between([9_500], reader.read()) == pytest.approx(1_000e-6)
    counter.write_text("garbage\n")
    assert reader.read() is None
    assert RaplMeter(tmp_path / "missing").read() is None


class _CountingModel(nn.Module):
    """Adds 1 J to a fake RAPL counter on every forward call."""

    def __init__(self, counter: Path) -> None:
        super().__init__()
        self.counter = counter
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        value = int(self.counter.read_text())
        self.counter.write_text(str(value + 1_000_000))
        return self.fc(x)


def test_measure_uses_rapl_when_its_counter_advances(tmp_path):
    counter = _fake_rapl(tmp_path, 0)
    m = measure_host(_CountingModel(counter), torch.randn(2, 8), repeats=4, warmup=2, threads=1, rapl_root=tmp_path)
    assert m.power_source == "rapl" and "RAPL" in m.power_note
    assert m.energy_per_inference_j == pytest.approx(1.0)
    assert m.qps_per_w == pytest.approx(2.0)


def test_measure_refuses_bad_arguments():
    with pytest.raises(CimflowError, match="repeats"):
        measure_host(_mlp(), torch.randn(2, 32), repeats=0)
    with pytest.raises(CimflowError, match="power_w"):
        measure_host(_mlp(), torch.randn(2, 32), power_w=-3.0)
