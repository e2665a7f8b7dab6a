"""Partitioning: assign every operator a substrate, tile static weights onto arrays,
check capacity, and replicate bottleneck layers into spare arrays."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from typing import Any

from cimflow.chip.spec import ArraySpec, Chip
from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.compile.plan import ARRAY, DIGITAL_UNIT, HOST, OpPlan
from cimflow.compile.rules import DIGITAL, matching_rule, refuse_unmatched_rules
from cimflow.compile.rules import DIGITAL_UNIT as RULE_DIGITAL_UNIT
from cimflow.compile.rules import HOST as RULE_HOST
from cimflow.errors import CompileError
from cimflow.mapping.tiling import expected_lookup_reads, tile_grid

#: Static-weight operator types the simulator executes on arrays.
SIMULATED_MVM_TYPES = ("Linear", "Conv1d", "Conv2d")
EMBEDDING_TYPES = ("Embedding", "EmbeddingBag")


def _type_names(op: Op) -> tuple[str, ...]:
    names = [op.op_type]
    names += [str(t) for t in op.attributes.get("type_names", [])] if isinstance(op.attributes.get("type_names"), list) else []
    return tuple(names)


def _array_for_rule(target: Any, chip: Chip, op: Op) -> tuple[str, str | None]:
    """Resolve a rule target to (substrate, array kind)."""
    if target in (RULE_HOST, "keep", None):
        return HOST, None
    if target == RULE_DIGITAL_UNIT:
        return DIGITAL_UNIT, None
    if target == DIGITAL:
        if chip.roles.digital is None:
            raise CompileError(f"op {op.name!r}: rule asks for 'digital', but chip {chip.name!r} has no digital CIM array (roles.digital); "
                               "use 'host' or 'digital_unit'")
        return ARRAY, chip.roles.digital
    if isinstance(target, str) and target in chip.arrays:
        return ARRAY, target
    raise CompileError(
        f"op {op.name!r}: rule target {target!r} is not 'host', 'digital', 'digital_unit' or an array kind of "
        f"{chip.name!r} ({', '.join(sorted(chip.arrays))})"
    )


def assign_substrates(graph: Graph, chip: Chip, rules: Mapping[Any, Any] | None = None,
                      table_rows: Mapping[str, int] | None = None) -> list[OpPlan]:
    """First pass: a substrate for every op from the rules and the chip's roles.

    ``table_rows`` (from :func:`cimflow.compile.tiers.place_tables`) gives, per embedding op,
    how many of its rows live in the arrays; the rest are in the SRAM or DRAM tiers."""
    rules = dict(rules or {})
    table_rows = dict(table_rows or {})
    if rules:
        refuse_unmatched_rules(rules, [(op.name, _type_names(op)) for op in graph.ops if op.kind not in (OpKind.INPUT, OpKind.OUTPUT)])
    plans = []
    for op in graph.ops:
        kind = op.kind
        plan = OpPlan(name=op.name, kind=kind.value, op_type=op.op_type, substrate=DIGITAL_UNIT, weight_shape=op.weight_shape,
                      mvm_count=op.mvm_count, macs=op.macs, source_location=op.source_location)
        if op.attributes.get("module"):
            plan.module = str(op.attributes["module"])
        elif kind == OpKind.STATIC_MVM and op.op_type in SIMULATED_MVM_TYPES + EMBEDDING_TYPES:
            plan.module = op.target
        rule = matching_rule(rules, op.name, _type_names(op)) if kind not in (OpKind.INPUT, OpKind.OUTPUT) else None
        if kind in (OpKind.INPUT, OpKind.OUTPUT):
            plan.substrate, plan.reason = HOST, "graph boundary"
        elif rule is not None:
            plan.substrate, plan.array_kind = _array_for_rule(rule[1], chip, op)
            if plan.substrate == ARRAY and kind != OpKind.STATIC_MVM:
                raise CompileError(f"op {op.name!r} ({op.op_type}, {kind.value}) has no static weight matrix, so rule {rule[0]!r} "
                                   "cannot put it on arrays; allowed: 'digital_unit' or 'host'")
            plan.reason = f"rule {rule[0]!r}"
        elif kind == OpKind.STATIC_MVM:
            groups = int(op.attributes.get("groups", 1) or 1)
            if groups > 1:
                plan.substrate, plan.reason = DIGITAL_UNIT, f"grouped convolution (groups={groups}) runs on the digital unit"
            else:
                plan.substrate = ARRAY
                plan.array_kind = chip.embedding_kind if op.op_type in EMBEDDING_TYPES else chip.roles.mvm
                plan.reason = "roles.embedding" if op.op_type in EMBEDDING_TYPES else "roles.mvm"
        elif kind == OpKind.DYNAMIC_MATMUL:
            plan.reason = "both operands change at run time: cannot live in non-volatile arrays"
        elif kind == OpKind.HOST:
            plan.substrate, plan.reason = HOST, "operator unknown to cimflow"
        else:
            plan.reason = kind.value
        if plan.substrate == ARRAY:
            spec = chip.array(plan.placed_kind())
            if not op.weight_shape or len(op.weight_shape) != 2:
                raise CompileError(f"op {op.name!r} is placed on arrays but has no 2-D weight shape")
            rows = int(op.weight_shape[0])
            table = plan.module if plan.module in table_rows else plan.name
            if op.op_type in EMBEDDING_TYPES and table in table_rows:
                rows = int(table_rows[table])
                plan.reason += f"; tiers: {rows:,} of {int(op.weight_shape[0]):,} rows in arrays"
            plan.tiles = tile_grid(max(rows, 1), int(op.weight_shape[1]), spec, pack=op.op_type in EMBEDDING_TYPES)
            plan.arrays = plan.tiles.arrays
            plan.utilization = plan.tiles.utilization
        plans.append(plan)
    return plans


def check_capacity(plans: list[OpPlan], chip: Chip, reserved: Mapping[str, int] | None = None) -> dict[str, int]:
    """Arrays needed per kind; a CompileError with the numbers when they exceed the chip
    (less the arrays ``reserved`` per kind for other uses, e.g. hot embedding rows)."""
    reserved = reserved or {}
    need: dict[str, int] = {}
    for p in plans:
        if p.substrate == ARRAY:
            need[p.placed_kind()] = need.get(p.placed_kind(), 0) + p.arrays * p.replication
    over = []
    for kind, n in need.items():
        have = chip.arrays_on_chip(kind) - int(reserved.get(kind, 0))
        if n > have:
            a = chip.arrays[kind]
            biggest = max((p for p in plans if p.array_kind == kind), key=lambda p: p.arrays)
            over.append(
                f"{n} arrays of kind {kind!r} ({a.rows}x{a.cols}) are needed but the chip has {have} "
                f"({chip.cores.count} cores x {chip.cores.arrays.get(kind, 0)}"
                + (f", less {reserved[kind]} reserved" if reserved.get(kind) else "") + f"); the largest op is {biggest.name!r} "
                f"with {biggest.arrays} arrays ({'x'.join(str(d) for d in biggest.weight_shape or ())} weights)"
            )
    if over:
        raise CompileError(
            "the model does not fit on chip " + repr(chip.name) + ": " + "; ".join(over)
            + ". Move layers elsewhere with rules (e.g. {'<name>': 'host'}), or describe a chip with more cores"
        )
    return need


def input_pulses(spec: ArraySpec) -> int:
    """Array reads (or digital cycles) one input vector takes."""
    if spec.kind == "digital":
        return spec.input_encoding.bits if spec.input_encoding.scheme == "bit_serial" else 1
    return spec.input_encoding.pulses


def mvm_time_s(spec: ArraySpec, tiles, clock_hz: float) -> float:
    """Seconds for one input vector through one copy of a tiled weight matrix.

    Row and column tiles sit on separate arrays and work in parallel. Within an array,
    each read group is a separate read; an analog read integrates for ``read_pulse_s``
    and its ADCs then convert ``columns_per_adc`` columns one after another (one clock
    each when the chip gives no conversion latency). Digital CIM takes one clock per
    input bit (bit-serial) through its adder tree.
    """
    cycle = 1.0 / clock_hz
    pulses = input_pulses(spec)
    if spec.kind == "digital":
        return pulses * cycle
    rows_in_tile = min(spec.rows, tiles.in_features)
    groups = math.ceil(rows_in_tile / tiles.group_rows)
    assert spec.adc is not None  # an analog array validates only with an ADC
    conv = spec.adc.conversion.latency_s or cycle
    step = spec.read.read_pulse_s + spec.adc.columns_per_adc * conv
    return pulses * groups * step


def lookup_time_s(spec: ArraySpec, tiles, bags: int, lookups: int, clock_hz: float) -> float:
    """Seconds to pool ``bags`` bags of ``lookups`` total rows on a table's arrays.

    A bag needs about one read per row tile it touches (``expected_lookup_reads``), each
    driving at most ``group_rows`` of its rows; reads on different arrays run in parallel,
    reads on one array (its packed segments included) one after another.
    """
    if bags <= 0:
        return 0.0
    per_bag = lookups / bags
    reads = bags * expected_lookup_reads(per_bag, tiles.row_tiles, tiles.group_rows) * tiles.col_tiles
    cycle = 1.0 / clock_hz
    if spec.kind == "digital":
        return reads * cycle / max(tiles.arrays, 1)
    assert spec.adc is not None  # an analog array validates only with an ADC
    conv = spec.adc.conversion.latency_s or cycle
    # a read digitizes only its segment's columns: each ADC converts at most columns_per_adc of them
    physical_cols = tiles.used_columns * spec.cells_per_weight
    step = spec.read.read_pulse_s + min(spec.adc.columns_per_adc, physical_cols) * conv
    return input_pulses(spec) * reads * step / max(tiles.arrays, 1)


def replicate_bottlenecks(plans: list[OpPlan], chip: Chip, need: dict[str, int], max_steps: int = 100_000,
                          reserved: Mapping[str, int] | None = None) -> None:
    """Give extra copies to the slowest array ops while spare arrays of their kind remain
    (each copy takes a share of the op's input vectors), to balance a pipeline. Arrays
    ``reserved`` per kind are not spare."""
    reserved = reserved or {}
    spare = {k: chip.arrays_on_chip(k) - need.get(k, 0) - int(reserved.get(k, 0)) for k in chip.arrays}
    heap: list[tuple[float, int]] = []
    for i, p in enumerate(plans):
        if p.substrate == ARRAY and p.mvm_count > 1:
            heapq.heappush(heap, (-p.latency_s, i))
    steps = 0
    while heap and steps < max_steps:
        _, i = heapq.heappop(heap)
        p = plans[i]
        kind = p.placed_kind()
        if p.arrays > spare[kind] or p.replication >= p.mvm_count:
            continue  # this op cannot grow; the next slowest may
        spare[kind] -= p.arrays
        p.replication += 1
        per = p.latency_s * (p.replication - 1) / p.replication
        p.latency_s = per
        p.cycles = math.ceil(per * chip.clock_hz)
        heapq.heappush(heap, (-p.latency_s, i))
        steps += 1
