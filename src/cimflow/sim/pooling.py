"""Pooling kernels for embedding tables in arrays: single-row reads from a precomputed table.

A lookup that is the only row of its read (no other lookup of its bag falls in the same
array) is digitized alone: the ADC input is that row's effective weight, a constant of the
programmed instance at the current time, plus read noise. Its ADC code therefore has a
fixed, known distribution per cell, and the read needs no gather of partial sums, no
per-read conversion and no per-cell noise draw. :class:`SingleReads` holds, per row,

* ``base``: the pooled value (table units, slices combined by significance) of the read
  with every cell at its noise-free code ``round(x)`` (the code the exact path gives a cell
  whose distance to every ADC decision boundary exceeds the noise's reach);
* the few *near* cells (within the noise's reach of a boundary, ~1 % at 1 % read noise)
  with, for each code step the noise can cross, the probability that it does and the
  change of the pooled value when it does.

A read then costs one gather-sum of ``base`` (as plain ``F.embedding_bag``) plus one
uniform draw per near cell: the code of a near cell is sampled by inverting its CDF with
that draw, which gives exactly the distribution of ``round(x + sigma * z)`` with z a
standard normal clamped at ``tail`` (what :meth:`CIMEmbeddingBag._convert` draws).

Lookups sharing a read with others still go through the exact read path; the split costs
one ``bincount`` over (bag, array) keys (one sort when the keys far outnumber the lookups),
none when no bag holds two lookups. Also here: parsing a forward's indices and offsets
(:func:`flatten_bags`, one host sync for every check).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cimflow.errors import DataError
from cimflow.physics import adc_quantize

#: Rows whose outcomes are computed per block while building (bounds the build's memory).
BUILD_ROWS = 1 << 14
#: Tables of at most this many entries (rows x dim) keep a single-read outcome table
#: (:attr:`SingleReads.base` is one float32 per entry, plus a few slots per row).
SINGLE_READ_ENTRIES = 1 << 26
#: ... and at most this many rows (bounds the slots and flags of narrow tables).
SINGLE_READ_ROWS = 1 << 22
#: At most this many noise-sensitive code steps per row are kept; a row with more (rare at
#: low read noise) is always read through the exact path.
MAX_SLOTS = 16
#: The slot width is the smallest that fits this fraction of the rows (the rest: exact path).
SLOT_QUANTILE = 0.999
#: A lazy table keeps at most this many values of the rows its shared reads hash (float32:
#: 128 MiB; ~131,000 rows of 64 values in 2 slices with read noise).
STORED_VALUES = 1 << 25


def _step_probabilities(x: torch.Tensor, sigma: torch.Tensor, codes: torch.Tensor, tail: float,
                        max_steps: int) -> list[tuple[int, torch.Tensor]]:
    """For j = +-1 .. +-max_steps: P(round(x + sigma * clamp(z, -tail, tail)) reaches codes + j),
    i.e. P(noisy >= codes + j - 1/2) for j > 0, P(noisy < codes + j + 1/2) for j < 0 (float64)."""
    x64, s64, c64 = x.double(), sigma.double(), codes.double()
    out = []
    for j in range(1, max_steps + 1):
        for sign in (1, -1):
            edge = c64 + sign * (j - 0.5)
            a = (edge - x64) / s64 * sign  # reaching needs sign * z >= a
            p = torch.where(a > tail, torch.zeros_like(a), torch.special.ndtr(-a))
            p = torch.where(a <= -tail, torch.ones_like(a), p)
            out.append((sign * j, p))
    return out


def _block_outcomes(w: torch.Tensor, var: torch.Tensor | None, significance: torch.Tensor, col_scale: torch.Tensor,
                    gain: torch.Tensor | None, bits: int, full: float, tail: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise-free pooled values (n, dim) of single-row reads of a block of rows, and their
    noise-sensitive code steps as rows (row, cell rank in row, centre, half width, delta,
    column, step order) (None without read noise)."""
    n, dim, s_count = w.shape[0], col_scale.numel(), significance.numel()
    if var is None or bits <= 1:  # no read noise (or a sign-only ADC, which the owner reads exactly): noise-free codes
        value = adc_quantize(w if gain is None else w * gain, bits, full)
        return (value.view(n, s_count, dim) * significance.view(1, -1, 1)).sum(1) * col_scale, None
    steps = (1 << (bits - 1)) - 1
    k = steps / full
    x = w * (k if gain is None else gain * k)  # in ADC steps, as the exact path computes it
    reach = var.sqrt() * (k * tail)
    if gain is not None:
        reach = reach * gain.abs()
    codes = x.round()
    unit = (significance.view(1, -1, 1) * col_scale / k).expand(n, s_count, dim).reshape(n, -1)  # value of one code
    base = (codes.clamp(-steps, steps) * unit).view(n, s_count, dim).sum(1)
    near = (x - codes).abs() + reach >= 0.5  # the exact path's test for drawing noise
    rows_of, cells_of = near.nonzero(as_tuple=True)  # row-major: cells of a row together
    if not rows_of.numel():
        return base, torch.zeros(0, 7, dtype=torch.float64, device=w.device)
    per_row = torch.bincount(rows_of, minlength=n)
    rank = torch.arange(rows_of.numel(), device=w.device) - (torch.cumsum(per_row, 0) - per_row)[rows_of]
    xs, cs, rs = x[rows_of, cells_of], codes[rows_of, cells_of], reach[rows_of, cells_of]
    entries = []
    # steps past a cell's noise reach have probability 0 and steps past the opposite end of the code range
    # change nothing (the clamp): the per-cell smaller bound is enough, and it stays finite when a
    # degenerate full scale (e.g. every cell dead) makes the reach huge
    max_steps = int(torch.minimum(rs.ceil() + 1, cs.abs() + steps + 1).max())
    for order, (j, p) in enumerate(_step_probabilities(xs, rs / tail, cs, tail, max_steps)):
        # the value moves only where the clamp lets the code go from codes + j -+ 1 to codes + j
        inner = (cs + j).clamp(-steps, steps) - (cs + (j - 1 if j > 0 else j + 1)).clamp(-steps, steps)
        which = ((p > 0) & (inner != 0)).nonzero().squeeze(1)
        pf = p[which].float()
        centre = pf / 2 if j > 0 else 1.0 - pf / 2
        entries.append(torch.stack([rows_of[which].double(), rank[which].double(), centre.double(), pf.double() / 2,
                                    (inner[which] * unit[rows_of[which], cells_of[which]]).double(),
                                    (cells_of[which] % dim).double(), torch.full_like(pf, float(order), dtype=torch.float64)],
                                   dim=1))
    return base, torch.cat(entries)


#: Rows' (n, S * dim) effective weights and read-noise variances (None without read noise).
Effective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class SingleReads:
    """Outcome table of the single-row reads of one table (see the module docstring), built
    at once (``lazy=False``) or row by row as rows are first read (:meth:`ensure`).

    ``base`` (rows, dim): pooled value of the read with every cell at its noise-free code.
    ``slots`` (rows, M, 4): the row's noise-sensitive code steps, each as (centre, half
    width, value change in table units, output column): the step is taken when the cell's
    uniform draw u has ``|u - centre| < half width`` (an interval of length p at 0 for a
    step up, at 1 for a step down), so one draw per cell samples its code by inverting its
    CDF. Unused slots have half width 0; None without read noise. ``cell_of`` (rows, M):
    which of the row's ``draws`` uniforms a slot uses (None while every slot is its cell's
    only step). ``fits`` (rows,): rows whose steps all fit in the slots (the others are read
    through the exact path; None: every row). M is the smallest width that holds
    :data:`SLOT_QUANTILE` of the first :data:`BUILD_ROWS` rows, at most :data:`MAX_SLOTS`.

    ``effective(idx)`` gives rows' (n, S * dim) effective weights and read-noise variances
    (cell units; variances None without read noise); ``significance`` (S) the slices',
    ``col_scale`` (dim) the table's column scale, ``gain`` the drift compensation (scalar or
    S * dim, or None), ``bits`` and ``full`` the ADC (full scale in cell units), ``tail`` the
    noise's clamp (standard deviations)."""

    def __init__(self, effective: Effective, rows: int,
                 significance: torch.Tensor, col_scale: torch.Tensor, gain: torch.Tensor | None, bits: int, full: float,
                 tail: float, device: torch.device, lazy: bool = False) -> None:
        self._args = (significance, col_scale, gain, bits, full, tail)  # (no reference to the owner is kept)
        sample = torch.arange(min(rows, BUILD_ROWS), device=device)
        base, steps = self._outcomes(sample, effective)
        self.base = (torch.empty if lazy else torch.zeros)(rows, col_scale.numel(), device=device)
        self.slots: torch.Tensor | None = None
        self.cell_of: torch.Tensor | None = None
        # per row and draw: P(the draw moves its cell's code), P(it moves it up); per row:
        # P(some draw moves a code) (see :func:`pool_single`)
        self.moves: torch.Tensor | None = None
        self.moves_up: torch.Tensor | None = None
        self.any_move: torch.Tensor | None = None
        self.fits: torch.Tensor | None = None
        self.draws = 0
        if steps is not None:  # read noise: slots as wide as the sample's rows need
            per_row = torch.bincount(steps[:, 0].long(), minlength=sample.numel())
            width = int(torch.sort(per_row).values[min(sample.numel() - 1, int(SLOT_QUANTILE * sample.numel()))])
            self.draws = max(1, min(width, MAX_SLOTS))
            self.slots = torch.zeros(rows, self.draws, 4, device=device)
            self.fits = torch.ones(rows, dtype=torch.bool, device=device)
            self.moves = torch.zeros(rows, self.draws, device=device)
            self.moves_up = torch.zeros(rows, self.draws, device=device)
            self.any_move = torch.zeros(rows, device=device)
        self.known: torch.Tensor | None = None
        # rows of shared reads of a lazy table, once hashed (see stored_rows)
        self._slot_of: torch.Tensor | None = None
        self._store: torch.Tensor | None = None
        self._stored_count = 0
        self._write(sample, base, steps)
        if lazy:
            self.known = torch.zeros(rows, dtype=torch.bool, device=device)
            self.known[sample] = True
        else:
            for r0 in range(sample.numel(), rows, BUILD_ROWS):
                block = torch.arange(r0, min(rows, r0 + BUILD_ROWS), device=device)
                self._write(block, *self._outcomes(block, effective))
            if self.fits is not None and bool(self.fits.all()):
                self.fits = None

    def _outcomes(self, idx: torch.Tensor, effective: Effective) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, var = effective(idx)
        return _block_outcomes(w, var, *self._args)

    def _write(self, idx: torch.Tensor, base: torch.Tensor, steps: torch.Tensor | None) -> None:
        """Store the outcomes of rows ``idx`` (``steps`` as from :func:`_block_outcomes`)."""
        self.base[idx] = base
        slots, fits = self.slots, self.fits
        if steps is None or not steps.shape[0] or slots is None or fits is None:  # (slots exist wherever steps do)
            return
        local, cell, order = steps[:, 0].long(), steps[:, 1].long(), steps[:, 6].long()
        n_cell, n_order = int(cell.max()) + 1, int(order.max()) + 1
        steps = steps[torch.sort((local * n_cell + cell) * n_order + order).indices]  # by row, then cell, then step
        local, cell = steps[:, 0].long(), steps[:, 1].long()
        per_row = torch.bincount(local, minlength=idx.numel())
        slot = torch.arange(local.numel(), device=idx.device) - (torch.cumsum(per_row, 0) - per_row)[local]
        fits[idx] = per_row <= self.draws
        keep = (per_row <= self.draws)[local]
        row = idx[local[keep]]
        slots[row, slot[keep]] = steps[keep][:, 2:6].float()
        if self.cell_of is None and bool((cell[keep] != slot[keep]).any()):  # a cell with several steps: they share its draw
            self.cell_of = torch.arange(self.draws, device=idx.device).repeat(self.base.shape[0], 1)
        if self.cell_of is not None:
            self.cell_of[row, slot[keep]] = cell[keep]
        self._write_moves(idx)

    def _write_moves(self, idx: torch.Tensor) -> None:
        """Per draw of rows ``idx``: the probability that it moves its cell's code (its steps'
        intervals are nested at 0 for steps up, at 1 for steps down: the widest of each side),
        the probability that it moves it up, and per row the probability that any draw moves one."""
        if self.slots is None or self.moves is None or self.moves_up is None or self.any_move is None:
            return
        slots = self.slots[idx]  # (k, M, 4)
        width = slots[..., 1] * 2
        up = torch.where(slots[..., 0] < 0.5, width, torch.zeros_like(width))
        down = width - up
        if self.cell_of is None:  # slot d is draw d
            up_d, down_d = up, down
        else:
            cell = self.cell_of[idx]
            up_d = torch.zeros_like(up).scatter_reduce_(1, cell, up, "amax")
            down_d = torch.zeros_like(up).scatter_reduce_(1, cell, down, "amax")
        moves = up_d + down_d
        self.moves[idx], self.moves_up[idx] = moves, up_d
        self.any_move[idx] = (1.0 - torch.prod(1.0 - moves.double(), dim=1)).float()

    def ensure(self, idx: torch.Tensor, effective: Effective) -> None:
        """Build the outcomes of the rows among ``idx`` not built yet (lazy tables)."""
        if self.known is None:
            return
        known = self.known.index_select(0, idx)
        if bool(known.all()):  # one host sync; the common case once the rows read have been seen
            return
        rows = torch.unique(idx[~known])
        for r0 in range(0, rows.numel(), BUILD_ROWS):
            block = rows[r0 : r0 + BUILD_ROWS]
            self._write(block, *self._outcomes(block, effective))
        self.known[rows] = True

    def stored_rows(self, idx: torch.Tensor, effective: Effective) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows' (n, S * dim [+ S * dim]) effective weights and read-noise variances side by
        side, as ``(values, where)``: row ``idx[i]`` is ``values[where[i]]``. A lazy table keeps
        the rows read by shared reads once hashed (up to :data:`STORED_VALUES` values; past
        that, rows not stored yet are hashed on every read); values are the hash's own."""
        slot_of = self._slot_of
        if slot_of is None:
            slot_of = self._slot_of = torch.full(self.base.shape[:1], -1, dtype=torch.int64, device=idx.device)
        where = slot_of.index_select(0, idx)
        missing = where < 0
        if bool(missing.any()):  # one host sync
            rows = torch.unique(idx[missing])
            w, var = effective(rows)
            values = w if var is None else torch.cat([w, var], dim=1)
            used = self._stored_count
            if (used + rows.numel()) * values.shape[1] > STORED_VALUES:  # full: these rows are hashed (not kept)
                out = torch.cat([self._store[:used], values]) if self._store is not None else values
                where = where.masked_scatter(missing, torch.searchsorted(rows, idx[missing]) + used)
                return out, where
            if self._store is None or used + rows.numel() > self._store.shape[0]:  # grow by doubling
                grown = values.new_empty(max(2 * used, used + rows.numel(), 1024), values.shape[1])
                if self._store is not None:
                    grown[:used] = self._store[:used]
                self._store = grown
            self._store[used : used + rows.numel()] = values
            slot_of[rows] = torch.arange(used, used + rows.numel(), device=idx.device)
            self._stored_count = used + rows.numel()
            where = slot_of.index_select(0, idx)
        assert self._store is not None
        return self._store, where


class Flat(NamedTuple):
    """Lookups of one forward: flat indices, the bag of each, the number of bags, the output's
    leading shape, and whether no bag holds two indices."""

    idx: torch.Tensor
    bags: torch.Tensor
    n_bags: int
    out_shape: tuple[int, ...]
    one_per_bag: bool


def flatten_bags(input: torch.Tensor, offsets: torch.Tensor | None, is_bag: bool, include_last_offset: bool, rows: int,
                 name: str) -> Flat:
    """Parse an embedding (bag) input as ``nn.Embedding`` / ``nn.EmbeddingBag`` do: a 2-D input
    is one bag per row (or one lookup per entry for a plain embedding), a 1-D input is cut by
    ``offsets`` (with or without the closing one). Offsets, bag sizes and the index range
    against the table's ``rows`` are checked in one host sync; a violation is a DataError."""
    if not is_bag or input.dim() == 2:
        if offsets is not None and input.dim() == 2:
            raise DataError(f"embedding {name!r}: offsets must be None when the input is 2-D")
        shape = tuple(input.shape if not is_bag else input.shape[:1])
        per = 1 if not is_bag else input.shape[1]
        flat = input.reshape(-1)
        n_bags = int(math.prod(shape)) if shape else 1
        bags = torch.arange(n_bags, device=flat.device)
        bags = bags.repeat_interleave(per) if per != 1 else bags
        if flat.numel():
            lowest, highest = torch.stack(list(torch.aminmax(flat))).tolist()  # one host sync
            _check_indices(lowest, highest, rows, name)
        return Flat(flat, bags, n_bags, shape, per <= 1)
    if offsets is None:
        raise DataError(f"embedding bag {name!r}: a 1-D input needs offsets")
    offsets = offsets.to(torch.int64)
    if offsets.numel() == 0:
        raise _bad_offsets(name, input.numel())
    counts = offsets.diff()  # indices per bag
    if not include_last_offset:
        counts = torch.cat([counts, (input.numel() - offsets[-1]).reshape(1)])
    fewest_t, most_t = torch.aminmax(counts) if counts.numel() else (offsets[0], offsets[0])
    low, high = torch.aminmax(input) if input.numel() else (offsets[0], offsets[0])
    first, last, fewest, most, lowest, highest = torch.stack(
        [offsets[0], offsets[-1], fewest_t, most_t, low.to(torch.int64), high.to(torch.int64)]).tolist()  # one host sync
    if first != 0 or fewest < 0 or last > input.numel():
        raise _bad_offsets(name, input.numel())
    used = last if include_last_offset else input.numel()
    if used < input.numel() and (lowest < 0 or highest >= rows):  # the unused tail may hold anything
        lowest, highest = torch.stack(list(torch.aminmax(input[:used]))).tolist() if used else (0, 0)
    if input.numel():
        _check_indices(lowest, highest, rows, name)
    n_bags = counts.numel()
    bags = torch.arange(n_bags, device=input.device)
    if not (most <= 1 and used == n_bags):  # else one index per bag: bag i holds index i
        bags = torch.repeat_interleave(bags, counts, output_size=used)
    return Flat(input[:used], bags, n_bags, (n_bags,), most <= 1)


def _bad_offsets(name: str, n_indices: int) -> DataError:
    return DataError(f"embedding bag {name!r}: offsets must start at 0, never decrease and stay within the {n_indices} indices")


def _check_indices(lowest: int, highest: int, rows: int, name: str) -> None:
    if lowest < 0 or highest >= rows:
        bad = lowest if lowest < 0 else highest
        raise DataError(f"embedding {name!r}: index {bad} is out of range; the table has {rows} rows (0..{rows - 1})")


def floor_div(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """``values // divisor`` for non-negative int64 values: a shift when ``divisor`` is a
    power of two (int64 division is several times slower on a CPU)."""
    shift = divisor.bit_length() - 1
    return values >> shift if divisor == 1 << shift else torch.div(values, divisor, rounding_mode="floor")


def mod(values: torch.Tensor, divisor: int) -> torch.Tensor:
    """``values % divisor`` for non-negative int64 values (a mask for a power of two)."""
    return values & (divisor - 1) if divisor & (divisor - 1) == 0 else values % divisor


def alone_in_read(idx: torch.Tensor, bags: torch.Tensor, per_bag: torch.Tensor, array_rows: int, n_arrays: int,
                  group_rows: int) -> torch.Tensor:
    """Mask of the lookups that are the only row of their bag in their array (so read alone),
    from ``per_bag`` (lookups per bag), one ``bincount`` over (bag, array) keys, or, when
    there are many more keys than lookups (a bincount would mostly clear memory), one sort."""
    if group_rows == 1:
        return torch.ones_like(idx, dtype=torch.bool)
    if n_arrays == 1:
        return per_bag[bags] == 1
    key = bags * n_arrays + floor_div(idx, array_rows)
    if per_bag.numel() * n_arrays <= 8 * key.numel():
        return counts(key, per_bag.numel() * n_arrays).index_select(0, key) == 1
    # many more keys than lookups: hashed into 4-8 bins per lookup, a lookup alone in its bin
    # is alone in its read; only the others (shared reads and hash collisions) are sorted
    bits = max(10, (4 * key.numel()).bit_length())
    bins = ((key * _HASH_MULTIPLIER) >> (62 - bits)) & ((1 << bits) - 1)
    alone = counts(bins, 1 << bits).index_select(0, bins) == 1
    maybe = (~alone).nonzero().squeeze(1)
    if maybe.numel():
        alone[maybe] = _alone_by_sorting(key[maybe])
    return alone


#: An odd 62-bit multiplier (Fibonacci hashing): the product's high bits mix every key bit.
_HASH_MULTIPLIER = 0x278DDE6E5FD29E00 | 1


def counts(values: torch.Tensor, size: int) -> torch.Tensor:
    """How often each of ``0 .. size - 1`` occurs in ``values`` (int32; a scatter-add, about
    twice as fast as ``torch.bincount`` on a CPU, which scans for the range first)."""
    ones = torch.ones(1, dtype=torch.int32, device=values.device).expand(values.numel())
    return torch.zeros(size, dtype=torch.int32, device=values.device).scatter_add_(0, values, ones)


def _alone_by_sorting(key: torch.Tensor) -> torch.Tensor:
    """Mask of the keys that occur once, by one sort."""
    key_s, order = torch.sort(key)
    differs = key_s[1:] != key_s[:-1]
    alone_s = torch.ones_like(key_s, dtype=torch.bool)
    alone_s[1:] &= differs
    alone_s[:-1] &= differs
    return torch.empty_like(alone_s).scatter_(0, order, alone_s)


def pool_single(table: SingleReads, idx: torch.Tensor, bags: torch.Tensor, per_bag: torch.Tensor | None,
                alone: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    """Pooled values (bags, dim) of the lookups of rows ``idx`` into ``bags`` (non-decreasing;
    ``per_bag``: lookups per bag; None: lookup i is the only one of bag i) that are read alone
    (``alone``; None: all of them): gather-sum of the noise-free values, then the codes of
    the noise-sensitive cells.

    The cells' uniform draws are sampled in two stages with their exact joint law: one
    uniform ``u0`` per lookup decides whether any draw of its row moves a code (probability
    :attr:`SingleReads.any_move`, ~2 % at 1 % read noise); only those lookups (on a CPU) get
    their draws: the first moving draw J is found by inverting P(J <= d) with ``u0``, draw J
    is placed uniformly in its moving intervals (from ``u0`` again: given J it is uniform in
    its interval), draws before J in none, draws after J fresh."""
    if per_bag is None:  # one lookup per bag, in bag order: a plain gather
        out = F.embedding(idx, table.base)
    else:
        weights = None if alone is None else alone.to(table.base.dtype)
        out = F.embedding_bag(idx, table.base, torch.cumsum(per_bag, 0).sub_(per_bag), mode="sum", per_sample_weights=weights)
    if table.slots is None or table.any_move is None:
        return out
    u0 = torch.rand(idx.numel(), generator=generator, device=idx.device)
    moved = u0 < table.any_move.index_select(0, idx)
    if alone is not None:
        moved &= alone
    hit: torch.Tensor | None = moved
    if idx.device.type == "cpu":  # few lookups move a code: only theirs are drawn
        which = moved.nonzero().squeeze(1)
        if not which.numel():
            return out
        idx, bags, u0, hit = idx[which], bags[which], u0[which], None
    slots = torch.index_select(table.slots, 0, idx)  # (n, M, 4); whole rows copied (advanced indexing is 4x slower)
    u = _moving_draws(table, idx, u0, hit, generator)
    if table.cell_of is not None:
        u = u.gather(1, torch.index_select(table.cell_of, 0, idx))
    change = slots[..., 2] * ((u - slots[..., 0]).abs_() < slots[..., 1])
    target = (bags * table.base.shape[1]).unsqueeze(1) + slots[..., 3].long()
    out.view(-1).index_add_(0, target.view(-1), change.view(-1))
    return out


def _moving_draws(table: SingleReads, idx: torch.Tensor, u0: torch.Tensor, hit: torch.Tensor | None,
                  generator: torch.Generator | None) -> torch.Tensor:
    """(n, M) uniform draws of the lookups of rows ``idx`` given that some draw moves a code
    (where ``hit``; elsewhere 2.0: no step), from ``u0`` uniform below its row's
    :attr:`SingleReads.any_move` (see :func:`pool_single`)."""
    assert table.moves is not None and table.moves_up is not None
    moves = table.moves.index_select(0, idx).double()
    reached = 1.0 - torch.cumprod(1.0 - moves, dim=1)  # P(the first moving draw is <= d)
    u = u0.double().unsqueeze(1)
    first = (reached <= u).sum(1, keepdim=True).clamp_max_(moves.shape[1] - 1)
    below = torch.where(first > 0, reached.gather(1, (first - 1).clamp_min(0)), torch.zeros_like(u))
    share = ((u - below) / (reached.gather(1, first) - below).clamp_min(1e-300)).clamp_(0.0, 1.0)
    within = share * moves.gather(1, first)  # uniform over the draw's moving intervals, of length moves
    up = table.moves_up.index_select(0, idx).double().gather(1, first)
    at = torch.where(within < up, within, 1.0 - (within - up)).float()
    draws = torch.rand(moves.shape, generator=generator, device=idx.device)
    order = torch.arange(moves.shape[1], device=idx.device).unsqueeze(0)
    draws.masked_fill_(order < first, 2.0).scatter_(1, first, at)
    if hit is not None:
        draws.masked_fill_(~hit.unsqueeze(1), 2.0)
    return draws


#: Each owner's outcome table with the key of the state it was built for, kept beside the
#: owner (its pickling, deepcopy and state_dict are untouched; dropped with the owner).
_TABLES: weakref.WeakKeyDictionary[object, tuple[tuple[object, ...], SingleReads]] = weakref.WeakKeyDictionary()


def held_table(owner: object, state: tuple[object, ...]) -> SingleReads | None:
    """``owner``'s outcome table if it was built for ``state`` (see :func:`same_state`)."""
    held = _TABLES.get(owner)
    return held[1] if held is not None and same_state(held[0], state) else None


def hold_table(owner: object, state: tuple[object, ...], table: SingleReads) -> None:
    _TABLES[owner] = (state_key(state), table)


def table_of(owner: object) -> SingleReads | None:
    """``owner``'s latest outcome table, whatever its state (for inspection)."""
    held = _TABLES.get(owner)
    return None if held is None else held[1]


def state_key(state: tuple[object, ...]) -> tuple[object, ...]:
    """A key of an instance's state: tensors held by weak reference (compared by identity:
    every change of state makes new tensors), other values by value."""
    return tuple(weakref.ref(x) if isinstance(x, torch.Tensor) else x for x in state)


def same_state(key: tuple[object, ...], state: tuple[object, ...]) -> bool:
    if len(key) != len(state):
        return False
    for held, now in zip(key, state, strict=True):
        if isinstance(held, weakref.ref):
            if now is None or held() is not now:
                return False
        elif isinstance(now, torch.Tensor) or held != now:
            return False
    return True


# ---------------------------------------------------------------------- reads shared by several lookups
def segment_sums(values: torch.Tensor, starts: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Sums over the contiguous segments that begin at ``starts`` (sorted, first 0) of the
    rows ``values[idx]`` (or of ``values`` itself when ``idx`` is None), in one pass
    (``F.embedding_bag``: no gathered copy, no running sum)."""
    flat = values.reshape(values.shape[0], -1)
    if idx is None:
        idx = torch.arange(flat.shape[0], device=flat.device)
    return F.embedding_bag(idx, flat, starts, mode="sum")


def group_reads(idx: torch.Tensor, bags: torch.Tensor, array_rows: int, n_arrays: int,
                group_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One read per (bag, array, chunk of ``group_rows`` rows): the lookups reordered so that
    every read is a contiguous run (reads ordered by bag), the first position of each read,
    and each read's bag."""
    key = bags * n_arrays + floor_div(idx, array_rows)
    order = torch.sort(key, stable=True).indices
    key_s = key[order]
    n = key_s.numel()
    first = torch.ones(n, dtype=torch.bool, device=key_s.device)
    first[1:] = key_s[1:] != key_s[:-1]
    pos = torch.arange(n, device=key_s.device)
    group_start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
    read_starts = torch.nonzero(first | (mod(pos - group_start, group_rows) == 0)).squeeze(1)
    return idx[order], read_starts, bags[order][read_starts]


def adc_codes(psum: torch.Tensor, var: torch.Tensor, gain: torch.Tensor | None, bits: int, full: float, tail: float,
              generator: torch.Generator | None, near_only: bool = False) -> tuple[torch.Tensor, float]:
    """ADC codes (``bits`` > 1, full scale ``full``) of partial sums ``psum`` (cell units,
    times the compensation ``gain``) with read noise of variance ``var``, and one code's value
    in cell units. Noise is ``sigma * z``, z standard normal clamped at ``tail``: one draw per
    sum, or (``near_only``, cheaper when few sums are near an ADC decision boundary, as for
    one-row reads) only for the sums within the noise's reach of one (the others convert to
    the same code whatever the draw: the same distribution)."""
    steps = (1 << (bits - 1)) - 1
    k = steps / full  # ADC steps per cell
    x = psum * (k if gain is None else gain * k)  # in ADC steps
    sigma = var.sqrt().mul_(k)  # var >= 0: a sum of variances
    if gain is not None:
        sigma = sigma.mul_(gain.abs())
    if near_only:  # a draw can change the code only where a boundary (an odd multiple of half a step) is within reach
        codes = x.round()
        where = torch.nonzero((torch.sub(x, codes).abs_() + sigma * tail >= 0.5).view(-1)).squeeze(1)
        if where.numel():
            z = torch.randn(where.shape, generator=generator, device=psum.device, dtype=psum.dtype)
            codes.view(-1)[where] = x.view(-1)[where].addcmul_(z.clamp_(-tail, tail), sigma.view(-1)[where]).round_()
    else:  # one randn pass costs less than finding the near sums (nonzero) and scattering their draws back
        z = torch.randn(x.shape, generator=generator, device=psum.device, dtype=psum.dtype).clamp_(-tail, tail)
        codes = x.addcmul_(z, sigma).round_()
    return codes.clamp_(-steps, steps), 1.0 / k
