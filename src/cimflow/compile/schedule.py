"""Per-operator timing, placement of tiles onto cores, and the schedule."""

from __future__ import annotations

import math

from cimflow.chip.spec import Chip
from cimflow.compile.graph import Graph
from cimflow.compile.partition import EMBEDDING_TYPES, lookup_time_s, mvm_time_s
from cimflow.compile.plan import ARRAY, DIGITAL_UNIT, OpPlan, Placement, Schedule


def time_ops(plans: list[OpPlan], graph: Graph, chip: Chip) -> None:
    """Fill ``latency_s`` and ``cycles`` of every op (per inference, one copy)."""
    clock = chip.clock_hz
    unit = chip.digital_unit
    for p, op in zip(plans, graph.ops, strict=True):  # one plan per op
        if p.substrate == ARRAY:
            spec = chip.arrays[p.placed_kind()]
            if op.op_type in EMBEDDING_TYPES:
                lookups = op.macs // max(int(op.weight_shape[1]), 1) if op.weight_shape else op.mvm_count
                p.latency_s = lookup_time_s(spec, p.tiles, op.mvm_count, lookups, clock) / p.replication
            else:
                p.latency_s = op.mvm_count * mvm_time_s(spec, p.tiles, clock) / p.replication
        elif p.substrate == DIGITAL_UNIT:
            work = op.macs if op.macs else int(op.attributes.get("elements", 0) or 0)
            if op.kind.value == "data_movement":
                work = 0
            p.latency_s = math.ceil(work / unit.ops_per_cycle) / clock
        else:
            p.latency_s = 0.0  # the host's time is the cost model's business
        p.cycles = math.ceil(p.latency_s * clock)


def _mesh(cores: int) -> tuple[int, int]:
    rows = int(math.isqrt(cores))
    while cores % rows:
        rows -= 1
    return rows, cores // rows


def _snake(core: int, mesh: tuple[int, int]) -> tuple[int, int]:
    """Mesh coordinates of the ``core``-th core along a boustrophedon path (neighbours on the
    path are neighbours on the mesh)."""
    r, c = divmod(core, mesh[1])
    return r, (c if r % 2 == 0 else mesh[1] - 1 - c)


def place(plans: list[OpPlan], graph: Graph, chip: Chip) -> Placement:
    """Greedy placement: fill cores in topological order along a snake path through the
    mesh, so consecutive layers land on the same or neighbouring cores; report the
    inter-core traffic of one inference (activation bytes x Manhattan hops)."""
    mesh = _mesh(chip.cores.count)
    usage = [dict.fromkeys(chip.cores.arrays, 0) for _ in range(chip.cores.count)]
    cursor = dict.fromkeys(chip.cores.arrays, 0)
    for p in plans:
        if p.substrate != ARRAY:
            continue
        kind = p.placed_kind()
        per_core = chip.cores.arrays[kind]
        left = p.arrays * p.replication
        cores = []
        while left > 0 and cursor[kind] < chip.cores.count:
            core = cursor[kind]
            free = per_core - usage[core][kind]
            take = min(free, left)
            if take > 0:
                usage[core][kind] += take
                cores.append(core)
                left -= take
            if usage[core][kind] >= per_core:
                cursor[kind] += 1
        p.cores = cores
    # traffic: each array op receives its input vectors from its nearest array-op ancestors
    by_name = {p.name: p for p in plans}
    ops = {op.name: op for op in graph.ops}

    def array_sources(name: str, seen: set[str]) -> list[OpPlan]:
        found = []
        for src in ops[name].inputs:
            if src in seen or src not in by_name:
                continue
            seen.add(src)
            if by_name[src].substrate == ARRAY and by_name[src].cores:
                found.append(by_name[src])
            else:
                found += array_sources(src, seen)
        return found

    def centroid(cores: list[int]) -> tuple[float, float]:
        pts = [_snake(c, mesh) for c in cores]
        return sum(r for r, _ in pts) / len(pts), sum(c for _, c in pts) / len(pts)

    byte_hops = total_bytes = 0.0
    for p in plans:
        if p.substrate != ARRAY or not p.cores:
            continue
        spec = chip.arrays[p.placed_kind()]
        vector_bytes = p.tile_grid().in_features * max(spec.input_encoding.bits, 1) / 8.0
        sources = array_sources(p.name, set())
        if not sources:
            continue
        moved = p.mvm_count * vector_bytes
        here = centroid(p.cores)
        hops = sum(abs(here[0] - c[0]) + abs(here[1] - c[1]) for c in (centroid(s.cores) for s in sources)) / len(sources)
        total_bytes += moved
        byte_hops += moved * hops
    return Placement(mesh, usage, byte_hops, total_bytes)


def schedule(plans: list[OpPlan], graph: Graph, mode: str = "pipelined") -> Schedule:
    """Layer-by-layer time, critical path and pipelined interval of one inference."""
    lat = {p.name: p.latency_s for p in plans}
    finish: dict[str, float] = {}
    prev: dict[str, str | None] = {}
    for op in graph.ops:
        best, arg = 0.0, None
        for src in op.inputs:
            if src in finish and finish[src] > best:
                best, arg = finish[src], src
        finish[op.name] = best + lat.get(op.name, 0.0)
        prev[op.name] = arg
    end = max(finish, key=lambda name: finish[name]) if finish else None
    path = []
    while end is not None:
        path.append(end)
        end = prev[end]
    path.reverse()
    # pipelined: every array op is a stage on its own arrays; the chip has ONE digital unit, so the
    # ops it runs share it and their times add up into one stage
    unit_s = sum(p.latency_s for p in plans if p.substrate == DIGITAL_UNIT)
    array_s = max((p.latency_s for p in plans if p.substrate != DIGITAL_UNIT), default=0.0)
    bottleneck = max(plans, key=lambda p: p.latency_s).name if plans else None
    if unit_s > array_s and plans:
        bottleneck = "digital unit (all its ops)"
    return Schedule(
        mode=mode,
        layer_by_layer_s=sum(lat.values()),
        critical_path_s=max(finish.values()) if finish else 0.0,
        pipelined_interval_s=max(unit_s, array_s),
        critical_path=[n for n in path if lat.get(n, 0) > 0],
        bottleneck=bottleneck,
    )
