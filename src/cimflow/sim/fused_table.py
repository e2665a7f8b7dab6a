"""The fused CPU read of an embedding table: one compiled pass per forward.

In eager PyTorch a table read costs some thirty passes over memory: a test of which lookups
are alone in their array, the outcome table's gather and draws for those, a sort of (bag,
array) keys to group the others into reads, a gather-sum of their rows, a normal per (read,
slice, column), the ADC's elementwise passes, a scatter of the codes into their bags and the
slices' combination. :func:`pool` does all of it in one kernel
(:mod:`cimflow.sim.table_kernels`, numba): reads are planned bag by bag by counting the
bag's lookups per array (no sort; arrays in the order the bag first reads them, each cut
every ``group_rows`` lookups); a read of one lookup whose row fits the outcome table
(:class:`cimflow.sim.pooling.SingleReads`) adds its noise-free value and the code steps its
two-stage uniform draws take; every other read's partial sums and read-noise variances are
summed row by row into a buffer that stays in cache and converted in passes of a few
thousand sums. The randomness comes from the counter-based stream of the fused crossbar read
(:mod:`cimflow.sim.fused_read`), keyed by the table's (seed, name, "read", "counter") with a
draw number advanced once per forward and restarted by ``program``: draw ``2 n`` holds the
shared reads' normals (shared read r's column c its element ``r S dim + c``), draw
``2 n + 1`` the lone reads' uniforms (lookup i's elements ``i (M + 1) ..``). A lazy table
(no cache) reads the rows its shared reads kept once hashed, beside its outcome table, through
a row-to-slot map; Python runs between the plan and the read only where the plan finds a row
not at hand (a lone read's outcomes not built yet, a shared read's row not kept), to build,
keep or hash it (:func:`_missing_rows`): once a batch's rows are at hand its read is kernels
only, one call from a 1-D input (:func:`pool_flat`). Every read first reads the lone reads
with no plan (``table_kernels.lone_bags``: the lookups alone in their array within their
bag, whose rows fit the outcome table: a gather of their outcome-table rows, most lookups of
a large table), then plans and reads the other lookups.

The arithmetic is the torch path's (:func:`cimflow.sim.read_groups.adc_codes` with the noise
clamped at :data:`cimflow.sim.embedding.NOISE_TAIL`, codes summed per bag, slices combined
once per bag; :func:`cimflow.sim.pooling.pool_single`'s two stages): the same codes up to
float rounding at a code boundary (a read's rows are summed in another order), and the same
reads, except that a bag with more than ``group_rows`` lookups in one array may be cut into
reads differently (both are orders a chip may read them in). ``tests/sim/test_fused_table.py``
pins the noise-free outputs and the noise moments against the torch path. Used on a CPU with
a multi-bit ADC when numba is importable and ``CIMFLOW_FUSED_READ`` is not ``0``, except
while calibrating (which records the noisy sums); elsewhere (GPU, no numba) the torch path
runs with the table's torch generator: the same statistics, other values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from cimflow.sim import fused_read, pooling

if TYPE_CHECKING:
    from cimflow.sim.embedding import CIMEmbeddingBag
    from cimflow.sim.pooling import SingleReads

_KERNELS: Any = None


def _kernels() -> Any:
    global _KERNELS
    if _KERNELS is None:
        from cimflow.sim import table_kernels

        _KERNELS = table_kernels
    return _KERNELS


def applies(device: torch.device, calibrating: bool, adc_bits: int) -> bool:
    """Whether :func:`pool` reads a table: on a CPU, a multi-bit ADC, not
    calibrating, numba importable and the fused read not turned off."""
    return device.type == "cpu" and adc_bits > 1 and not calibrating and fused_read.available()


def bag_extents(input: torch.Tensor, offsets: torch.Tensor,
                include_last_offset: bool) -> tuple[int, int, int, int, int, int, torch.Tensor, torch.Tensor | None]:
    """A 1-D CPU embedding-bag input cut by int64 ``offsets`` in one compiled pass (what
    :func:`cimflow.sim.read_groups.flatten_bags` checks and makes): the first and last offset,
    the fewest and most indices per bag, the lowest and highest index used, the bags' sizes,
    and each used index's bag (None where the offsets are not valid)."""
    values = input.contiguous().numpy()
    counts = np.empty(offsets.numel() - int(include_last_offset), np.int64)
    bags = np.empty(values.shape[0], np.int64)
    first, last, fewest, most, lowest, highest, valid = _kernels().bag_extents(
        values, offsets.contiguous().numpy(), include_last_offset, counts, bags)
    used = min(int(last) if include_last_offset else values.shape[0], values.shape[0])
    return (int(first), int(last), int(fewest), int(most), int(lowest), int(highest), torch.from_numpy(counts),
            torch.from_numpy(bags[:used]) if valid else None)


class _Operands(NamedTuple):
    """NumPy views of what :func:`table_kernels.pool_bags` reads besides the lookups."""

    mult_x: np.ndarray  # (S dim,) the sum's factor to ADC steps (times the compensation gain)
    gain_abs: np.ndarray  # (S dim,) the gain's magnitude
    weights: np.ndarray  # (S, dim) a code's weight per slice and column
    k: float  # ADC steps per cell
    unit: float  # one code's value in cell units
    steps: float  # the ADC's largest code
    key: np.uint64  # the read-noise stream
    values: np.ndarray  # a cached table's rows (effective weights, read-noise variances), or empty
    base: np.ndarray  # the outcome table's (rows, dim) noise-free values, gate, slots, cells (or empty)
    gate: np.ndarray
    slots: np.ndarray
    cells: np.ndarray

    def readout(self, tail: float) -> tuple[Any, ...]:
        """What :func:`table_kernels.pool_bags` takes after the reads and their rows, up to the
        draw: the outcome table, the ADC and the noise's clamp, the slices' weights, the stream."""
        return (self.base, self.slots, self.cells, self.mult_x, self.k, self.gain_abs, self.steps, tail, self.weights, self.unit,
                self.key)


_NO_ROWS = np.empty((0, 1), np.float32)
_NO_GATE = np.empty(0, np.float32)
_NO_SLOTS = np.empty((0, 0, 6), np.float32)
_NO_CELLS = np.empty((0, 0), np.int64)
_NO_SLOT_OF = np.empty(0, np.int64)


def _operands(table: CIMEmbeddingBag, singles: SingleReads | None) -> _Operands:
    """The table's :class:`_Operands`, kept on the table for the state they depend on (the same
    gain, scale, significance, cache and outcome-table tensors, unchanged since, the same ADC
    range and stream key): a small table's call pays no conversions."""
    buffers = table._buffers  # (the buffers themselves: no Module.__getattr__ per read)
    parts = (buffers["output_gain"], buffers["w_scale"], buffers["significance"], buffers["pool_cache"], singles,
             None if singles is None else singles.cell_of)
    stamp = (table.adc_range, table._read_key, *(t._version if isinstance(t, torch.Tensor) else -1 for t in parts))
    held = table.__dict__.get("_fused_table_operands")  # (stamp, the objects themselves: no id reused, operands)
    if held is None or held[0] != stamp or any(a is not b for a, b in zip(held[1], parts, strict=True)):
        held = table.__dict__["_fused_table_operands"] = (stamp, parts, _make_operands(table, singles))
    return held[2]


def _make_operands(table: CIMEmbeddingBag, singles: SingleReads | None) -> _Operands:
    sd = table._significance.numel() * table.embedding_dim
    steps = (1 << (table.spec.analog_adc().bits - 1)) - 1
    k = steps / table.adc_range
    gain = table.output_gain
    if gain is None:
        mult_x = torch.full((sd,), k, dtype=torch.float32)
        gain_abs = torch.ones(sd)
    else:
        gain = gain.to(torch.device("cpu"), torch.float32).reshape(-1)
        gain = gain.repeat(sd // gain.numel()) if gain.numel() > 1 else gain.expand(sd)
        mult_x, gain_abs = (gain * k).contiguous(), gain.abs().contiguous()
    weights = (table._significance.to(torch.float32).view(-1, 1) * table.w_scale).contiguous()
    values = _NO_ROWS if table.pool_cache is None else table.pool_cache.contiguous().numpy()
    base, gate, slots, cells = _NO_ROWS, _NO_GATE, _NO_SLOTS, _NO_CELLS
    if singles is not None:  # (views: a lazy table's rows written later are seen)
        base, gate = singles.base.numpy(), singles.gate.numpy()
        slots = _NO_SLOTS if singles.slots is None else singles.slots.numpy()
        cells = _NO_CELLS if singles.cell_of is None else singles.cell_of.numpy()
    return _Operands(mult_x.numpy(), gain_abs.numpy(), weights.numpy(), k, 1.0 / k, float(steps), fused_read._u64(table._read_key),
                     values, base, gate, slots, cells)


def _arrays(table: CIMEmbeddingBag) -> tuple[int, int, int]:
    """How :func:`table_kernels.plan` cuts the table's rows into reads: rows per array, arrays
    (the last partly filled or empty), lookups per read at most."""
    return table.spec.rows, table.num_embeddings // table.spec.rows + 1, table.group_rows


def _kept(singles: SingleReads | None, ops: _Operands) -> tuple[np.ndarray, np.ndarray]:
    """The rows that shared reads find with no call back, as :func:`table_kernels.row_slots`
    takes them: a lazy table's kept rows (``slot_of``, its store), else a cached table's (no
    ``slot_of``: indexed by row; none for a lazy table that keeps none yet)."""
    kept = None if singles is None else singles.kept()
    return (_NO_SLOT_OF, ops.values) if kept is None else (kept[0].numpy(), kept[1].numpy())


def _missing_rows(table: CIMEmbeddingBag, singles: SingleReads | None, idx: np.ndarray, perm: np.ndarray, starts: np.ndarray,
                  lone: np.ndarray, where: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The rows :func:`table_kernels.row_slots` found missing, made: a lazy table's rows first
    read alone get their outcomes (``lone`` set: their gate, or -2 where their steps overflow
    the slots: then a shared read), shared reads' rows are kept once hashed beside the outcome
    table (or hashed on every read: no outcome table, or the store full). Returns the values
    the shared reads read, ``where`` (per lookup) set for them."""
    k = _kernels()
    if singles is not None and singles.known is not None:
        unbuilt = np.flatnonzero(lone == -1.0)
        if unbuilt.size:
            gate = singles.ensure(torch.from_numpy(idx[perm[starts[unbuilt]]]), table._effective_rows)
            assert gate is not None  # (a lazy table's)
            lone[unbuilt] = np.where(gate.numpy() <= 1.0, gate.numpy(), np.float32(-2.0))
    shared = np.zeros(idx.shape, np.bool_)  # (lookups of no read: lone reads, read before the plan)
    if not k.shared_lookups(perm, starts, lone, shared):
        return values
    rows_read = torch.from_numpy(idx[shared])
    if singles is not None:
        rows, slot = singles.stored_rows(rows_read, table._effective_rows)
    else:
        w, var = table._effective_rows(rows_read)
        rows, slot = (w if var is None else torch.cat([w, var], dim=1)), torch.arange(rows_read.numel())
    where[shared] = slot.numpy()
    return rows.contiguous().numpy()


def pool(table: CIMEmbeddingBag, idx: torch.Tensor, bags: torch.Tensor, out: torch.Tensor, singles: SingleReads | None,
         tail: float) -> int:
    """Add to ``out`` (bags, dim, float32, CPU) the pooled reads of the lookups of rows ``idx``
    in ``bags`` (non-decreasing) and return the number of array reads: one-lookup reads from
    the outcome table ``singles`` (None: none), the others through shared reads, their rows
    from the table's cache, the rows a lazy table keeps, or the hash. Python runs between the
    kernels only where a row is missing (:func:`_missing_rows`)."""
    k = _kernels()
    ops = _operands(table, singles)
    idx_np = idx.contiguous().numpy()
    slot_of, values = _kept(singles, ops)
    draw = table._read_draw
    lone_reads, missing, *plan = k.lone_then_plan(
        idx_np, bags.contiguous().numpy(), *_arrays(table), ops.gate, slot_of, values, ops.base, ops.slots, ops.cells, ops.key,
        fused_read._u64(draw), out.numpy())
    table.__dict__["_read_draw"] = draw + 1  # (a plain attribute: no Module.__setattr__)
    return lone_reads + _read_planned(table, singles, ops, idx_np, plan, missing > 0, values, tail, draw, out)


def _read_planned(table: CIMEmbeddingBag, singles: SingleReads | None, ops: _Operands, idx: np.ndarray, plan: list[np.ndarray],
                  missing: bool, values: np.ndarray, tail: float, draw: int, out: torch.Tensor) -> int:
    """After the lone reads: the rows ``plan`` (``perm, starts, first, read_bag, lone, where``)
    finds missing made (:func:`_missing_rows`), then its reads into ``out``; returns their number."""
    perm, starts, first, read_bag, lone, where = plan
    if missing:
        values = _missing_rows(table, singles, idx, perm, starts, lone, where, values)
    if lone.shape[0]:
        k = _kernels()
        parts = k.threads_for(torch.get_num_threads())  # the shared reads in runs of bags on numba's threads (the same bits)
        read = k.pool_bags_threads if parts > 1 else k.pool_bags
        read(idx, perm, starts, first, read_bag, lone, where, values, *ops.readout(tail), fused_read._u64(draw), out.numpy(), parts)
    return int(lone.shape[0])


def _flat_input(input: torch.Tensor, offsets: torch.Tensor) -> bool:
    """Whether a read takes ``input`` and ``offsets`` as they are: 1-D int64 CPU tensors, some offsets."""
    return (input.dim() == 1 and offsets.dim() == 1 and input.dtype == torch.int64 and offsets.dtype == torch.int64
            and input.is_cpu and offsets.is_cpu and offsets.numel() > 0)


def pool_flat(table: CIMEmbeddingBag, input: torch.Tensor, offsets: torch.Tensor, singles: SingleReads | None,
              tail: float) -> tuple[torch.Tensor, int] | None:
    """:func:`pool` of a 1-D int64 CPU input cut by int64 CPU ``offsets``, the input checked,
    planned and read in one kernel call (:func:`table_kernels.read_flat`) where every row it
    reads is at hand (a cached table's; a lazy table's once its rows are built and kept),
    else the missing rows made (:func:`_missing_rows`) and the plan read: the pooled sums
    (bags, dim) float32 and the number of array reads. The same reads, draws and values as
    :func:`cimflow.sim.read_groups.flatten_bags` then :func:`pool`. None (nothing read, no draw
    taken) where the input is of another kind or not valid: the general path then reads it
    or names what is wrong."""
    if not _flat_input(input, offsets):
        return None
    k = _kernels()
    ops = _operands(table, singles)
    slot_of, values = _kept(singles, ops)
    out = torch.zeros(offsets.numel() - int(table.include_last_offset), table.embedding_dim)
    draw = table._read_draw
    planned = (input.contiguous().numpy(), offsets.contiguous().numpy(), table.include_last_offset, table.num_embeddings,
               *_arrays(table), ops.gate, slot_of, values)
    reads = k.read_flat(*planned, *ops.readout(tail), fused_read._u64(draw), out.numpy(), k.threads_for(torch.get_num_threads()))
    if reads == -1:
        return None
    if reads >= 0 and table.pool_cache is not None and not table.collect_stats and table.out_dtype == torch.float32:
        state, held = _read_state(table)  # the next reads: read_prepared
        table.__dict__["_prepared_read"] = (state, held, tail, planned[2:], ops.readout(tail))
    if reads == -2:  # rows missing: read and planned again (their cost dwarfs the plan's), made, read
        lone_reads, _, idx, *plan = k.plan_flat(*planned, ops.base, ops.slots, ops.cells, ops.key, fused_read._u64(draw), out.numpy())
        reads = lone_reads + _read_planned(table, singles, ops, idx, plan, True, values, tail, draw, out)
    table.__dict__["_read_draw"] = draw + 1
    return out, int(reads)


def _read_state(table: CIMEmbeddingBag) -> tuple[tuple[Any, ...], tuple[torch.Tensor | None, ...]]:
    """Everything a cached table's read depends on besides its input, taken cheaply: each state
    tensor's identity and version (the tensors returned beside, to be held while the state is
    kept: no identity reused), the instance's attributes (seed, time, programming, verify
    settings, calibration, statistics, expected ADC range, stream key, the bags' form, spec) and
    the outcome table's size limits. The state of :meth:`CIMEmbeddingBag._single_reads` and of
    :func:`_operands` is part of it, and what decides whether :func:`pool_flat` reads the table."""
    b, d = table._buffers, table.__dict__
    w = table._parameters.get("weight")
    held = (b["pool_cache"], b["output_gain"], b["w_scale"], b["significance"], b["hot_rows"], b["adc_range_calibrated"], w)
    versions = tuple(-1 if t is None else t._version for t in held)
    state = (tuple(map(id, held)), versions, None if w is None else w.dtype, d["seed"], d["t_seconds"], d.get("_programmed_version"),
             d["verify_iterations"], d["verify_tolerance"], d["_calibrating"], d["collect_stats"], d["_adc_range_expected"],
             d["_read_key"], d["include_last_offset"], d["padding_idx"], d["mode"], d["is_bag"], d["compensation"], id(d["spec"]),
             pooling.SINGLE_READ_ENTRIES, pooling.SINGLE_READ_ROWS)
    return state, held


def read_prepared(table: CIMEmbeddingBag, input: torch.Tensor, offsets: torch.Tensor, tail: float) -> torch.Tensor | None:
    """A cached table's read of a 1-D int64 CPU input by :func:`pool_flat`'s last call's
    arguments, kept with the table's state (:func:`_read_state`) while it is unchanged: the
    pooled sums (bags, dim), or None (nothing read, no draw taken) where that state changed,
    the input is of another kind, not valid or reads rows not at hand, or inside
    torch.compile: the general path then reads it. The same reads, draws and values as
    :func:`pool_flat`, with none of its checks' Python: a MovieLens-shaped table's call (1,024
    one-hot bags) 29 -> 19 us, median of 21 rounds (plain ``nn.EmbeddingBag`` 10 us)."""
    held = table.__dict__.get("_prepared_read")
    if held is None or torch.compiler.is_compiling() or not fused_read.available():
        return None
    state, _, tail_then, layout, readout = held
    if tail != tail_then or _read_state(table)[0] != state:
        return None
    if not _flat_input(input, offsets):
        return None
    out = torch.zeros(offsets.numel() - int(table.include_last_offset), table.embedding_dim)
    draw = table._read_draw
    k = _kernels()
    if k.read_flat(input.contiguous().numpy(), offsets.contiguous().numpy(), *layout, *readout, fused_read._u64(draw), out.numpy(),
                   k.threads_for(torch.get_num_threads())) < 0:
        return None
    table.__dict__["_read_draw"] = draw + 1
    return out


__all__ = ["applies", "bag_extents", "pool", "pool_flat", "read_prepared"]
