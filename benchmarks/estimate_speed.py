"""Speed of the cost model: operator-estimates per second, and one full DLRM-v2 plan.

1. Operator-estimates per second: ``cimflow.cost.estimate.estimate`` on a compiled 48-layer MLP
   (pcm-hermes-like), fixed and with per-layer statistics; ops counted are the plan's
   operators other than graph inputs/outputs. Target: >= 10,000 per second.
2. MLPerf DLRM-v2 (26 embedding bags of the MLPerf table sizes, 204M rows, dim 128, multi-hot,
   DCNv2 cross layers, bottom and top MLPs), captured from the meta-device model at batch 4
   and compiled onto hybrid-rram-sram-28nm scaled up in cores: (a) 256 cores with the
   embedding bags on the host, (b) 8,192 cores with the tables in RRAM. Target: one estimate
   <= 1 s.

Run: .venv/bin/python benchmarks/estimate_speed.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import cimflow
from cimflow.chip import chip_from_dict, load_preset
from cimflow.compile.capture import capture
from cimflow.compile.pipeline import compile_graph
from cimflow.cost.estimate import estimate
from cimflow.cost.report_types import format_energy, format_time

OPS_TARGET = 10_000
DLRM_TARGET_S = 1.0


def scaled_hybrid(cores: int):
    data = load_preset("hybrid-rram-sram-28nm").model_dump(mode="json", exclude_none=True)
    data["cores"]["count"] = cores
    return chip_from_dict(data, f"hybrid-rram-sram-28nm x{cores} cores")


def ops_per_second() -> None:
    layers: list[nn.Module] = []
    for _ in range(24):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    model = nn.Sequential(*layers)
    plan = cimflow.compile(model, "pcm-hermes-like", torch.randn(16, 256))
    n_ops = sum(1 for o in plan.ops if o.kind not in ("input", "output"))
    stats = {o.module: {"input_density": 0.5, "input_elements": 1000} for o in plan.array_ops()}
    for label, st in (("fixed", None), ("with statistics", stats)):
        estimate(plan, st)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            estimate(plan, st)
            calls += 1
        elapsed = time.perf_counter() - start
        rate = calls * n_ops / elapsed
        print(f"operator-estimates per second ({label}, {n_ops} ops per plan): {rate:,.0f} "
              f"(target >= {OPS_TARGET:,}: {rate / OPS_TARGET:.1f}x) {'OK' if rate >= OPS_TARGET else 'MISSED'}")


def dlrm_v2_graph():
    from cimflow.recsys.models import DLRM, mlperf_dlrm_v2

    config = mlperf_dlrm_v2()
    model = DLRM(config, device="meta")
    batch = 4
    torch.manual_seed(0)
    sparse = [(torch.randint(0, rows, (batch * pf,)), torch.arange(0, batch * pf + 1, pf))
              for rows, pf in zip(config.table_sizes, config.pooling_factors, strict=True)]
    return capture(model, (torch.randn(batch, config.dense_features), sparse))


def dlrm_v2() -> None:
    start = time.perf_counter()
    graph = dlrm_v2_graph()
    print(f"DLRM-v2 captured in {time.perf_counter() - start:.2f} s: {len(graph.ops)} ops")
    cases = (
        ("256 cores, embedding bags on the host", scaled_hybrid(256), {"type:EmbeddingBag": "host"}),
        ("8,192 cores, tables in RRAM", scaled_hybrid(8192), None),
    )
    for label, chip, rules in cases:
        start = time.perf_counter()
        plan = compile_graph(graph, chip, rules=rules, model_name="DLRM-v2")
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(5):
            start = time.perf_counter()
            report = estimate(plan)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        print(f"DLRM-v2 on {label}: compiled in {compile_s:.2f} s; estimate {t * 1e3:.2f} ms "
              f"(target <= {DLRM_TARGET_S:g} s: {DLRM_TARGET_S / t:,.0f}x margin) {'OK' if t <= DLRM_TARGET_S else 'MISSED'}")
        print(f"    {format_energy(report.energy_j)} per inference of {report.batch_size} queries, latency "
              f"{format_time(report.latency_s)}, {report.qps:.3g} QPS, {report.qps_per_w:.3g} QPS/W, "
              f"{report.tops_per_w:.3g} TOPS/W, chip {report.area_mm2:,.0f} mm²")


def main() -> None:
    torch.set_num_threads(1)
    ops_per_second()
    dlrm_v2()


if __name__ == "__main__":
    main()
