"""``cimflow recsys``: a user's recommendation configuration on a chip, analytically.

Table sizes, embedding width, pooling factor, access skew, chip and batch go in; a DLRM of
that shape is built on the ``meta`` device (nothing allocated, so the MLPerf DLRM-v2 shape
with 204M rows works), embedding accesses are sampled from a Zipf-skewed synthetic
generator, rows are placed across the chip's tiers (SRAM / arrays / DRAM) hottest first,
the model is compiled with the rows each table keeps in arrays, and the cost model
estimates energy, latency and QPS; the host preset's roofline gives the CPU reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import cimflow
from cimflow.compile.pipeline import compile_graph
from cimflow.compile.tiers import ARRAYS, DRAM, SRAM, count_accesses, place_tables, tier_capacities_rows
from cimflow.errors import CimflowError

SHAPES = ("custom", "criteo-kaggle", "dlrm-v2")


@dataclass
class RecsysConfig:
    shape: str = "custom"
    tables: tuple[int, ...] = (1_000_000,) * 8
    dim: int = 64
    pooling: int = 4
    skew: float = 1.05
    chip: str = "hybrid-rram-sram-28nm"
    batch: int = 64
    sample_batches: int = 64
    host: str = "server-cpu-2s"
    seed: int = 0


def _model_config(cfg: RecsysConfig):
    from cimflow.recsys.models import DLRMConfig, criteo_kaggle, mlperf_dlrm_v2

    if cfg.shape == "criteo-kaggle":
        return criteo_kaggle()
    if cfg.shape == "dlrm-v2":
        return mlperf_dlrm_v2()
    if cfg.shape != "custom":
        raise CimflowError(f"--shape {cfg.shape!r} is not one of {', '.join(SHAPES)}")
    if not cfg.tables or min(cfg.tables) < 1 or cfg.dim < 1 or cfg.pooling < 1:
        raise CimflowError("tables, dim and pooling must be positive (e.g. --tables 1000000,500000 --dim 64 --pooling 4)")
    return DLRMConfig(dense_features=13, table_sizes=tuple(cfg.tables), embedding_dim=cfg.dim, bottom_mlp=(512, 256, cfg.dim),
                      top_mlp=(512, 256, 1), pooling_factors=(cfg.pooling,) * len(cfg.tables))


def run_recsys_config(cfg: RecsysConfig, console: Console | None = None) -> dict[str, Any]:
    from cimflow.compile.capture import capture
    from cimflow.cost import estimate, print_cost
    from cimflow.cost.estimate import expected_lookup_reads
    from cimflow.cost.host import roofline
    from cimflow.recsys.models import DLRM
    from cimflow.recsys.synthetic import SyntheticCriteo

    console = console or Console()
    chip = cimflow.load_chip(cfg.chip)
    mcfg = _model_config(cfg)
    pools = tuple(mcfg.pooling_factors or (1,) * len(mcfg.table_sizes))
    model = DLRM(mcfg, device="meta")
    dense = torch.zeros(cfg.batch, mcfg.dense_features, device="meta")
    sparse = [(torch.zeros(cfg.batch * p, dtype=torch.long, device="meta"), torch.arange(0, cfg.batch * p + 1, p, device="meta")) for p in pools]
    graph = capture(model, (dense, sparse))
    # measured access frequencies from the synthetic, skewed generator
    data = SyntheticCriteo(table_sizes=mcfg.table_sizes, pooling_factors=pools, alpha=cfg.skew, dense_features=mcfg.dense_features, seed=cfg.seed)
    per_table: list[list[torch.Tensor]] = [[] for _ in mcfg.table_sizes]
    for b in range(cfg.sample_batches):
        _, jagged, _ = data.batch(cfg.batch, b)
        for t, (values, _) in enumerate(jagged.per_feature()):
            per_table[t].append(values)
    names = [f"embeddings.{t}" for t in range(len(mcfg.table_sizes))]
    accesses = [count_accesses(n, rows, mcfg.embedding_dim, idx) for n, rows, idx in zip(names, mcfg.table_sizes, per_table)]
    mlp_plan = compile_graph(graph, chip, rules={"type:EmbeddingBag": "host"}, replicate=False)
    capacities = tier_capacities_rows(chip, mcfg.embedding_dim, mlp_plan)
    # each table rounds its arrays up: keep one array per table spare for that
    emb = chip.array(chip.embedding_kind)
    per_array = emb.rows * max(1, emb.weight_columns // mcfg.embedding_dim)
    capacities[ARRAYS] = max(capacities[ARRAYS] - len(mcfg.table_sizes) * per_array, 0)
    placements = place_tables(accesses, chip, mlp_plan, capacities=capacities)
    table_rows = {p.table: p.placement.get(ARRAYS, 0) for p in placements}
    plan = compile_graph(graph, chip, rules={n: "host" for n, r in table_rows.items() if r == 0}, table_rows=table_rows, model_name=f"DLRM ({cfg.shape})")
    stats = {}
    for p, k in zip(placements, pools):
        op = next((o for o in plan.ops if o.module == p.table), None)
        if op is None or op.tiles is None:
            continue
        lookups = cfg.batch * k
        f_sram, f_dram = p.hit_fraction.get(SRAM, 0.0), p.hit_fraction.get(DRAM, 0.0)
        stats[op.name] = {"bags": cfg.batch, "lookups": lookups, "hot_lookups": lookups * f_sram, "dram_lookups": lookups * f_dram,
                          "reads": cfg.batch * expected_lookup_reads(k * (1 - f_sram - f_dram), op.tiles.row_tiles * op.tiles.segments, op.tiles.group_rows)}
    cost = estimate(plan, stats=stats, host=cfg.host, batch_size=cfg.batch)
    cpu = roofline(graph, cfg.host, batch_size=cfg.batch)
    print_cost(cost, console)
    table = Table(title="embedding rows by tier (hottest first over all tables)")
    for col in ("table", "rows", "sram rows", "array rows", "dram rows", "sram hits", "array hits", "dram hits"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for p in placements:
        table.add_row(p.table, f"{p.rows:,}", *(f"{p.placement.get(t, 0):,}" for t in (SRAM, ARRAYS, DRAM)),
                      *(f"{100 * p.hit_fraction.get(t, 0):.1f} %" for t in (SRAM, ARRAYS, DRAM)))
    console.print(table)
    cpu_qps = cfg.batch / cpu.latency_s if cpu.latency_s > 0 else None
    cpu_qps_w = cfg.batch / cpu.energy_j if cpu.energy_j > 0 else None
    console.print(f"chip: {cost.qps:,.0f} QPS, {cost.qps_per_w:,.0f} QPS/W | host roofline ({cfg.host}): "
                  f"{cpu_qps:,.0f} QPS, {cpu_qps_w:,.0f} QPS/W | ratios {cost.qps / cpu_qps:.1f}x QPS, {cost.qps_per_w / cpu_qps_w:.1f}x QPS/W")
    return {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}, "capacities_rows": capacities,
            "tiers": [p.to_dict() for p in placements], "cost": cost.to_dict(),
            "host_roofline": {"latency_s": cpu.latency_s, "energy_j": cpu.energy_j, "qps": cpu_qps, "qps_per_w": cpu_qps_w},
            "ratios": {"qps": cost.qps / cpu_qps, "qps_per_w": cost.qps_per_w / cpu_qps_w}}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)
