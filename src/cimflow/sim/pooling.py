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

A read then costs one gather-sum of ``base`` (as plain ``F.embedding_bag``) plus, for the
~2 % of lookups whose row has some code moved by the noise, one uniform draw per near cell:
the code of a near cell is sampled by inverting its CDF with that draw, which gives exactly
the distribution of ``round(x + sigma * z)`` with z a standard normal clamped at ``tail``
(what :meth:`CIMEmbeddingBag._convert` draws); one uniform per lookup decides whether any
code of its row moves (:func:`pool_single`).

Lookups sharing a read with others still go through the exact read path; the split costs
one count over (bag, array) keys (hashed when the keys far outnumber the lookups), none
when no bag holds two lookups. Parsing a forward's indices and offsets and grouping lookups
into reads live in :mod:`cimflow.sim.read_groups` (re-exported here).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cimflow.physics import adc_quantize
from cimflow.sim import hugepages
from cimflow.sim.read_groups import Flat as Flat
from cimflow.sim.read_groups import adc_codes as adc_codes
from cimflow.sim.read_groups import alone_in_read as alone_in_read
from cimflow.sim.read_groups import counts as counts
from cimflow.sim.read_groups import flatten_bags as flatten_bags
from cimflow.sim.read_groups import floor_div as floor_div
from cimflow.sim.read_groups import group_reads as group_reads
from cimflow.sim.read_groups import mod as mod
from cimflow.sim.read_groups import segment_sums as segment_sums

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
#: Lone reads with at most this many cell draws in all take one uniform per draw (fewer
#: operations); larger batches draw in two stages (:func:`pool_single`).
DENSE_DRAWS = 1 << 14
#: Devices where the lookups whose codes move are gathered (a host sync) before their draws;
#: elsewhere every lookup's draws are computed and masked (no sync).
COMPACT_DEVICES = ("cpu",)
#: A lazy table keeps at most this many values of the rows its shared reads hash (float32:
#: 32 MiB per table; ~32,000 rows of 64 values in 2 slices with read noise).
STORED_VALUES = 1 << 23


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
    ``slots`` (rows, M, 6): the row's noise-sensitive code steps, each as (centre, half
    width, value change in table units, output column), then, for draw d = the slot's
    position, :attr:`moves` and :attr:`moves_up` (one gather reads all): the step is taken when the cell's
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
        # the per-row state every lookup reads at random: on 2 MiB pages where large (hugepages)
        self.base = hugepages.empty(rows, col_scale.numel(), device=device)
        if not lazy:
            self.base.zero_()
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
            self.slots = hugepages.empty(rows, self.draws, 6, device=device).zero_()
            self.fits = torch.ones(rows, dtype=torch.bool, device=device)
            self.moves, self.moves_up = self.slots[..., 4], self.slots[..., 5]  # views
            self.any_move = torch.zeros(rows, device=device)
        self.known: torch.Tensor | None = None
        # per row, read by every forward (one gather): P(some draw moves a code) where the row
        # is built and its steps fit its slots, 2 where they do not (the exact path), -1 where
        # the row is not built yet (lazy)
        self.gate = hugepages.empty(rows, device=device).fill_(-1.0 if lazy else 0.0)
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
        self.gate[idx] = 0.0
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
        slots[row, slot[keep], :4] = steps[keep][:, 2:6].float()
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
        slots = self.slots[idx]  # (k, M, 6)
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
        fits = self.fits[idx] if self.fits is not None else torch.ones_like(idx, dtype=torch.bool)
        self.gate[idx] = torch.where(fits, self.any_move[idx], torch.full_like(self.any_move[idx], 2.0))

    def ensure(self, idx: torch.Tensor, effective: Effective) -> torch.Tensor | None:
        """Build the outcomes of the rows among ``idx`` not built yet (lazy tables); returns
        the rows' :attr:`gate` (one gather, and one host sync) for a lazy table, None for a
        table built at once (gathered where needed)."""
        if self.known is None:
            return None
        gate = self.gate.index_select(0, idx)
        missing = gate < 0
        if not bool(missing.any()):  # the common case once the rows read have been seen
            return gate
        rows = torch.unique(idx[missing])
        for r0 in range(0, rows.numel(), BUILD_ROWS):
            block = rows[r0 : r0 + BUILD_ROWS]
            self._write(block, *self._outcomes(block, effective))
        self.known[rows] = True
        return self.gate.index_select(0, idx)

    def kept(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rows kept so far by :meth:`stored_rows` as ``(slot_of, store)``: row r's values
        are ``store[slot_of[r]]`` where ``slot_of[r] >= 0`` (None: none kept yet). A compiled
        read finds its rows there with no call back (:func:`cimflow.sim.fused_table.pool`)."""
        if self._slot_of is None or self._store is None:
            return None
        return self._slot_of, self._store

    def stored_rows(self, idx: torch.Tensor, effective: Effective) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows' (n, S * dim [+ S * dim]) effective weights and read-noise variances side by
        side, as ``(values, where)``: row ``idx[i]`` is ``values[where[i]]``. A lazy table keeps
        the rows read by shared reads once hashed (up to :data:`STORED_VALUES` values; past
        that, rows not stored yet are hashed on every read); values are the hash's own."""
        slot_of = self._slot_of
        if slot_of is None:
            slot_of = self._slot_of = hugepages.empty(self.base.shape[0], dtype=torch.int64, device=idx.device).fill_(-1)
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


def pool_lone(table: SingleReads, idx: torch.Tensor, bags: torch.Tensor, n_bags: int, per_bag: torch.Tensor | None,
              one_per_bag: bool, array_rows: int, n_arrays: int, group_rows: int, gate: torch.Tensor | None,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled values (bags, dim) of the lookups read alone (:func:`pool_single`), and the
    positions of the others (sharing a read, or of rows whose steps overflow their slots)
    in ``idx`` (None: none). ``per_bag``: lookups per bag (None: counted here), ``gate``:
    the rows' :attr:`SingleReads.gate` (:meth:`SingleReads.ensure`; None: gathered here when
    needed); ``array_rows``,
    ``n_arrays`` and ``group_rows`` the table's arrays. One host sync, none when no bag
    holds two lookups and every row fits its slots."""
    one_each = one_per_bag and idx.numel() == n_bags  # lookup i is bag i's only one
    if one_per_bag and table.fits is None:  # no lookup shares a read
        return pool_single(table, idx, bags, None if one_each else counts(bags, n_bags), None, generator, gate), None
    if per_bag is None:
        per_bag = counts(bags, n_bags)
    if gate is None:
        gate = table.gate.index_select(0, idx)
    if one_per_bag:  # every lookup alone in its read: only rows overflowing their slots are not
        alone = gate <= 1.0
    else:
        alone = alone_in_read(idx, bags, per_bag, array_rows, n_arrays, group_rows)
        if table.fits is not None:
            alone &= gate <= 1.0
    shared = (~alone).nonzero().squeeze(1)  # the host sync
    if not shared.numel():
        return pool_single(table, idx, bags, None if one_each else per_bag, None, generator, gate), None
    if 2 * shared.numel() < idx.numel():  # mostly alone: mask the others out in place
        return pool_single(table, idx, bags, per_bag, alone, generator, gate), shared
    lone = alone.nonzero().squeeze(1)  # mostly sharing reads: gather the lone ones first
    lone_bags = bags[lone]
    return pool_single(table, idx[lone], lone_bags, counts(lone_bags, n_bags), None, generator, gate[lone]), shared


def pool_single(table: SingleReads, idx: torch.Tensor, bags: torch.Tensor, per_bag: torch.Tensor | None,
                alone: torch.Tensor | None, generator: torch.Generator | None, gate: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled values (bags, dim) of the lookups of rows ``idx`` into ``bags`` (non-decreasing;
    ``per_bag``: lookups per bag; None: lookup i is the only one of bag i) that are read alone
    (``alone``; None: all of them): gather-sum of the noise-free values, then the codes of
    the noise-sensitive cells.

    The cells' uniform draws are sampled in two stages with their exact joint law: one
    uniform ``u0`` per lookup decides whether any draw of its row moves a code (probability
    :attr:`SingleReads.any_move`, ~2 % at 1 % read noise); only those lookups (on a CPU) get
    their draws: the first moving draw J is found by inverting P(J <= d) with ``u0``, draw J
    is placed uniformly in its moving intervals (from ``u0`` again: given J it is uniform in
    its interval), draws before J in none, draws after J fresh. ``gate``: the rows'
    :attr:`SingleReads.gate` when already gathered."""
    if per_bag is None:  # one lookup per bag, in bag order: a plain gather
        out = F.embedding(idx, table.base)
    else:
        weights = None if alone is None else alone.to(table.base.dtype)
        out = F.embedding_bag(idx, table.base, torch.cumsum(per_bag, 0).sub_(per_bag), mode="sum", per_sample_weights=weights)
    if table.slots is None or table.any_move is None:
        return out
    if idx.numel() * table.draws <= DENSE_DRAWS:  # few lookups: one uniform per draw costs fewer operations
        u = torch.rand(idx.numel(), table.draws, generator=generator, device=idx.device)
        if alone is not None:
            u.masked_fill_(~alone.unsqueeze(1), 2.0)  # no step taken
        return _take_steps(table, idx, None if per_bag is None else bags, u, out)
    u0 = torch.rand(idx.numel(), generator=generator, device=idx.device)
    moved = u0 < (table.gate.index_select(0, idx) if gate is None else gate)
    if alone is not None:
        moved &= alone
    hit: torch.Tensor | None = moved
    if idx.device.type in COMPACT_DEVICES:  # few lookups move a code: only theirs are drawn (one host sync)
        which = moved.nonzero().squeeze(1)
        if not which.numel():
            return out
        idx, bags, u0, hit = idx[which], bags[which], u0[which], None
    slots = torch.index_select(table.slots, 0, idx)  # (n, M, 6); whole rows copied (advanced indexing is 4x slower)
    return _take_steps(table, idx, bags, _moving_draws(slots, u0, hit, generator), out, slots)


def _take_steps(table: SingleReads, idx: torch.Tensor, bags: torch.Tensor | None, draws: torch.Tensor,
                out: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
    """Add to ``out`` (bags, dim) the value changes of the code steps that the (n, M) uniform
    ``draws`` of the lookups of rows ``idx`` into ``bags`` take (a draw of 2 takes none;
    ``bags`` None: lookup i is bag i; ``slots``: the rows' slots when already gathered)."""
    assert table.slots is not None
    if slots is None:
        slots = torch.index_select(table.slots, 0, idx)  # (n, M, 6); whole rows copied (advanced indexing is 4x slower)
    if table.cell_of is not None:
        draws = draws.gather(1, torch.index_select(table.cell_of, 0, idx))
    change = slots[..., 2] * ((draws - slots[..., 0]).abs_() < slots[..., 1])
    if bags is None:
        return out.scatter_add_(1, slots[..., 3].long(), change)
    target = (bags * table.base.shape[1]).unsqueeze(1) + slots[..., 3].long()
    out.view(-1).index_add_(0, target.view(-1), change.view(-1))
    return out


def _moving_draws(slots: torch.Tensor, u0: torch.Tensor, hit: torch.Tensor | None,
                  generator: torch.Generator | None) -> torch.Tensor:
    """(n, M) uniform draws of lookups whose rows' slots are ``slots`` (n, M, 6), given that
    some draw moves a code (where ``hit``; elsewhere 2.0: no step), from ``u0`` uniform below
    its row's :attr:`SingleReads.any_move` (see :func:`pool_single`). With K_d = P(no draw
    <= d moves), the first moving draw J is the first d with 1 - K_d > u0, and given J,
    ``1 - (1 - u0) / K_(J-1)`` is uniform over [0, moves_J): draw J's moving intervals."""
    moves = slots[..., 4].double()
    keep = torch.cumprod(1.0 - moves, dim=1)
    u = u0.double().unsqueeze(1)
    first = (keep >= 1.0 - u).sum(1, keepdim=True).clamp_max_(moves.shape[1] - 1)
    before = torch.cat([torch.ones_like(u), keep[:, :-1]], dim=1).gather(1, first)  # K_(J-1), K_(-1) = 1
    within = 1.0 - (1.0 - u) / before
    up = slots[..., 5].gather(1, first).double()
    at = torch.where(within < up, within, up + 1.0 - within).float()  # (0, up) steps up, the rest from 1 down
    draws = torch.rand(moves.shape, generator=generator, device=u0.device)
    order = torch.arange(moves.shape[1], device=u0.device).unsqueeze(0)
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
