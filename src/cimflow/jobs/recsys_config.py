"""``cimflow recsys``: a user's recommendation configuration on one or several chips.

Table sizes, embedding width, pooling, access skew (or a recorded access trace), chip, chip
count and batch go in. Steps:

1. a DLRM of that shape is built on the ``meta`` device (nothing allocated: the MLPerf
   DLRM-v2 shape with 204M rows works) and captured;
2. two independent access samples of ``sample_queries`` queries each are drawn (Zipf-skewed
   synthetic generator, or the two halves of a trace): one places rows, the other
   measures hit fractions (held out), so neither depends on ``batch``;
3. the dense part (MLPs) is sized; the tables are sharded over the fewest chips that hold
   them and the dense part (or ``chips``), table-, row- or column-wise
   (:mod:`cimflow.compile.sharding`);
4. on every chip the shards' rows are placed hottest first into the SRAM macros the MLPs
   leave free, then the RRAM arrays, then DRAM (one ledger per memory);
5. the model is compiled on the union of the chips with the rows each table keeps in arrays
   (the SRAM holding hot rows reserved), estimated with the held-out tier statistics, and
   the system model (:mod:`cimflow.cost.system`) bounds QPS by every resource crossed;
6. the CPU reference: the named host preset's roofline for the same shapes (and, with
   ``cpu="measured"``, a plain-PyTorch measurement on this machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import cimflow
from cimflow.compile.partition import assign_substrates
from cimflow.compile.pipeline import compile_graph
from cimflow.compile.plan import ARRAY
from cimflow.compile.sharding import STRATEGIES, ShardingPlan, TableShape, plan_sharding, scale_chip
from cimflow.compile.tiers import (
    ARRAYS,
    DRAM,
    PIM,
    SRAM,
    TIERS,
    TablePlacement,
    count_accesses,
    dram_access_bytes,
    measure_held_out,
    pim_traffic,
    place_tables,
    tier_capacities_rows,
)
from cimflow.cost.system import ChipTraffic, system_model
from cimflow.errors import CimflowError
from cimflow.mapping.tiling import expected_lookup_reads

SHAPES = ("custom", "criteo-kaggle", "dlrm-v2")
CPU_MODES = ("roofline", "measured")
#: bytes per index sent over the host link (int32 indices, as FBGEMM's TBE accepts) and per offset
INDEX_BYTES = 4
OFFSET_BYTES = 4
#: bytes per value of a pooled vector or activation sent between chips (FP16/BF16)
LINK_VALUE_BYTES = 2
#: limits on what one configuration may ask for (bounded work and memory)
MAX_TABLES, MAX_ROWS, MAX_DIM, MAX_POOLING = 10_000, 10**12, 4096, 10_000
MAX_SAMPLE_LOOKUPS = 50_000_000


@dataclass
class RecsysConfig:
    shape: str = "custom"
    tables: tuple[int, ...] = (1_000_000,) * 8
    dim: int = 64
    pooling: int = 4
    skew: float = 1.05
    chip: Any = "hybrid-rram-sram-28nm"  # preset name, YAML path or Chip
    batch: int = 256
    sample_queries: int = 4096
    host: str = "server-cpu-2s"
    seed: int = 0
    chips: int | None = None
    sharding: str = "auto"
    trace: Path | None = None
    cpu: str = "roofline"
    cpu_threads: int = 2
    quiet: bool = False
    notes: list[str] = field(default_factory=list)
    # mapping choices (cimflow explore): extra placement rules, replication of bottleneck ops, and the
    # share of the SRAM the dense part leaves that hot embedding rows may take (the rest stays spare)
    rules: dict[str, str] = field(default_factory=dict)
    replicate: bool = True
    hot_tier_fraction: float = 1.0


def check_config(cfg: RecsysConfig) -> None:
    """Bounds on every knob, with one line naming what is wrong and what is allowed."""
    if cfg.shape not in SHAPES:
        raise CimflowError(f"--shape {cfg.shape!r} is not one of {', '.join(SHAPES)}")
    if cfg.shape == "custom" and cfg.trace is None:
        if not cfg.tables or len(cfg.tables) > MAX_TABLES or min(cfg.tables) < 1 or max(cfg.tables) > MAX_ROWS:
            raise CimflowError(f"--tables: give 1 to {MAX_TABLES:,} row counts between 1 and {MAX_ROWS:.0e}, e.g. --tables 1000000,500000")
        if not 1 <= cfg.pooling <= MAX_POOLING:
            raise CimflowError(f"--pooling must be between 1 and {MAX_POOLING:,} lookups per table and query, got {cfg.pooling}")
    if not 1 <= cfg.dim <= MAX_DIM:
        raise CimflowError(f"--dim must be between 1 and {MAX_DIM}, got {cfg.dim}")
    if not (math.isfinite(cfg.skew) and 0 <= cfg.skew <= 5):
        raise CimflowError(f"--skew (Zipf exponent) must be a number between 0 (uniform) and 5, got {cfg.skew}")
    if not 1 <= cfg.batch <= 1 << 20:
        raise CimflowError(f"--batch must be between 1 and {1 << 20}, got {cfg.batch}")
    if not 16 <= cfg.sample_queries <= 1 << 20:
        raise CimflowError(f"--sample-queries must be between 16 and {1 << 20}, got {cfg.sample_queries}")
    if cfg.sharding not in STRATEGIES:
        raise CimflowError(f"--sharding {cfg.sharding!r} is not one of {', '.join(STRATEGIES)}")
    if cfg.cpu not in CPU_MODES:
        raise CimflowError(f"--cpu {cfg.cpu!r} is not one of {', '.join(CPU_MODES)}")
    if not (math.isfinite(cfg.hot_tier_fraction) and 0 <= cfg.hot_tier_fraction <= 1):
        raise CimflowError(f"hot_tier_fraction must be between 0 and 1, got {cfg.hot_tier_fraction}")
    if cfg.chips is not None and not 1 <= cfg.chips <= 4096:
        raise CimflowError(f"--chips must be between 1 and 4096, got {cfg.chips}")


def _model_config(cfg: RecsysConfig, trace: Any = None):
    from cimflow.recsys.models import DLRMConfig, criteo_kaggle, mlperf_dlrm_v2

    if cfg.shape == "criteo-kaggle":
        return criteo_kaggle()
    if cfg.shape == "dlrm-v2":
        return mlperf_dlrm_v2()
    if trace is not None:
        sizes = tuple(int(s) for s in trace.effective_table_sizes())
        pools = tuple(max(1, round(p)) for p in trace.pooling_factors())
        return DLRMConfig(dense_features=13, table_sizes=sizes, embedding_dim=cfg.dim, bottom_mlp=(512, 256, cfg.dim),
                          top_mlp=(512, 256, 1), pooling_factors=pools)
    return DLRMConfig(dense_features=13, table_sizes=tuple(cfg.tables), embedding_dim=cfg.dim, bottom_mlp=(512, 256, cfg.dim),
                      top_mlp=(512, 256, 1), pooling_factors=(cfg.pooling,) * len(cfg.tables))


@dataclass
class _Samples:
    """Per table: lookups of the placement sample and of the held-out sample, and queries in each."""

    place: list[torch.Tensor]
    held: list[torch.Tensor]
    queries: int
    law_alpha: list[float | None]


def _samples(cfg: RecsysConfig, mcfg: Any, pools: tuple[int, ...], trace: Any) -> _Samples:
    if trace is not None:
        bsz, half = trace.batch_size, trace.batch_size // 2
        if half < 1:
            raise CimflowError("the access trace needs at least 2 samples (one to place rows, one held out)")
        place, held = [], []
        for t in range(len(trace.keys)):  # table t's bags are offsets[t*B : (t+1)*B + 1] (KJT / TBE layout)
            start, cut, stop = (int(trace.offsets[t * bsz + i]) for i in (0, half, bsz))
            place.append(trace.indices[start:cut])
            held.append(trace.indices[cut:stop])
        return _Samples(place, held, min(half, bsz - half), [None] * len(trace.keys))
    from cimflow.recsys.synthetic import SyntheticCriteo

    lookups = cfg.sample_queries * sum(pools)
    if 2 * lookups > MAX_SAMPLE_LOOKUPS:
        raise CimflowError(f"{cfg.sample_queries:,} sample queries x {sum(pools):,} lookups per query is more than "
                           f"{MAX_SAMPLE_LOOKUPS // 2:,} lookups per sample: lower --sample-queries or --pooling")
    data = SyntheticCriteo(table_sizes=mcfg.table_sizes, pooling_factors=pools, alpha=cfg.skew,
                           dense_features=mcfg.dense_features, seed=cfg.seed)
    chunk = 1024
    samples = []
    for first in (0, 1 << 30):  # two disjoint ranges of batch numbers: independent draws
        per_table: list[list[torch.Tensor]] = [[] for _ in mcfg.table_sizes]
        done = 0
        while done < cfg.sample_queries:
            size = min(chunk, cfg.sample_queries - done)
            _, jagged, _ = data.batch(size, first + done // chunk)
            for t, (values, _) in enumerate(jagged.per_feature()):
                per_table[t].append(values)
            done += size
        samples.append([torch.cat(v) for v in per_table])
    return _Samples(samples[0], samples[1], cfg.sample_queries, [cfg.skew] * len(mcfg.table_sizes))


def _dense_footprint(graph: Any, chip: Any) -> dict[str, int]:
    """Arrays per kind the model's non-embedding array ops need (one copy, no replicas)."""
    tables = {op.name: "host" for op in graph.ops if op.op_type in ("Embedding", "EmbeddingBag")}
    plans = assign_substrates(graph, chip, tables)
    need: dict[str, int] = {}
    for p in plans:
        if p.substrate == ARRAY:
            need[p.placed_kind()] = need.get(p.placed_kind(), 0) + p.arrays
    return need


def _rows_per_array(chip: Any, dim: int) -> int:
    emb = chip.array(chip.embedding_kind)
    return emb.rows * max(1, emb.weight_columns // dim) if dim <= emb.weight_columns else emb.rows // -(-dim // emb.weight_columns)


def _chip_capacities(chip: Any, dim: int, dense_per_chip: dict[str, int], tables_here: int,
                     hot_fraction: float = 1.0) -> dict[str, int]:
    """Rows of width ``dim`` one chip's tiers hold for tables: ``hot_fraction`` of the SRAM macros
    the dense part leaves, the embedding arrays less one per table for rounding, and DRAM."""
    caps = tier_capacities_rows(chip, dim)
    if chip.roles.digital is not None:
        dig = chip.arrays[chip.roles.digital]
        spare = chip.arrays_on_chip(chip.roles.digital) - dense_per_chip.get(chip.roles.digital, 0)
        caps[SRAM] = int(max(spare, 0) * hot_fraction) * dig.rows * dig.cols // (dim * (dig.weight_bits or 8))
    emb_kind = chip.embedding_kind
    if chip.array(emb_kind).kind == "analog":
        spare = chip.arrays_on_chip(emb_kind) - dense_per_chip.get(emb_kind, 0) - tables_here
        caps[ARRAYS] = max(spare, 0) * _rows_per_array(chip, dim)
    return caps


def _restrict(indices: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    keep = (indices >= start) & (indices < stop)
    return indices[keep] - start


def run_recsys_config(cfg: RecsysConfig, console: Console | None = None) -> dict[str, Any]:
    """Run one configuration; returns the result dict (see ``cimflow recsys --help`` for its keys)."""
    from cimflow.compile.capture import capture
    from cimflow.cost import estimate
    from cimflow.recsys.models import DLRM

    check_config(cfg)
    console = console or Console()
    chip = cimflow.load_chip(cfg.chip)
    trace = None
    if cfg.trace is not None:
        from cimflow.recsys.traces import load_trace

        trace = load_trace(cfg.trace)
    mcfg = _model_config(cfg, trace)
    pools = tuple(int(p) for p in (mcfg.pooling_factors or (1,) * len(mcfg.table_sizes)))
    dim = mcfg.embedding_dim
    names = [f"embeddings.{t}" for t in range(len(mcfg.table_sizes))]
    model = DLRM(mcfg, device="meta")
    b = cfg.batch
    dense = torch.zeros(b, mcfg.dense_features, device="meta")
    sparse = [(torch.zeros(b * p, dtype=torch.long, device="meta"), torch.arange(0, b * p + 1, p, device="meta")) for p in pools]
    graph = capture(model, (dense, sparse))
    samples = _samples(cfg, mcfg, pools, trace)
    # measured lookups per query from the held-out sample (a trace's bags vary)
    held_pool = {n: samples.held[t].numel() / samples.queries for t, n in enumerate(names)}

    # dense part: how many chips its weights need, and what it takes from each chip
    need = _dense_footprint(graph, chip)
    dense_chips = max([1] + [math.ceil(n / max(chip.arrays_on_chip(k), 1)) for k, n in need.items()])
    dense_per_chip = {k: math.ceil(n / dense_chips) for k, n in need.items()}
    tables = [TableShape(n, int(r), dim, held_pool[n]) for n, r in zip(names, mcfg.table_sizes, strict=True)]
    sharding = plan_sharding(tables, lambda d: sum(_chip_capacities(chip, d, dense_per_chip, len(tables), cfg.hot_tier_fraction).values()),
                             chips=cfg.chips, strategy=cfg.sharding, dense_chips=dense_chips)
    n_chips = sharding.chips

    # per chip: place its shards' rows over its tiers; hits measured on the held-out sample
    shard_place: dict[tuple[str, int], TablePlacement] = {}
    shard_lookups: dict[tuple[str, int], float] = {}
    index_of = {n: t for t, n in enumerate(names)}
    for c in range(n_chips):
        shards = sharding.on_chip(c)
        if not shards:
            continue
        sdim = shards[0].dim
        caps = _chip_capacities(chip, sdim, dense_per_chip, len(shards), cfg.hot_tier_fraction)
        accesses, held = [], []
        for s in shards:
            t = index_of[s.table]
            accesses.append(count_accesses(f"{s.table}@{c}", s.rows, s.dim, [_restrict(samples.place[t], s.row_start, s.row_stop)]))
            held.append(_restrict(samples.held[t], s.row_start, s.row_stop))
        placed = place_tables(accesses, chip, capacities=caps)
        measure_held_out(placed, held)
        for s, p, h in zip(shards, placed, held, strict=True):
            shard_place[(s.table, c)] = p
            shard_lookups[(s.table, c)] = h.numel() / samples.queries

    # the plan on the union of the chips: rows in arrays per table, hot-row SRAM reserved
    sram_kind = chip.roles.digital
    sram = chip.arrays[sram_kind] if sram_kind else None
    hot_macros = [0] * n_chips
    for c in range(n_chips):
        bits = sum(shard_place[(s.table, c)].placement.get(SRAM, 0) * s.dim * (sram.weight_bits or 8)
                   for s in sharding.on_chip(c)) if sram is not None else 0
        hot_macros[c] = -(-bits // (sram.rows * sram.cols)) if sram is not None else 0
    table_rows: dict[str, int] = {}
    for n in names:
        shards = sharding.of_table(n)
        if sharding.strategy(n) == "column_wise":
            table_rows[n] = shard_place[(n, shards[0].chip)].placement.get(ARRAYS, 0)
        else:
            table_rows[n] = sum(shard_place[(n, s.chip)].placement.get(ARRAYS, 0) for s in shards)
    on_unit = [n for n, r in table_rows.items() if r == 0]
    rules = {**cfg.rules, **{n: "digital_unit" for n in on_unit}}
    system_chip = scale_chip(chip, n_chips)
    reserved = {sram_kind: sum(hot_macros)} if sram_kind and sum(hot_macros) else None
    plan = compile_graph(graph, system_chip, rules=rules, table_rows=table_rows, reserved=reserved, replicate=cfg.replicate,
                         model_name=f"DLRM ({cfg.shape})")

    # tier statistics per table (held out) for the estimate
    stats: dict[str, dict[str, float]] = {}
    tiers_out: list[dict[str, Any]] = []
    for n in names:
        shards = sharding.of_table(n)
        col = sharding.strategy(n) == "column_wise"
        parts = [(shard_place[(n, s.chip)], shard_lookups[(n, s.chip)]) for s in (shards[:1] if col else shards)]
        per_query = sum(q for _, q in parts)
        tier_q = {t: sum(p.hit_fraction.get(t, 0.0) * q for p, q in parts) for t in TIERS}
        placed_rows = {t: sum(p.placement.get(t, 0) for p, _ in parts) for t in TIERS}
        hits = {t: (tier_q[t] / per_query if per_query else 0.0) for t in TIERS}
        entry = {"table": n, "rows": int(mcfg.table_sizes[index_of[n]]), "dim": dim, "sharding": sharding.strategy(n),
                 "chips": sorted({s.chip for s in shards}), "placement": placed_rows, "hit_fraction": hits,
                 "hit_fraction_measured_on": "held-out sample", "lookups_per_query": per_query,
                 "runs_on": "digital unit (no rows in arrays)" if n in on_unit else "arrays"}
        if len(shards) == 1:
            entry["access_law"] = _law_fractions(samples, index_of[n], shard_place[(n, shards[0].chip)], cfg.seed)
        tiers_out.append(entry)
        op = next((o for o in plan.ops if o.module == n), None)
        if op is None:
            continue
        lookups = b * per_query
        f_sram, f_dram, f_pim = hits[SRAM], hits[DRAM], hits[PIM]
        op_stats = {"bags": b, "lookups": lookups, "hot_lookups": lookups * f_sram, "dram_lookups": lookups * f_dram}
        if f_pim > 0:
            op_stats["pim_lookups"] = lookups * f_pim
        if op.tiles is not None:
            op_stats["reads"] = b * expected_lookup_reads(per_query * max(1 - f_sram - f_dram - f_pim, 0.0),
                                                          op.tiles.row_tiles * op.tiles.segments, op.tiles.group_rows)
        stats[op.name] = op_stats
    cost = estimate(plan, stats=stats, host=cfg.host, batch_size=b)
    traffic = _traffic(chip, mcfg, sharding, shard_place, shard_lookups, on_unit, dense_chips)
    system = system_model(cost, plan, traffic, chip=chip, pooling_in_traffic=True)

    cpu = _cpu_reference(cfg, graph, mcfg)
    ratio_base = cpu["measured"] if cfg.cpu == "measured" and cpu.get("measured") else cpu["roofline"]
    ratios = {"against": ratio_base["label"], "qps": system.qps / ratio_base["qps"],
              "qps_per_w": system.qps_per_w / ratio_base["qps_per_w"]}
    result = {
        "qps": system.qps, "qps_per_w": system.qps_per_w, "qps_per_chip": system.qps_per_chip, "chips": n_chips,
        "bound_by": system.bound_by, "utilization": system.utilization,
        "tiers": tiers_out,
        "config": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else chip.name if k == "chip" else v)
                   for k, v in cfg.__dict__.items() if k not in ("notes", "quiet")},
        "workload": {"shape": cfg.shape, "tables": len(names), "total_rows": int(sum(mcfg.table_sizes)), "dim": dim,
                     "lookups_per_query": sum(held_pool.values()), "skew": None if trace is not None else cfg.skew,
                     "access": f"trace {cfg.trace}" if trace is not None else f"synthetic Zipf, exponent {cfg.skew:g}",
                     "sample_queries": samples.queries},
        "sharding": sharding.to_dict(),
        "system": system.to_dict(),
        "cost": cost.to_dict(),
        "cpu": cpu,
        "ratios": ratios,
        "notes": list(cfg.notes) + system.notes + ([f"{len(on_unit)} tables have no rows in arrays and pool on the digital unit "
                                                     f"from their SRAM, PIM and DRAM tiers: {', '.join(on_unit[:8])}"
                                                     f"{' ...' if len(on_unit) > 8 else ''}"]
                                                    if on_unit else []),
    }
    if not cfg.quiet:
        print_recsys_result(result, console)
    return result


def _law_fractions(samples: _Samples, t: int, placement: TablePlacement, seed: int) -> dict[str, Any]:
    """Hit fractions the access law expects of this placement procedure: a fresh placement
    sample of the same size is drawn from the law (Zipf, exponent given or fitted), its rows
    ranked by count, the tiers filled with as many seen rows as the real placement put there,
    and each tier's expected share summed from the law's probabilities; rows the sample never
    saw share the law's unseen mass in proportion to the unseen rows each tier holds."""
    from cimflow.recsys.synthetic import fit_zipf_alpha, generalized_harmonic, sample_zipf_ranks

    rows = placement.rows
    alpha = samples.law_alpha[t]
    how = "given"
    if alpha is None:
        _, counts = torch.unique(samples.place[t], return_counts=True)
        alpha, how = fit_zipf_alpha(counts.numpy(), rows), "fitted to the placement sample"
    rng = np.random.default_rng(np.random.SeedSequence([seed, t, 7]))
    ranks, counts = np.unique(sample_zipf_ranks(rows, alpha, int(samples.place[t].numel()), rng), return_counts=True)
    order = ranks[np.lexsort((rng.random(ranks.size), -counts))]
    prob = (order + 1.0) ** -alpha / generalized_harmonic(rows, alpha)
    seen = {tier: int(placement.seen_rows[tier].numel()) if tier in placement.seen_rows else 0 for tier in TIERS}
    expected, start = {}, 0
    for tier in TIERS:
        n = min(seen[tier], order.size - start)
        expected[tier] = float(prob[start : start + n].sum())
        start += n
    unseen_mass = max(1.0 - float(prob.sum()), 0.0)
    unseen = {tier: max(placement.placement.get(tier, 0) - seen[tier], 0) for tier in TIERS}
    total_unseen = sum(unseen.values()) + max(order.size - start, 0)
    for tier in TIERS:
        if total_unseen:
            expected[tier] += unseen_mass * unseen[tier] / total_unseen
    norm = sum(expected.values()) or 1.0
    return {"alpha": alpha, "alpha_source": how, "hit_fraction": {x: v / norm for x, v in expected.items()}}


def _traffic(chip: Any, mcfg: Any, sharding: ShardingPlan, shard_place: dict, shard_lookups: dict, on_unit: list[str],
             dense_chips: int) -> list[ChipTraffic]:
    """Per chip and query: host-link bytes, tier lookups, pooling ops and chip-link bytes."""
    n = sharding.chips
    sram = chip.arrays[chip.roles.digital] if chip.roles.digital else None
    dense_in = mcfg.dense_features * 4 / n  # fp32 dense features, queries spread over the chips
    out = 4.0 / n  # one fp32 score per query
    sends = [0.0] * n
    rows = []
    for c in range(n):
        sram_q = dram_q = pool = idx = 0.0
        pim_q = pim_in = pim_ops = pim_out = 0.0
        sdim, dram_b, macros = mcfg.embedding_dim, 0.0, 0
        hot_bits = 0
        for s in sharding.on_chip(c):
            p, q = shard_place[(s.table, c)], shard_lookups[(s.table, c)]
            sdim = s.dim
            sq, dq = q * p.hit_fraction.get(SRAM, 0.0), q * p.hit_fraction.get(DRAM, 0.0)
            sram_q += sq
            dram_q += dq
            pt = pim_traffic(chip, s.dim, q, p.hit_fraction.get(PIM, 0.0))
            pim_q, pim_in, pim_ops, pim_out = pim_q + pt.lookups, pim_in + pt.internal_bytes, pim_ops + pt.ops, pim_out + pt.external_bytes
            pool += (sq + dq + pt.vectors) * s.dim  # every table, those pooling on the unit included
            idx += q * INDEX_BYTES + OFFSET_BYTES
            dram_b = dram_access_bytes(chip, s.dim)
            hot_bits += p.placement.get(SRAM, 0) * s.dim * ((sram.weight_bits or 8) if sram is not None else 8)
            if n > 1:  # the pooled (partial) vector goes to the chip running this query's MLPs
                sends[c] += s.dim * LINK_VALUE_BYTES * (n - 1) / n
        if sram is not None:
            macros = -(-hot_bits // (sram.rows * sram.cols))
        rows.append(dict(host_in_bytes=dense_in + idx, host_out_bytes=out, sram_lookups=sram_q,
                         sram_row_bytes=sdim * ((sram.weight_bits or 8) if sram is not None else 8) / 8, sram_macros=macros,
                         dram_lookups=dram_q, dram_bytes_per_lookup=float(dram_b), pool_ops=pool, pim_lookups=pim_q,
                         pim_internal_bytes=pim_in, pim_ops=pim_ops, pim_external_bytes=pim_out))
    # activations between the chips of one dense pipeline (the MLPs split over dense_chips)
    cut = 0.0
    if dense_chips > 1:
        widths = list(mcfg.bottom_mlp) + list(mcfg.top_mlp)
        cut = sum(sorted(widths, reverse=True)[: dense_chips - 1]) * LINK_VALUE_BYTES / n
    total_sent = sum(sends)
    return [ChipTraffic(**r, link_out_bytes=sends[c] + cut, link_in_bytes=total_sent / n + cut) if n > 1 else ChipTraffic(**r)
            for c, r in enumerate(rows)]


def _cpu_reference(cfg: RecsysConfig, graph: Any, mcfg: Any) -> dict[str, Any]:
    from cimflow.cost.host import resolve_host, roofline

    host = resolve_host(cfg.host)
    roof = roofline(graph, host, batch_size=cfg.batch)
    result: dict[str, Any] = {"roofline": {"label": f"{host.name} roofline", "host": host.name, "qps": cfg.batch / roof.latency_s,
                                           "qps_per_w": cfg.batch / roof.energy_j, "power_w": host.power_w,
                                           "power_source": f"preset {host.name}: {host.power_w:g} W",
                                           "latency_s": roof.latency_s, "batch": cfg.batch}}
    if cfg.cpu == "measured":
        result["measured"] = measure_cpu(mcfg, cfg.skew, (cfg.batch,), cfg.cpu_threads, cfg.seed, cfg.batch)
    return result


def measure_cpu(mcfg: Any, skew: float, batch_sizes: tuple[int, ...], threads: int, seed: int, batch: int,
                power_w: float | None = None) -> dict[str, Any]:
    """The measured plain-PyTorch baseline of this shape (:func:`cimflow.recsys.baseline.measure_dlrm_cpu`),
    summarized at ``batch`` in the shape the ratios read (the full measurement under ``details``).
    Without RAPL or ``power_w`` the power is the default host preset's TDP x the threads' share of its cores."""
    from cimflow.cost.host import DEFAULT_HOST, resolve_host
    from cimflow.recsys.baseline import measure_dlrm_cpu

    preset = resolve_host(DEFAULT_HOST)
    measured = measure_dlrm_cpu(mcfg, skew=skew, batch_sizes=batch_sizes, threads=threads, seed=seed, power_w=power_w,
                                preset_power_w=preset.power_w * min(threads, preset.cores) / preset.cores)
    m = measured.per_batch[batch]
    return {"label": "measured on this CPU", "qps": m.qps_median, "qps_min": m.qps_min, "qps_max": m.qps_max, "spread": m.spread,
            "qps_per_w": m.qps_per_w, "power_w": m.power_w, "power_source": measured.power_source, "batch": batch,
            "threads": measured.threads, "cpu": measured.cpu, "describe": measured.describe(batch), "details": measured.to_dict()}


def print_recsys_result(result: dict[str, Any], console: Console) -> None:
    """Terminal tables: tiers per table, resources and utilization, the headline."""
    tiers = Table(title="embedding rows by tier (hit fractions on a held-out sample)")
    for col in ("table", "rows", "sharding", *(f"{t} rows" for t in TIERS), *(f"{t} hits" for t in TIERS)):
        tiers.add_column(col, justify="left" if col in ("table", "sharding") else "right")
    for e in result["tiers"][:30]:
        tiers.add_row(e["table"], f"{e['rows']:,}", f"{e['sharding']} {e['chips'] if len(e['chips']) <= 4 else len(e['chips'])}",
                      *(f"{e['placement'].get(t, 0):,}" for t in TIERS), *(f"{100 * e['hit_fraction'].get(t, 0):.1f} %" for t in TIERS))
    console.print(tiers)
    res = Table(title=f"system resources at {result['qps']:,.0f} QPS ({result['chips']} chip{'s' if result['chips'] > 1 else ''})")
    for col in ("resource", "utilization", "max QPS", "detail"):
        res.add_column(col, justify="left" if col in ("resource", "detail") else "right")
    rs = sorted(result["system"]["resources"], key=lambda r: r["max_qps"] if r["max_qps"] is not None else math.inf)
    for r in rs[:16]:
        mq = r["max_qps"]
        res.add_row(r["name"], f"{100 * result['utilization'][r['name']]:.1f} %", "-" if mq is None else f"{mq:,.0f}", r["detail"])
    console.print(res)
    cpu = result["cpu"]
    line = (f"chip system: {result['qps']:,.0f} QPS ({result['qps_per_chip']:,.0f} per chip), {result['qps_per_w']:,.0f} QPS/W, "
            f"bound by {result['bound_by']} | CPU {cpu['roofline']['label']}: {cpu['roofline']['qps']:,.0f} QPS, "
            f"{cpu['roofline']['qps_per_w']:,.1f} QPS/W")
    if cpu.get("measured"):
        line += f" | CPU measured: {cpu['measured']['qps']:,.0f} QPS, {cpu['measured']['qps_per_w']:,.1f} QPS/W"
    r = result["ratios"]
    console.print(line + f" | ratios vs {r['against']}: {r['qps']:,.1f}x QPS, {r['qps_per_w']:,.1f}x QPS/W")
    for note in result["notes"]:
        console.print(f"note: {note}")


__all__ = ["CPU_MODES", "SHAPES", "RecsysConfig", "check_config", "measure_cpu", "print_recsys_result", "run_recsys_config"]
