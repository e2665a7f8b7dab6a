"""``estimate(plan, stats=None)``: energy, latency, area and throughput of a compiled plan.

The cost model counts events from the :class:`~cimflow.compile.plan.Plan` (the same plan
the simulator executes) and multiplies them by per-event costs from the plan's chip
(:mod:`cimflow.cost.components`). Everything is per *inference* = one forward pass of the
example inputs the plan was compiled with (``batch_size`` queries). Units are SI.

Event counts of one analog array op (``M`` = ``mvm_count`` input vectors, ``P`` = array
reads per vector (:func:`~cimflow.compile.partition.input_pulses`), the weight matrix
``in x out`` tiled into ``R x C`` arrays with ``G`` read groups over all row tiles
(``TileGrid``: a group is a separately digitized read of at most ``rows_per_read`` rows),
``S`` slices (bit-sliced encoding, else 1), ``c_w`` physical columns per weight column
(2 differential, 1 offset, 2S bit-sliced) and one reference column per array for offset)::

    array reads   = M * P * reads * C           (reads = G * (1 - z): read groups actually read)
    driven rows   = M * P * rows * C            (rows = in * a: rows driven per vector and pulse)
    cell reads    = M * P * rows * U            (U = out * c_w + C * [offset])
    conversions   = M * P * reads * out * S
    accumulations = conversions                 (one shift-add per conversion)

``a`` is the fraction of rows driven and ``z`` the fraction of reads skipped because every
input of the read group is zero (the periphery sees the all-zero group, drives nothing and
converts nothing). Energies::

    cells_lines          = cell reads * (G_mean V_read² t_read + C_cell V_supply²)
    dac_drivers          = driven rows * E_row        (dac.energy_pj, else cols C_cell V_supply²)
    adc                  = conversions * E_conv       (conversion.energy_pj, moved from the bits it
                                                       was quoted at along the converter law; else
                                                       the law fitted to the ADC survey,
                                                       cimflow.cost.adc_law, at the converter's
                                                       bits, rate, node and supply)
    adder_tree_shift_add = accumulations * E_add(acc bits)     (Horowitz adds, C V² scaled)

Digital CIM arrays: ``bit ops = M * rows * out * weight_bits * input_bits`` at
``adder_tree.energy_per_bit_op_pj``; their drivers only when ``dac.energy_pj`` is given.
Buffers: every array op reads its input vectors and writes its outputs through the buffer,
``M * (in * input_bits + out * activation_bits)`` bits (an embedding lookup reads its indices,
``lookups * ceil(log2 rows)`` bits, instead of a multi-hot vector); digital-unit ops read and
write their elements (``2 * elements * activation_bits`` bits; ``activation_bits`` = 8).
Digital unit: ``2 * macs`` ops for dynamic matmuls (a MAC is a multiply and an add, as the
presets define an op), ``elements`` ops for vector ops.
Interconnect: ``traffic_byte_hops * 8 * energy_per_bit_hop``. Host ops:
:mod:`cimflow.cost.host` roofline (time), host power x time (``host``) and their DRAM
traffic (``dram``, per bit plus one row activation per looked-up row); the host is the
``host`` argument, else the chip's ``host:`` block, else ``server-cpu-2s``. Leakage: the static
power the chip gives (``leakage_uw`` of every ADC and DAC instance and of the digital unit,
``leakage_uw_per_kib`` of the on-chip buffers) x the time one inference occupies the chip (the
steady-state interval 1 / throughput).

**Embedding lookups** (``Embedding`` / ``EmbeddingBag`` on arrays) pool a bag inside the
array as the simulator does (:class:`~cimflow.sim.embedding.CIMEmbeddingBag`): a read drives
up to ``rows_per_read`` of the bag's rows that sit in one row tile, so a bag of ``k`` rows
drives ``k`` rows and takes about one read per row tile it touches
(:func:`expected_lookup_reads`) instead of ``G`` reads; its buffer traffic is the indices.

**Fixed vs data-dependent.** The fixed per-op estimate drives every row in every read
(row activity ``a = CostOptions.fixed_row_activity``, default 1, the worst case) and, for
lookups, uses the op's own lookups per bag. The data-dependent estimate takes the activity
from the simulator's statistics of each layer:

* matrix layers (:class:`~cimflow.sim.engine.ReadStats`): ``a`` = ``bit_density`` when present,
  else ``mean_pulse_density``, the fraction of rows driven per pulse (zero inputs drive no
  row; in bit-serial mode neither would zero bits, once the simulator counts them). A read
  group whose inputs are all zero is *skipped*: nothing is driven or converted. The skipped
  fraction ``z`` is the measured ``zero_reads / reads`` when the statistics count all-zero
  groups, else estimated assuming independent rows: ``z = mean over read groups of
  (1 - a) ** group_size``. Rows driven = ``in * a``; reads = ``G * (1 - z)``. An all-zero
  input therefore costs no cell, driver, ADC or shift-add energy.
* embedding tables (counts ``bags``, ``lookups``, ``reads``, ``hot_lookups``, optional
  ``dram_lookups``): rows driven and reads per bag as measured; hot lookups served exactly
  from the SRAM tier cost an SRAM read (``dim * activation_bits`` bits at the buffer's energy)
  and ``dim`` digital-unit adds each; DRAM-tier lookups move whole bursts of the row at the
  DRAM's stored precision (``dram.stored_bits``, default 32; ``dram.access_bytes``, default 64)
  plus one row activation each. PIM-tier lookups (optional ``pim_lookups``, a chip with a
  ``pim`` block) are pooled inside the DRAM: bank reads at the internal energy per bit, one
  lane op per value and one row activation per row, plus the pooled vectors over the
  external interface (:func:`~cimflow.compile.tiers.pim_traffic`), which the digital unit
  adds into the bag (``dim`` adds per vector); all of it is counted as ``dram`` energy.
  A table with no rows in arrays pools on the digital unit, with the same tier traffic.

Buffers (other than the lookup tiers), interconnect, digital unit, host and leakage do not
depend on the data here.

Latency and throughput come from the plan's schedule; host ops add their roofline time
(serially, to the latency; as a separate pipeline stage to the interval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cimflow.chip.spec import Chip
from cimflow.compile.graph import Op, OpKind
from cimflow.compile.plan import ARRAY, DIGITAL_UNIT, HOST, OpPlan, Plan
from cimflow.compile.tiers import dram_access_bytes, pim_traffic
from cimflow.cost.cell_tech import array_leakage_w
from cimflow.cost.chip_totals import chip_area, leakage_power_w, on_chip_buffer_bytes, plan_program_cost
from cimflow.cost.components import (
    PJ,
    accumulator_bits,
    add_energy_j,
)
from cimflow.cost.host import EMBEDDING_TYPES, HostSpec, infer_batch_size, op_memory_energy_j, op_time_s, op_work, resolve_host
from cimflow.cost.kind_cost import CostOptions, KindCost, kind_costs
from cimflow.cost.report_types import CostReport, OpCost, print_cost, zero_components
from cimflow.errors import CimflowError
from cimflow.mapping.tiling import TileGrid, expected_lookup_reads

# ----------------------------------------------------------------------------- read groups

def group_counts(tiles: TileGrid) -> list[tuple[int, int]]:
    """Read groups of a tiling as (rows in the group, number of such groups), in closed form
    (the same groups as :meth:`TileGrid.group_sizes`, without listing them)."""
    gr = tiles.group_rows
    counts: dict[int, int] = {}

    def add(rows_in_tile: int, tiles_like_this: int) -> None:
        full, rest = divmod(rows_in_tile, gr)
        if full:
            counts[gr] = counts.get(gr, 0) + full * tiles_like_this
        if rest:
            counts[rest] = counts.get(rest, 0) + tiles_like_this

    full_tiles, last = divmod(tiles.in_features, tiles.rows)
    if full_tiles:
        add(tiles.rows, full_tiles)
    if last:
        add(last, 1)
    return sorted(counts.items(), reverse=True)


def zero_read_fraction(counts: list[tuple[int, int]], activity: float) -> float:
    """Fraction of reads whose group has no driven row when each row is driven independently
    with probability ``activity``: mean over groups of ``(1 - activity) ** size``."""
    if activity >= 1.0:
        return 0.0
    if activity <= 0.0:
        return 1.0
    total = sum(n for _, n in counts)
    log_off = math.log1p(-activity)
    return sum(n * math.exp(size * log_off) for size, n in counts) / total if total else 0.0


# ----------------------------------------------------------------------------- statistics

def _stats_dict(value: Any, name: str) -> dict[str, float]:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise CimflowError(f"stats[{name!r}] must be a ReadStats or a dict like ReadStats.to_dict(), got {type(value).__name__}")
    return dict(value)


def _row_activity(s: Mapping[str, Any], name: str) -> float | None:
    """Fraction of rows driven per read from one layer's statistics, or None if it saw no data."""
    for key in ("bit_density", "mean_pulse_density", "input_density"):
        if key in s and s[key] is not None:
            if key == "mean_pulse_density" and not s.get("pulses", 1):
                continue
            if key == "input_density" and not s.get("input_elements", 1):
                continue
            v = float(s[key])
            if not 0.0 <= v <= 1.0 + 1e-9:
                raise CimflowError(f"stats[{name!r}][{key!r}] must be a fraction within [0, 1], got {v!r}")
            return min(v, 1.0)
    return None


# ----------------------------------------------------------------------------- per op

@dataclass
class _Context:
    chip: Chip
    options: CostOptions
    host: HostSpec
    kinds: dict[str, KindCost]
    buffer_bit_j: float
    dram_bit_j: float
    dram_activation_j: float
    unit_op_j: float
    node_m: float
    supply_v: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Activity:
    """Per input vector and pulse: read groups actually read (per column tile) and rows
    driven; plus lookups served outside the arrays (SRAM tier, DRAM tier), per vector."""

    reads: float
    rows: float
    sram_lookups: float = 0.0
    dram_lookups: float = 0.0
    pim_lookups: float = 0.0


def _array_energy(o: OpPlan, op: Op, kc: KindCost, ctx: _Context, act: _Activity) -> tuple[dict[str, float], dict[str, float]]:
    """Energy by component and event counts of one array op (see the module docstring)."""
    t = o.tile_grid()
    m, p = float(o.mvm_count), float(kc.pulses)
    n_in, n_out, c = t.in_features, t.out_features, t.col_tiles
    e = zero_components()
    ev: dict[str, float] = {}
    driven_rows = m * p * act.rows * c
    ev["driven_rows"] = driven_rows
    e["dac_drivers"] = driven_rows * kc.e_row
    if kc.analog:
        used_cols = n_out * kc.cols_per_weight + c * kc.reference_cols
        reads = m * p * act.reads * c
        cell_reads = m * p * act.rows * used_cols
        conversions = m * p * act.reads * n_out * kc.slices
        acc_bits = accumulator_bits(ctx.chip.arrays[o.placed_kind()], kc.slices, _total_groups(t))
        e_add = add_energy_j(acc_bits, ctx.node_m, ctx.supply_v)
        e["cells_lines"] = cell_reads * (kc.e_cell_conduction + kc.e_cell_line)
        e["adc"] = conversions * kc.e_conversion
        e["adder_tree_shift_add"] = conversions * e_add
        ev.update(array_reads=reads, cell_reads=cell_reads, conversions=conversions, accumulations=conversions,
                  accumulator_bits=float(acc_bits))
    else:
        bit_ops = m * act.rows * n_out * kc.weight_bits * kc.input_bits
        e["adder_tree_shift_add"] = bit_ops * kc.e_bit_op
        ev.update(array_reads=m * p * act.reads * c, bit_ops=bit_ops)
    if _is_lookup(o, op):  # indices in, pooled rows out
        lookups = float(op.attributes.get("lookups", 0) or o.mvm_count)
        in_bits = lookups * max(math.ceil(math.log2(max(n_in, 2))), 1)
    else:
        in_bits = m * n_in * kc.input_bits
    buffer_bits = in_bits + m * n_out * ctx.options.activation_bits
    e["buffers"] = buffer_bits * ctx.buffer_bit_j
    ev["buffer_bits"] = buffer_bits
    _add_tier_energy(e, ev, ctx, n_out, m * act.sram_lookups, m * act.dram_lookups, pool_on_unit=True)
    if act.pim_lookups:
        per_bag = act.rows + act.sram_lookups + act.dram_lookups + act.pim_lookups
        _add_pim_energy(e, ev, ctx, n_out, m, per_bag, act.pim_lookups / per_bag, pool_on_unit=True)
    return e, ev


def _add_pim_energy(e: dict[str, float], ev: dict[str, float], ctx: _Context, dim: int, bags: float, lookups_per_bag: float,
                    pim_fraction: float, pool_on_unit: bool) -> None:
    """Energy of ``bags`` bags whose rows are partly pooled in the PIM tier (added into ``e``, ``ev``,
    under ``dram``): bank reads, lane ops and row activations inside the DRAM, pooled vectors
    over its interface, and (``pool_on_unit``) ``dim`` digital-unit adds per pooled vector."""
    pim = ctx.chip.pim
    if pim is None or bags <= 0:
        return
    t = pim_traffic(ctx.chip, dim, lookups_per_bag, pim_fraction)
    internal_bits, ext_bits = bags * t.internal_bytes * 8, bags * t.external_bytes * 8
    e["dram"] += (internal_bits * pim.internal_energy_per_bit_pj + bags * t.ops * pim.energy_per_op_pj
                  + ext_bits * pim.external_energy_per_bit_pj + bags * t.lookups * pim.row_activation_pj) * PJ
    ev.update(pim_lookups=bags * t.lookups, pim_internal_bits=internal_bits, pim_ops=bags * t.ops,
              pim_vectors=bags * t.vectors, pim_external_bits=ext_bits)
    if pool_on_unit:
        e["digital_unit"] += bags * t.vectors * dim * ctx.unit_op_j
        ev["tier_pooling_ops"] = ev.get("tier_pooling_ops", 0.0) + bags * t.vectors * dim


def _add_tier_energy(e: dict[str, float], ev: dict[str, float], ctx: _Context, dim: int, sram_lookups: float,
                     dram_lookups: float, pool_on_unit: bool) -> None:
    """Energy of embedding rows served from the SRAM and DRAM tiers (added into ``e``, ``ev``).

    A hot row is read exactly from SRAM (``dim * activation_bits`` bits at the buffer's
    energy); a cold row from DRAM moves whole bursts at the DRAM's stored precision
    (:func:`~cimflow.compile.tiers.dram_access_bytes`) plus one row activation. With
    ``pool_on_unit`` the digital unit adds each row into its bag (``dim`` ops); an op that
    already runs on the digital unit counts its adds itself.
    """
    if sram_lookups:
        sram_bits = sram_lookups * dim * ctx.options.activation_bits
        e["buffers"] += sram_bits * ctx.buffer_bit_j
        ev["sram_lookup_bits"] = sram_bits
        ev["buffer_bits"] = ev.get("buffer_bits", 0.0) + sram_bits
    if dram_lookups:
        dram_bits = dram_lookups * dram_access_bytes(ctx.chip, dim) * 8
        e["dram"] += dram_bits * ctx.dram_bit_j + dram_lookups * ctx.dram_activation_j
        ev.update(dram_bits=dram_bits, dram_activations=dram_lookups)
    if pool_on_unit and (sram_lookups or dram_lookups):
        e["digital_unit"] += (sram_lookups + dram_lookups) * dim * ctx.unit_op_j
        ev["tier_pooling_ops"] = (sram_lookups + dram_lookups) * dim


def _total_groups(tiles: TileGrid) -> int:
    return sum(n for _, n in group_counts(tiles))


def _is_lookup(o: OpPlan, op: Op) -> bool:
    return op.op_type in EMBEDDING_TYPES and o.tiles is not None


def _fixed_activity(o: OpPlan, op: Op, options: CostOptions) -> _Activity:
    t = o.tile_grid()
    if _is_lookup(o, op):
        k = float(op.attributes.get("lookups", 0) or o.mvm_count) / max(o.mvm_count, 1)
        return _Activity(reads=expected_lookup_reads(k, t.row_tiles, t.group_rows), rows=k)
    a = options.fixed_row_activity
    groups = _total_groups(t)
    return _Activity(reads=groups * (1.0 - zero_read_fraction(group_counts(t), a)), rows=t.in_features * a)


def _measured_activity(o: OpPlan, op: Op, s: Mapping[str, Any], name: str) -> _Activity | None:
    """Activity from one layer's statistics, or None when they saw no data.

    Two formats: the crossbar engine's :class:`~cimflow.sim.engine.ReadStats` (densities;
    optional ``zero_reads``), and the embedding layer's counts (``bags``, ``lookups``,
    ``reads``, ``hot_lookups``, optional ``dram_lookups``), whose reads are counted per
    column tile and pulse.
    """
    t = o.tile_grid()
    if "bags" in s and "lookups" in s:
        bags = float(s["bags"])
        if bags <= 0:
            return None
        lookups, reads = float(s["lookups"]), float(s.get("reads", 0) or 0)
        hot, dram = float(s.get("hot_lookups", 0) or 0), float(s.get("dram_lookups", 0) or 0)
        pim = float(s.get("pim_lookups", 0) or 0)
        if min(lookups, reads, hot, dram, pim) < 0 or hot + dram + pim > lookups * (1 + 1e-9):
            raise CimflowError(f"stats[{name!r}]: counts must be >= 0 and hot_lookups + dram_lookups + pim_lookups <= lookups, "
                               f"got {dict(s)}")
        per_bag = 1.0 / bags
        return _Activity(reads=reads * per_bag, rows=max(lookups - hot - dram - pim, 0.0) * per_bag, sram_lookups=hot * per_bag,
                         dram_lookups=dram * per_bag, pim_lookups=pim * per_bag)
    a = _row_activity(s, name)
    if a is None:
        return None
    groups = _total_groups(t)
    if s.get("zero_reads") is not None and s.get("reads"):
        z = min(max(float(s["zero_reads"]) / float(s["reads"]), 0.0), 1.0)
    else:
        z = zero_read_fraction(group_counts(t), a)
    return _Activity(reads=groups * (1.0 - z), rows=t.in_features * a)


def _activity_dict(act: _Activity, o: OpPlan, prefix: str) -> dict[str, float]:
    groups = _total_groups(o.tile_grid())
    d = {f"{prefix}row_activity": act.rows / o.tile_grid().in_features,
         f"{prefix}skipped_reads": 1.0 - act.reads / groups if groups else 0.0}
    if act.sram_lookups or act.dram_lookups:
        d.update({f"{prefix}sram_lookups_per_vector": act.sram_lookups, f"{prefix}dram_lookups_per_vector": act.dram_lookups})
    if act.pim_lookups:
        d[f"{prefix}pim_lookups_per_vector"] = act.pim_lookups
    return d


def _cost_array_op(o: OpPlan, op: Op, ctx: _Context, layer_stats: Mapping[str, Any] | None) -> OpCost:
    kc = ctx.kinds[o.placed_kind()]
    fixed_act = _fixed_activity(o, op, ctx.options)
    fixed, events = _array_energy(o, op, kc, ctx, fixed_act)
    activity = _activity_dict(fixed_act, o, "fixed_")
    energy, dd = fixed, False
    if layer_stats is not None:
        act = _measured_activity(o, op, layer_stats, o.module or o.name)
        if act is not None:
            kc_dd = kc
            if "weight_fill" in layer_stats and kc.analog:
                kc_dd = kind_costs(ctx.chip.arrays[o.placed_kind()], o.placed_kind(), ctx.chip, ctx.options,
                                   float(layer_stats["weight_fill"]))
            energy, events = _array_energy(o, op, kc_dd, ctx, act)
            activity.update(_activity_dict(act, o, ""))
            dd = True
    return OpCost(name=o.name, op_type=o.op_type, kind=o.kind, substrate=o.substrate, array_kind=o.array_kind,
                  energy_j=energy, fixed_energy_j=fixed, latency_s=o.latency_s,
                  area_m2=o.arrays * o.replication * kc.area_per_array, data_dependent=dd, events=events, activity=activity)


def _cost_unit_op(o: OpPlan, op: Op, ctx: _Context, layer_stats: Mapping[str, Any] | None = None) -> OpCost:
    """A digital-unit op. An embedding table with no rows in arrays pools on the unit; its
    statistics (``bags``, ``lookups``, ``hot_lookups``, ``dram_lookups``) then add the SRAM and
    DRAM tier traffic of its rows (every row it pools comes from one of those tiers)."""
    e = zero_components()
    ev: dict[str, float] = {}
    if op.kind != OpKind.DATA_MOVEMENT:
        elements = float(op.attributes.get("elements", 0) or 0) or float(math.prod(op.output_shape) if op.output_shape else 0)
        ops = 2.0 * op.macs if op.macs else elements
        bits = 2.0 * elements * ctx.options.activation_bits
        e["digital_unit"] = ops * ctx.unit_op_j
        e["buffers"] = bits * ctx.buffer_bit_j
        ev.update(unit_ops=ops, buffer_bits=bits)
    fixed = dict(e)
    dd = False
    if op.op_type in EMBEDDING_TYPES and layer_stats is not None and float(layer_stats.get("bags", 0) or 0) > 0:
        scale = float(o.mvm_count) / float(layer_stats["bags"])  # the stats' bags -> this plan's bags
        dim = int(op.weight_shape[1]) if op.weight_shape and len(op.weight_shape) == 2 else 1
        _add_tier_energy(e, ev, ctx, dim, scale * float(layer_stats.get("hot_lookups", 0) or 0),
                         scale * float(layer_stats.get("dram_lookups", 0) or 0), pool_on_unit=False)
        pim, lookups = float(layer_stats.get("pim_lookups", 0) or 0), float(layer_stats.get("lookups", 0) or 0)
        if pim > 0 and lookups > 0:
            bags = float(layer_stats["bags"])
            # rows pooled in the PIM tier reach the unit as one vector per bag, not row by row
            left = 1.0 - pim / lookups + bags * pim_traffic(ctx.chip, dim, lookups / bags, pim / lookups).vectors / lookups
            e["digital_unit"] *= left
            if "unit_ops" in ev:
                ev["unit_ops"] *= left
            _add_pim_energy(e, ev, ctx, dim, scale * bags, lookups / bags, pim / lookups, pool_on_unit=False)
        dd = True
    return OpCost(name=o.name, op_type=o.op_type, kind=o.kind, substrate=o.substrate, array_kind=None,
                  energy_j=e, fixed_energy_j=fixed, latency_s=o.latency_s, area_m2=0.0, events=ev, data_dependent=dd)


def _cost_host_op(o: OpPlan, op: Op, ctx: _Context) -> OpCost:
    work = op_work(op)
    t = op_time_s(work, ctx.host)
    e = zero_components()
    e["host"] = ctx.host.power_w * t
    e["dram"] = op_memory_energy_j(work, ctx.dram_bit_j, ctx.dram_activation_j)
    ev = {"host_flops": work.flops, "host_bytes": work.bytes, "dram_bits": work.dram_bits, "dram_activations": work.dram_activations}
    return OpCost(name=o.name, op_type=o.op_type, kind=o.kind, substrate=o.substrate, array_kind=None,
                  energy_j=e, fixed_energy_j=e, latency_s=t, area_m2=0.0, events=ev)


def _context(chip: Chip, options: CostOptions, host: HostSpec) -> _Context:
    node_m, supply = chip.technology.node_nm * 1e-9, chip.technology.supply_v
    kinds = {k: kind_costs(spec, k, chip, options) for k, spec in chip.arrays.items()}
    dram = chip.dram
    return _Context(
        chip=chip, options=options, host=host, kinds=kinds,
        buffer_bit_j=chip.buffer.energy_per_bit_pj * PJ if chip.buffer is not None else 0.0,
        dram_bit_j=dram.energy_per_bit_pj * PJ if dram is not None else host.memory_energy_per_bit_j,
        dram_activation_j=dram.row_activation_pj * PJ if dram is not None else host.row_activation_j,
        unit_op_j=chip.digital_unit.energy_per_op_pj * PJ, node_m=node_m, supply_v=supply,
    )


# ----------------------------------------------------------------------------- estimate

def estimate(plan: Plan, stats: Mapping[str, Any] | None = None, *, host: HostSpec | str | None = None,
             options: CostOptions | None = None, batch_size: int | None = None) -> CostReport:
    """Energy, latency, area and throughput of one inference of ``plan``.

    Args:
        plan: a compiled plan (:func:`cimflow.compile`); counts are for its example inputs.
        stats: optional activation statistics, layer (module) name -> ReadStats or
            ``ReadStats.to_dict()`` (see :func:`cimflow.sim.gather_stats`); array energies of the layers
            named then follow the data (module docstring), the rest keep the fixed estimate.
        host: the host that runs the plan's host ops (preset name or HostSpec; default: the
            chip's ``host:`` block, else ``server-cpu-2s``).
        options: :class:`CostOptions` (defaults documented there).
        batch_size: queries per inference (default: the leading dimension of the first
            graph input, see :func:`cimflow.cost.host.infer_batch_size`).
    """
    if not isinstance(plan, Plan):
        raise CimflowError(f"estimate needs a cimflow Plan (from cimflow.compile), got {type(plan).__name__}")
    if plan.array_ops() and all(o.mvm_count == 0 for o in plan.array_ops()):
        raise CimflowError(
            "the plan has no operation counts (it was compiled without example inputs), so every energy would be 0; "
            "compile with example inputs: cimflow.compile(model, chip, example_inputs)"
        )
    options = options or CostOptions()
    chip = plan.chip
    spec_host = resolve_host(host, chip)
    ctx = _context(chip, options, spec_host)
    layer_stats: dict[str, dict[str, float]] = {}
    if stats is not None:
        if not isinstance(stats, Mapping):
            raise CimflowError(f"stats must map layer names to ReadStats (dicts), got {type(stats).__name__}")
        layer_stats = {str(k): _stats_dict(v, str(k)) for k, v in stats.items()}
    graph = plan.graph
    per_op: list[OpCost] = []
    host_s = 0.0
    matched: set[str] = set()
    for o in plan.ops:
        if o.kind in (OpKind.INPUT.value, OpKind.OUTPUT.value):
            continue
        op = graph.op(o.name)
        if o.substrate == ARRAY:
            key = o.module if o.module in layer_stats else o.name if o.name in layer_stats else None
            if key is not None:
                matched.add(key)
            cost = _cost_array_op(o, op, ctx, layer_stats.get(key) if key is not None else None)
        elif o.substrate == DIGITAL_UNIT:
            key = o.module if o.module in layer_stats else o.name if o.name in layer_stats else None
            if key is not None and op.op_type in EMBEDDING_TYPES:
                matched.add(key)
            cost = _cost_unit_op(o, op, ctx, layer_stats.get(key) if key is not None else None)
        elif o.substrate == HOST:
            cost = _cost_host_op(o, op, ctx)
            host_s += cost.latency_s
        else:  # pragma: no cover - OpPlan.from_dict refuses other substrates
            raise CimflowError(f"op {o.name!r}: unknown substrate {o.substrate!r}")
        per_op.append(cost)
    notes = list(ctx.notes)
    if stats is not None:
        unknown = sorted(set(layer_stats) - matched)
        if unknown:
            notes.append("statistics for layers that are not array ops of this plan (ignored): " + ", ".join(unknown[:10])
                         + (" ..." if len(unknown) > 10 else ""))
        missing = [c.name for c in per_op if c.substrate == ARRAY and not c.data_dependent]
        if missing:
            more = " ..." if len(missing) > 10 else ""
            notes.append("no statistics for array ops (fixed estimate used): " + ", ".join(missing[:10]) + more)

    sched = plan.schedule
    chip_latency = sched.latency_s
    latency = chip_latency + host_s
    if sched.mode == "pipelined":
        interval = max(sched.pipelined_interval_s, host_s)
    else:
        interval = sched.layer_by_layer_s + host_s
    throughput = 1.0 / interval if interval > 0 else math.inf

    by_component = zero_components()
    fixed_by_component = zero_components()
    for c in per_op:
        for k, v in c.energy_j.items():
            by_component[k] += v
        for k, v in c.fixed_energy_j.items():
            fixed_by_component[k] += v
    interconnect = plan.placement.traffic_byte_hops * 8 * chip.interconnect.energy_per_bit_hop_pj * PJ
    p_leak = leakage_power_w(chip) + array_leakage_w(chip)
    leakage = p_leak * interval if math.isfinite(interval) else 0.0
    for d in (by_component, fixed_by_component):
        d["interconnect"] += interconnect
        d["leakage"] += leakage
    area, area_notes = chip_area(chip, ctx.kinds)
    notes += area_notes
    if host_s > 0:
        notes.append(f"host ops run on {spec_host.name} (roofline): {host_s:.3g} s per inference")
    for kind, kc in ctx.kinds.items():
        if kc.analog and kc.conversion_source == "converter_law":
            law = (f"Walden FOM {options.adc_fom_j_per_step * 1e15:g} fJ/step at 28 nm scaled to the chip, plus the survey's thermal floor"
                   if options.adc_fom_j_per_step is not None else
                   f"the ADC survey's {options.adc_law} law at the chip's node, supply and conversion rate, design year {options.adc_year}")
            notes.append(f"array kind {kind!r}: no ADC energy given, converter law used ({law})")
    macs = sum(o.macs for o in plan.ops)
    program = plan_program_cost(plan, ctx.kinds)
    if program.cells:
        notes.append(f"programming the weights (once, not per inference): {program.cells} cells, {program.pulses:.3g} pulses, "
                     f"{program.energy_j:.3g} J, {program.time_s:.3g} s (cell technology laws, cimflow.cost.cell_tech)")
    return CostReport(
        chip=chip.name, model_name=plan.model_name, host=spec_host.name,
        batch_size=int(batch_size) if batch_size is not None else infer_batch_size(graph),
        per_op=per_op, by_component=by_component, fixed_by_component=fixed_by_component,
        energy_j=sum(by_component.values()), fixed_energy_j=sum(fixed_by_component.values()),
        latency_s=latency, chip_latency_s=chip_latency, host_latency_s=host_s, throughput_per_s=throughput,
        macs=int(macs), area_m2=sum(area.values()), area_by_component=area,
        data_dependent=any(c.data_dependent for c in per_op), schedule_mode=sched.mode, notes=notes,
        options=options.to_dict(), program_energy_j=program.energy_j, program_time_s=program.time_s,
    )


__all__ = ["CostOptions", "KindCost", "chip_area", "estimate", "expected_lookup_reads", "group_counts", "kind_costs",
           "leakage_power_w", "on_chip_buffer_bytes", "plan_program_cost", "print_cost", "zero_read_fraction"]
