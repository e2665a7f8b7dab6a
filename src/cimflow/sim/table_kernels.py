"""Compiled CPU kernel of an embedding table's read (numba): grouping lookups into array reads,
lone reads from the outcome table, shared reads' sums, read noise and ADC, pooling, in one pass.

Imported only by :mod:`cimflow.sim.fused_table` when a fused table read runs (numba compiles
it once per machine, cached on disk). :mod:`cimflow.sim.fused_table` documents the read and
holds the torch-facing API; the normals are the counter-based stream of
:mod:`cimflow.sim.read_kernels` (``_fill``: element e of a draw from the hash of ``e // 2``),
the lone reads' uniforms the same hash's halves (numba's disk cache of every kernel is keyed
by all the kernel files, :mod:`cimflow.sim.kernel_cache`; tests/sim/test_fused_table.py checks
the two agree).
"""

from __future__ import annotations

import numpy as np
from numba import prange, uint64

from cimflow.sim.read_kernels import _draw_key, _fill, _inline, _kernel, _threaded, _uniform, prefetch, threads_for

#: Reads ahead whose rows a gather asks the caches for (:func:`cimflow.sim.read_kernels.prefetch`).
_AHEAD = 8
#: Partial sums converted per pass (a pass's sums, their noise and codes stay in cache).
_PASS_VALUES = 8192


@_kernel
def _convert(acc, filled, first_read, sd, noisy, mult_x, sigma_k, gain_abs, steps, tail, dk, codes, z, bits):  # noqa: ANN001, ANN202
    """ADC codes ``codes[:filled]`` of the partial sums ``acc[:filled, :sd]`` (variances in
    ``acc[:, sd:]`` when ``noisy``): ``x = sum * mult_x``, ``sigma = sqrt(var) * sigma_k *
    gain_abs``, code ``rint(clamp(x + sigma clamp(z, +-tail), +-steps))`` with z element
    ``(first_read + r) * sd + c`` of the draw keyed ``dk`` (:func:`cimflow.sim.read_kernels._fill`).
    ``z`` (at least ``filled * sd + 1``) and ``bits`` (``4 len(z) + 8``): scratch."""
    neg = -steps
    if not noisy:
        for r in range(filled):
            for c in range(sd):
                codes[r, c] = np.rint(min(max(acc[r, c] * mult_x[c], neg), steps))
        return
    start = first_read * sd
    off = start % 2  # draws start at even elements: the pair's first half drawn too
    count = filled * sd + off
    _fill(dk, start - off, z[:count], bits)
    for r in range(filled):
        zr = off + r * sd
        for c in range(sd):
            sigma = np.sqrt(max(acc[r, sd + c], np.float32(0.0))) * sigma_k * gain_abs[c]
            v = acc[r, c] * mult_x[c] + min(max(z[zr + c], -tail), tail) * sigma
            codes[r, c] = np.rint(min(max(v, neg), steps))


@_inline
def _flush(bag_codes, bag, weights, unit, out):  # noqa: ANN001, ANN202
    """``out[bag, d] += unit * sum_s bag_codes[s, d] weights[s, d]``; clears ``bag_codes``."""
    s_count, dim = weights.shape
    for d in range(dim):  # (indexed, not through row views: see read_kernels.absmax)
        t = np.float32(0.0)
        for s in range(s_count):
            t += bag_codes[s * dim + d] * weights[s, d]
        out[bag, d] += unit * t
    bag_codes[:] = 0.0


@_kernel
def _pool(codes, read_bag, filled, current, bag_codes, weights, unit, out):  # noqa: ANN001, ANN202
    """Add the codes of reads ``:filled`` to their bags' sums (``bag_codes``: the sums of bag
    ``current``, -1 for none yet), each bag flushed into ``out`` when the next begins;
    returns the bag whose sums are still open."""
    for r in range(filled):
        if read_bag[r] != current:
            if current >= 0:
                _flush(bag_codes, current, weights, unit, out)
            current = read_bag[r]
        for c in range(codes.shape[1]):
            bag_codes[c] += codes[r, c]
    return current


@_kernel
def _lone_steps(row, bag, u0, first, slots, cell_of, dk, draws, out):  # noqa: ANN001, ANN202
    """Add to ``out[bag]`` the code steps of a lone read of ``row`` whose first uniform ``u0``
    fell below its row's P(some draw moves) (:func:`cimflow.sim.pooling.pool_single`'s second
    stage): the first moving draw J by inverting P(J <= d) with ``u0``, draw J placed in its
    moving intervals by ``1 - (1 - u0) / K_(J-1)``, the draws before J in none, those after J
    fresh (elements ``first + 1 + d`` of the draw keyed ``dk``). (A function of its own, called
    for the few lookups that move: inlined, its arrays' reference counting would cost every lookup.)"""
    n_draws = slots.shape[1]
    u = np.float64(u0)
    keep, before, moving = 1.0, 1.0, n_draws - 1
    for d in range(n_draws):
        before = keep
        keep = keep * (1.0 - np.float64(slots[row, d, 4]))
        if keep < 1.0 - u:
            moving = d
            break
    within = 1.0 - (1.0 - u) / before
    up = np.float64(slots[row, moving, 5])
    at = np.float32(within if within < up else up + 1.0 - within)
    for d in range(n_draws):
        draws[d] = np.float32(2.0) if d < moving else (at if d == moving else _uniform(dk, first + uint64(1 + d)))
    many = cell_of.shape[0] > 0
    for k in range(n_draws):
        u_k = draws[cell_of[row, k]] if many else draws[k]
        if abs(u_k - slots[row, k, 0]) < slots[row, k, 1]:
            out[bag, np.int64(slots[row, k, 3])] += slots[row, k, 2]


@_inline
def _gate_of(gate, row):  # noqa: ANN001, ANN202
    """:func:`plan`'s ``lone`` entry of a one-lookup read of ``row``: its gate where at most 1
    (-1: not built yet), else -2 (its steps overflow the slots: a shared read); -2 without
    an outcome table (``gate`` empty)."""
    if gate.shape[0] == 0:
        return np.float32(-2.0)
    g = gate[row]
    return g if g <= np.float32(1.0) else np.float32(-2.0)


@_inline
def _add_into(acc, bag, out):  # noqa: ANN001, ANN202
    """``out[bag] += acc`` (nothing where ``bag`` < 0); clears ``acc``."""
    if bag >= 0:
        for d in range(acc.shape[0]):
            out[bag, d] += acc[d]
            acc[d] = 0.0


@_kernel
def _lone_values(idx, first, read_bag, lone, base, out):  # noqa: ANN001, ANN202
    """Add to ``out`` the noise-free values ``base[row]`` of :func:`plan`'s lone reads (``lone``
    >= 0), the rows of the reads ``_AHEAD`` on asked for meanwhile (random rows of a large
    table), summed per bag in a buffer of their own (``out[bag, d] +=`` row by row took twice
    as long: 0.30 ms against 0.16 for 20,480 rows of 64 from 10^6, plain ``embedding_bag``
    0.13). (A function of its own: inlined in :func:`pool_bags`, the gather ran slower, the
    whole read of 20,480 lookups of a 10^6-row table 0.57 ms in place of 0.52.)"""
    reads = lone.shape[0]
    dim = base.shape[1]
    acc = np.zeros(dim, np.float32)  # the bag's sum: added to ``out`` once per bag
    current = -1
    for r in range(reads):
        if r + _AHEAD < reads:
            ahead = idx[first[r + _AHEAD]]
            for d in range(0, dim, 16):
                prefetch(base, ahead, d)
        if lone[r] >= 0:
            row, bag = idx[first[r]], read_bag[r]
            if bag != current:
                _add_into(acc, current, out)
                current = bag
            for d in range(dim):
                acc[d] += base[row, d]
    _add_into(acc, current, out)


@_inline
def _shift_of(array_rows):  # noqa: ANN001, ANN202
    """log2 of ``array_rows`` where a power of two (a row's array by a shift), else -1."""
    shift = 0
    while (1 << shift) < array_rows:
        shift += 1
    return shift if (1 << shift) == array_rows else -1


@_inline
def _array_of(row, shift, array_rows):  # noqa: ANN001, ANN202
    """The array holding ``row`` (:func:`_shift_of`'s ``shift``)."""
    return row >> shift if shift >= 0 else row // array_rows


@_kernel
def _moved_steps(idx, lookup, bag, u0, n_moved, slots, cell_of, dk, out):  # noqa: ANN001, ANN202
    """:func:`_lone_steps` of the lone reads of lookups ``lookup[:n_moved]`` into bags ``bag``
    whose first uniforms ``u0`` moved, their slots asked for ``_AHEAD`` reads on."""
    n_draws = slots.shape[1]
    slot_cells = slots.reshape(slots.shape[0], n_draws * slots.shape[2])  # (for prefetch)
    last = slot_cells.shape[1] - 1
    draws = np.empty(n_draws, np.float32)
    for j in range(n_moved):
        if j + _AHEAD < n_moved:
            ahead = idx[lookup[j + _AHEAD]]
            prefetch(slot_cells, ahead, 0)
            prefetch(slot_cells, ahead, last)
        i = lookup[j]
        _lone_steps(idx[i], bag[j], u0[j], uint64(i) * uint64(n_draws + 1), slots, cell_of, dk, draws, out)


@_kernel
def _lone_moves(idx, lookups, gates, bags, slots, cell_of, key, draw, out):  # noqa: ANN001, ANN202
    """The code steps of lone reads into ``out`` (none without an outcome table's ``slots``):
    read ``j`` of lookup ``lookups[j]``, its row's gate ``gates[j]`` (P(some draw moves a
    code); not above 0: no read, or one that never moves) and bag ``bags[j]``. The read's
    first uniform is element ``lookup (M + 1)`` of draw ``2 draw + 1`` of stream ``key``
    (the lone reads' own), drawn only where the gate is above 0 (a uniform in [0, 1) is below no
    other: 68 % of the Criteo-like tables' rows never move a code), in a loop with no branch;
    the reads whose uniform fell below their gate get :func:`_moved_steps` (listed first:
    their slots are asked for ``_AHEAD`` reads on)."""
    n_draws = slots.shape[1]
    if slots.shape[0] == 0 or n_draws == 0:
        return
    dk = _draw_key(key, uint64(2) * uint64(draw) + uint64(1))
    live = np.empty(gates.shape[0], np.int64)
    n_live = 0
    for j in range(gates.shape[0]):
        live[n_live] = j
        n_live += gates[j] > np.float32(0.0)
    u0 = np.empty(n_live, np.float32)
    for k in range(n_live):
        u0[k] = _uniform(dk, uint64(lookups[live[k]]) * uint64(n_draws + 1))
    n_moved = 0
    for k in range(n_live):  # (kept in place: a moved read and its uniform move down)
        j = live[k]
        live[n_moved] = j
        u0[n_moved] = u0[k]
        n_moved += u0[k] < gates[j]
    if n_moved:
        lookup, bag = np.empty(n_moved, np.int64), np.empty(n_moved, np.int64)
        for k in range(n_moved):
            lookup[k], bag[k] = lookups[live[k]], bags[live[k]]
        _moved_steps(idx, lookup, bag, u0, n_moved, slots, cell_of, dk, out)


def _lone_bags(idx, bags, array_rows, n_arrays, gate, base, slots, cell_of, key, draw, out, parts):  # noqa: ANN001, ANN202
    """Read every lone read straight from the outcome table, with no plan: the lookups of
    ``idx`` in ``bags`` (non-decreasing) alone in their array within their bag whose row's
    gate is in [0, 1]. Into ``out``: their rows' noise-free values summed per bag, then the
    code steps of those whose first uniform moved (:func:`_moved_steps`). Returns the
    lookups left for :func:`plan` (their indices, in order) and how many were read here (none
    without an outcome table). Every read of a table (:func:`read_flat`, :func:`plan_flat`,
    ``fused_table.pool``) starts here, so each gives the same sums in the same order. Most
    of a large table's lookups are lone reads (arrays far outnumber a bag's lookups), many in
    bags that also have shared reads: against reading here only the bags with no other read
    (one process, 15 interleaved rounds, 1 thread), 20,480 lookups at pooling 20 of a 10^6-row
    table 0.81 -> 0.62 ms, of a 10^5-row table 1.82 -> 1.52 ms; 10^4 rows, the 26 Criteo-like
    tables and one-hot tables unchanged. The lookups are read in ``parts`` runs of whole bags
    (:func:`_part_bounds`), each its own bags' sums: the same bits for any ``parts``, the runs
    shared among numba's threads in :data:`lone_bags_threads`."""
    n = idx.shape[0]
    taken = np.zeros(n, np.bool_)
    if gate.shape[0] == 0 or base.shape[0] == 0:
        return np.arange(n), 0
    one_each = True  # every bag one lookup (bags strictly increasing): every lookup alone
    for i in range(1, n):
        one_each &= bags[i] != bags[i - 1]
    bounds = _part_bounds(bags, parts)
    gates = np.full(n, np.float32(-1.0))  # per lookup read here: its row's gate
    keys = np.empty(n, np.int64)  # (scratch: each lookup's array)
    read = 0
    for part in prange(bounds.shape[0] - 1):
        read += _lone_run(idx, bags, bounds[part], bounds[part + 1], one_each, array_rows, n_arrays, gate, base, slots, cell_of,
                          key, draw, out, taken, gates, keys)
    rest = np.empty(n - read, np.int64)
    j = 0
    for i in range(n if read < n else 0):
        if not taken[i]:
            rest[j] = i
            j += 1
    return rest, read


lone_bags = _kernel(_lone_bags)
#: :func:`lone_bags` with its runs of bags shared among numba's threads
lone_bags_threads = _threaded(_lone_bags)


@_kernel
def _part_bounds(bags, parts):  # noqa: ANN001, ANN202
    """``parts`` runs of about equal lookups (of ``bags``, non-decreasing), each of whole
    bags: the runs' first lookups and the end (fewer runs where bags are few)."""
    n = bags.shape[0]
    bounds = np.empty(parts + 1, np.int64)
    bounds[0] = 0
    count = 1
    for p in range(1, parts):
        b = max(bounds[count - 1], (n * p) // parts)
        while 0 < b < n and bags[b] == bags[b - 1]:
            b += 1
        if b > bounds[count - 1] and b < n:
            bounds[count] = b
            count += 1
    bounds[count] = n
    return bounds[:count + 1]


@_kernel
def _lone_run(idx, bags, i_start, i_end, one_each, array_rows, n_arrays, gate, base, slots, cell_of, key, draw, out, taken,  # noqa: ANN001, ANN202
              gates, keys):
    """:func:`lone_bags` of the lookups ``i_start .. i_end`` (whole bags): their lone reads'
    values and code steps into ``out``, ``taken`` and ``gates`` set for them; returns how many."""
    dim = base.shape[1]
    gate2 = gate.reshape(gate.shape[0], 1)  # (for prefetch)
    read = 0
    if one_each:
        for i in range(i_start, i_end):
            if i + _AHEAD < i_end:
                ahead = idx[i + _AHEAD]
                prefetch(gate2, ahead, 0)
                for d in range(0, dim, 16):
                    prefetch(base, ahead, d)
            row = idx[i]
            g = gate[row]
            if g >= np.float32(0.0) and g <= np.float32(1.0):
                bag = bags[i]
                for d in range(dim):
                    out[bag, d] += base[row, d]
                gates[i] = g
                taken[i] = True
                read += 1
    else:
        shift = _shift_of(array_rows)
        marked = np.full(n_arrays, -1, np.int64)  # per array: the first lookup of the last bag that read it
        count = np.empty(n_arrays, np.int64)  # per array: the bag's lookups in it (valid where marked by the bag)
        acc = np.zeros(dim, np.float32)  # the bag's sum: added to ``out`` once per bag
        i0 = i_start
        while i0 < i_end:
            bag = bags[i0]
            i1 = i0
            while i1 < i_end and bags[i1] == bag:  # the bag's lookups per array; their rows asked for
                if i1 + _AHEAD < i_end:
                    ahead = idx[i1 + _AHEAD]
                    prefetch(gate2, ahead, 0)
                    for d in range(0, dim, 16):
                        prefetch(base, ahead, d)
                a = _array_of(idx[i1], shift, array_rows)
                keys[i1] = a
                count[a] = 1 if marked[a] != i0 else count[a] + 1
                marked[a] = i0
                i1 += 1
            lone = 0
            for i in range(i0, i1):
                row = idx[i]
                g = gate[row]
                if count[keys[i]] == 1 and g >= np.float32(0.0) and g <= np.float32(1.0):
                    for d in range(dim):
                        acc[d] += base[row, d]
                    gates[i] = g
                    taken[i] = True
                    lone += 1
            if lone:
                _add_into(acc, bag, out)
                read += lone
            i0 = i1
    _lone_moves(idx, np.arange(i_start, i_end), gates[i_start:i_end], bags[i_start:i_end], slots, cell_of, key, draw, out)
    return read


@_kernel
def plan(idx, bags, array_rows, n_arrays, group_rows, gate):  # noqa: ANN001, ANN201
    """The reads of a forward: ``perm`` (the lookups bag by bag, each bag's grouped by array
    ``idx // array_rows`` < ``n_arrays``, arrays in the order the bag first reads them),
    ``starts`` (reads + 1: read r is ``perm[starts[r]:starts[r + 1]]``, each array's lookups
    cut every ``group_rows``), each read's bag, and ``lone``: for a lone read (one lookup whose
    row fits the outcome table, ``0 <= gate[row] <= 1``; ``gate`` empty: no table, no lone
    read) its row's gate, -1 for a one-lookup read of a row not built yet (``gate`` -1: a lazy
    table's), -2 for a shared read. Returns ``(perm, starts, first, read_bag, lone)``, ``first``
    each read's first lookup ``perm[starts[r]]`` (the last four as long as the reads). No
    sort: a bag whose lookups all fall in arrays of their own (most bags where arrays far
    outnumber a bag's lookups) is found by marking each array with the bag's first lookup,
    and read lookup by lookup; the others' lookups are grouped by the counts per array taken
    meanwhile (a table of ``n_arrays`` entries, an entry restarted where the bag first reads
    its array: no clearing). The gate's rows are asked for ``_AHEAD`` lookups ahead (random
    rows of a large table)."""
    n = idx.shape[0]
    gate2 = gate.reshape(gate.shape[0], 1)  # (for prefetch)
    has_gate = gate.shape[0] > 0
    one_each = True  # every bag one lookup (bags strictly increasing): one read per lookup, in order
    for i in range(1, n):
        one_each &= bags[i] != bags[i - 1]
    if one_each:
        lone = np.empty(n, np.float32)
        for i in range(n):
            if has_gate and i + _AHEAD < n:
                prefetch(gate2, idx[i + _AHEAD], 0)
            lone[i] = _gate_of(gate, idx[i])
        order = np.arange(n)
        return order, np.arange(n + 1), order, bags.copy(), lone
    shift = _shift_of(array_rows)
    keys = np.empty(n, np.int64)
    for i in range(n):
        keys[i] = _array_of(idx[i], shift, array_rows)
    marked = np.full(n_arrays, -1, np.int64)  # per array: the first lookup of the last bag that read it
    count = np.empty(n_arrays, np.int64)  # per array: the bag's lookups in it (valid where marked by the bag)
    head = np.empty(n_arrays, np.int64)
    group_start = np.empty(64, np.int64)
    group_size = np.empty(64, np.int64)
    perm = np.empty(n, np.int64)
    starts = np.empty(n + 1, np.int64)
    first = np.empty(n, np.int64)
    read_bag = np.empty(n, np.int64)
    lone = np.empty(n, np.float32)
    reads = 0
    i0 = 0
    while i0 < n:
        bag = bags[i0]
        own = True  # every lookup of the bag in an array of its own
        i1 = i0
        while i1 < n and bags[i1] == bag:
            if has_gate and i1 + _AHEAD < n:
                prefetch(gate2, idx[i1 + _AHEAD], 0)
            k = keys[i1]
            fresh = marked[k] != i0
            count[k] = 1 if fresh else count[k] + 1
            marked[k] = i0
            own &= fresh
            i1 += 1
        if own:  # one read per lookup, in order
            for i in range(i0, i1):
                perm[i] = i
                starts[reads] = i
                first[reads] = i
                read_bag[reads] = bag
                lone[reads] = _gate_of(gate, idx[i])
                reads += 1
            i0 = i1
            continue
        if i1 - i0 > group_start.shape[0]:
            group_start = np.empty(2 * (i1 - i0), np.int64)
            group_size = np.empty(2 * (i1 - i0), np.int64)
        pos, groups = i0, 0
        for i in range(i0, i1):  # each array's place in perm, in order of first appearance
            k = keys[i]
            c = count[k]
            if c > 0:
                head[k] = pos
                group_start[groups] = pos
                group_size[groups] = c
                groups += 1
                pos += c
                count[k] = 0  # (placed)
        for i in range(i0, i1):
            k = keys[i]
            perm[head[k]] = i
            head[k] += 1
        for g in range(groups):
            a, end = group_start[g], group_start[g] + group_size[g]
            while a < end:
                starts[reads] = a
                first[reads] = perm[a]
                read_bag[reads] = bag
                lone[reads] = _gate_of(gate, idx[perm[a]]) if min(end - a, group_rows) == 1 else np.float32(-2.0)
                reads += 1
                a += group_rows
        i0 = i1
    starts[reads] = n
    return perm, starts[:reads + 1], first[:reads], read_bag[:reads], lone[:reads]


@_kernel
def shared_lookups(perm, starts, lone, shared):  # noqa: ANN001, ANN201
    """Mark in ``shared`` (bool) the lookups that :func:`pool_bags` reads through shared reads
    (the reads of :func:`plan`, every row built); returns how many."""
    count = 0
    for r in range(lone.shape[0]):
        for p in range(starts[r], starts[r + 1]):
            shared[perm[p]] = lone[r] < 0
        count += 0 if lone[r] >= 0 else starts[r + 1] - starts[r]
    return count


def _pool_bags(idx, perm, starts, first, read_bag, lone, where, values, base, slots, cell_of,  # noqa: ANN001, ANN202
               mult_x, sigma_k, gain_abs, steps, tail, weights, unit, key, draw, out, parts):
    """Read and pool the lookups of rows ``idx`` (int64) in the reads ``perm``, ``starts``,
    ``first``, ``read_bag``, ``lone`` (:func:`plan`'s), accumulating into ``out`` (bags, dim)
    float32.

    A lone read (``lone[r]`` >= 0: its row's gate; the outcome table's ``base`` (rows, dim),
    ``slots`` (rows, M, 6), ``cell_of`` (rows, M) int64 or empty, as
    :class:`cimflow.sim.pooling.SingleReads` holds them; all empty: no table) adds its row's
    noise-free value and the code steps of :func:`_lone_steps`. Every other read is a shared
    read: its partial sums are the sum of ``values[where[i]]`` over its lookups (``where`` as
    :func:`row_slots` sets it; ``values`` float32 (rows, S dim): effective weights in cell
    units, then, when the width is 2 S dim, the cells' read-noise variances), its codes
    :func:`_convert`'s (``mult_x``, ``gain_abs`` (S dim) and ``sigma_k``: the ADC's steps per
    cell times the compensation gain), summed per bag and combined over slices with
    ``weights`` (S, dim) times ``unit``. Randomness: the shared reads' normals are draw ``2
    draw`` of stream ``key`` (shared read r's column c its element ``r S dim + c``, shared
    reads numbered in :func:`plan`'s order), the lone reads' uniforms draw ``2 draw + 1``.
    The shared reads are read in ``parts`` runs of whole bags (:func:`_part_bounds` of the
    reads' bags, each run numbering its shared reads from those before it): the same bits
    for any ``parts``, the runs shared among numba's threads in :data:`pool_bags_threads`."""
    reads = lone.shape[0]
    # lone reads first: the noise-free values (:func:`_lone_values`), then the code steps of
    # those that moved (:func:`_lone_moves`: draws of their own, ``2 draw + 1``; a shared
    # read's ``lone`` -2 is no gate)
    if base.shape[0] > 0:
        _lone_values(idx, first, read_bag, lone, base, out)
        _lone_moves(idx, first, lone, read_bag, slots, cell_of, key, draw, out)
    shared = 0
    for r in range(reads):
        shared += lone[r] < 0
    if shared == 0:  # (no scratch to make)
        return
    bounds = _part_bounds(read_bag, parts if shared >= 2 * parts else 1)  # (too few shared reads to share out: one run)
    before = np.zeros(bounds.shape[0], np.int64)  # per run: the shared reads of the runs before it
    for part in range(bounds.shape[0] - 1):
        count = 0
        for r in range(bounds[part], bounds[part + 1]):
            count += lone[r] < 0
        before[part + 1] = before[part] + count
    sd = weights.shape[0] * weights.shape[1]
    per_pass = max(1, min(shared, _PASS_VALUES // sd))
    dk = _draw_key(key, uint64(2) * uint64(draw))
    for part in prange(bounds.shape[0] - 1):
        if before[part + 1] > before[part]:
            _shared_run(perm, starts, read_bag, lone, where, values, bounds[part], bounds[part + 1], before[part], per_pass, mult_x,
                        sigma_k, gain_abs, steps, tail, weights, unit, dk, out)


pool_bags = _kernel(_pool_bags)
#: :func:`pool_bags` with its shared reads' runs of bags shared among numba's threads
pool_bags_threads = _threaded(_pool_bags)


@_kernel
def _shared_run(perm, starts, read_bag, lone, where, values, r_start, r_end, converted, per_pass,  # noqa: ANN001, ANN202
                mult_x, sigma_k, gain_abs, steps, tail, weights, unit, dk, out):
    """:func:`pool_bags`'s shared reads among the reads ``r_start .. r_end`` (whole bags; the
    first of them shared read number ``converted``), ``per_pass`` a pass: their partial sums
    gathered, converted (:func:`_convert`) and pooled into their bags of ``out``."""
    sd = weights.shape[0] * weights.shape[1]
    width = values.shape[1]
    noisy = width > sd
    steps, tail, sigma_k, unit = np.float32(steps), np.float32(tail), np.float32(sigma_k), np.float32(unit)
    acc = np.empty((per_pass, width), np.float32)
    pass_bag = np.empty(per_pass, np.int64)
    codes = np.empty((per_pass, sd), np.float32)
    z = np.empty(per_pass * sd + 1, np.float32)
    bits = np.empty(4 * (per_pass * sd + 2), np.uint32)  # _fill's scratch (4 per pair is enough)
    bag_codes = np.zeros(sd, np.float32)
    current = -1
    filled = 0
    for r in range(r_start, r_end):
        if lone[r] >= 0:
            continue
        if filled == per_pass:  # convert the pass, pool its codes
            _convert(acc, filled, converted, sd, noisy, mult_x, sigma_k, gain_abs, steps, tail, dk, codes, z, bits)
            current = _pool(codes, pass_bag, filled, current, bag_codes, weights, unit, out)
            converted += filled
            filled = 0
        at = where[perm[starts[r]]]
        for c in range(width):
            acc[filled, c] = values[at, c]
        for p in range(starts[r] + 1, starts[r + 1]):
            other = where[perm[p]]
            for c in range(width):
                acc[filled, c] += values[other, c]
        pass_bag[filled] = read_bag[r]
        filled += 1
    if filled:
        _convert(acc, filled, converted, sd, noisy, mult_x, sigma_k, gain_abs, steps, tail, dk, codes, z, bits)
        current = _pool(codes, pass_bag, filled, current, bag_codes, weights, unit, out)
    if current >= 0:
        _flush(bag_codes, current, weights, unit, out)


@_kernel
def row_slots(idx, perm, starts, lone, slot_of, values, where):  # noqa: ANN001, ANN201
    """Where the lookups of :func:`plan`'s shared reads find their rows: ``where[i]``, the row
    of ``values`` holding row ``idx[i]``, is ``slot_of[idx[i]]`` (a lazy table's rows kept once
    hashed, -1 where not kept) or, ``slot_of`` empty, ``idx[i]`` (a cached table's rows; none
    where ``values`` is empty too). Returns how many lookups have no values to read: those of
    shared reads whose rows are not kept and those of one-lookup reads of rows not built yet
    (``lone`` -1): the caller builds, keeps or hashes them before :func:`pool_bags`. (Lone
    reads' lookups are left as they were: :func:`pool_bags` reads them from the outcome table.)"""
    kept = slot_of.shape[0] > 0
    own = values.shape[0] > 0
    missing = 0
    for r in range(lone.shape[0]):
        if lone[r] >= 0:
            continue
        if lone[r] == np.float32(-1.0):
            missing += 1
            continue
        for p in range(starts[r], starts[r + 1]):
            i = perm[p]
            at = slot_of[idx[i]] if kept else (idx[i] if own else -1)
            where[i] = at
            missing += at < 0
    return missing


@_kernel
def _checked(values, offsets, include_last, num_rows, n_bags):  # noqa: ANN001, ANN202
    """A 1-D embedding-bag input ``values`` (int64) cut by int64 ``offsets`` into ``n_bags``
    bags, checked (:func:`bag_extents`): ``(valid, indices used, their bags)``, not valid
    where the offsets are not or an index used is outside ``[0, num_rows)``."""
    n = values.shape[0]
    counts = np.empty(n_bags, np.int64)
    bags = np.empty(n, np.int64)
    _, last, _, _, lowest, highest, valid = bag_extents(values, offsets, include_last, counts, bags)
    used = min(last if include_last else n, n)
    return valid and lowest >= 0 and highest < num_rows, values[:used], bags[:used]


@_kernel
def _plan_rest(idx, bags, rest, array_rows, n_arrays, group_rows, gate):  # noqa: ANN001, ANN202
    """:func:`plan` of the lookups ``rest`` (indices, in order) alone, its ``perm`` and ``first``
    given as the lookups' own indices. (Against a plan walking every lookup and skipping those
    read before, one process, 15 interleaved rounds: 10^6 rows at pooling 20 0.70 -> 0.58 ms,
    10^5 rows 1.83 -> 1.41 ms, 10^4 rows 3.35 -> 2.96 ms, 26 Criteo-like tables 5.2 -> 4.8 ms.)"""
    perm, starts, first, read_bag, lone = plan(idx[rest], bags[rest], array_rows, n_arrays, group_rows, gate)
    return rest[perm], starts, rest[first], read_bag, lone


@_kernel
def lone_then_plan(idx, bags, array_rows, n_arrays, group_rows, gate, slot_of, table_values, base, slots, cell_of, key, draw,  # noqa: ANN001, ANN201
                   out):
    """The start of every read of a table: :func:`lone_bags` (the lone reads, into ``out``),
    then :func:`plan` of the other lookups and :func:`row_slots` (the shared reads' rows in
    ``table_values`` through ``slot_of``). Returns ``(lone reads, missing, perm, starts,
    first, read_bag, lone, where)``: ``missing`` the lookups with no values to read yet."""
    rest, lone_reads = lone_bags(idx, bags, array_rows, n_arrays, gate, base, slots, cell_of, key, draw, out, 1)
    if rest.shape[0] == 0:  # every lookup read: no reads left
        none = np.empty(0, np.int64)
        return lone_reads, np.int64(0), none, none, none, none, np.empty(0, np.float32), none
    perm, starts, first, read_bag, lone = _plan_rest(idx, bags, rest, array_rows, n_arrays, group_rows, gate)
    where = np.empty(idx.shape[0], np.int64)
    missing = row_slots(idx, perm, starts, lone, slot_of, table_values, where)
    return lone_reads, missing, perm, starts, first, read_bag, lone, where


@_kernel
def plan_flat(values, offsets, include_last, num_rows, array_rows, n_arrays, group_rows, gate, slot_of, table_values,  # noqa: ANN001, ANN201
              base, slots, cell_of, key, draw, out):
    """A 1-D embedding-bag input ``values`` (int64) cut by int64 ``offsets`` into the bags of
    ``out``, checked (:func:`_checked`), its lone reads read into ``out`` and the others
    planned (:func:`lone_then_plan`). Returns ``(lone reads, missing, idx, perm, starts,
    first, read_bag, lone, where)``: ``missing`` -1 (nothing read, empty arrays) where the
    offsets are not valid or an index used is outside ``[0, num_rows)``, else the number of
    lookups with no values to read; the indices used, the plan and ``where``."""
    valid, idx, bags = _checked(values, offsets, include_last, num_rows, out.shape[0])
    if not valid:
        none = np.empty(0, np.int64)
        return 0, -1, values[:0], none, none, none, none, np.empty(0, np.float32), none
    lone_reads, missing, perm, starts, first, read_bag, lone, where = lone_then_plan(
        idx, bags, array_rows, n_arrays, group_rows, gate, slot_of, table_values, base, slots, cell_of, key, draw, out)
    return lone_reads, missing, idx, perm, starts, first, read_bag, lone, where


@_kernel
def read_flat(values, offsets, include_last, num_rows, array_rows, n_arrays, group_rows, gate, slot_of, table_values,  # noqa: ANN001, ANN201
              base, slots, cell_of, mult_x, sigma_k, gain_abs, steps, tail, weights, unit, key, draw, out, parts):
    """:func:`plan_flat` then :func:`pool_bags` into ``out`` (bags, dim; as many bags as
    offsets less ``include_last``) in one call. Returns the number of array reads, -1
    (nothing written) where the input is not valid, -2 (``out`` zero, nothing drawn) where
    some lookup has no values to read: the caller then plans again (:func:`plan_flat`), makes
    the rows missing and reads (:func:`pool_bags`). (The plan is returned only then: six
    arrays handed to Python cost ~2 us, a small table's whole read ~30 us.) The lone reads
    and the shared reads run on ``parts`` of numba's threads where more than one
    (:data:`lone_bags_threads`, :data:`pool_bags_threads`: the same bits)."""
    valid, idx, bags = _checked(values, offsets, include_last, num_rows, out.shape[0])
    if not valid:
        return -1
    # (lone_then_plan's steps written out: returning its eight arrays cost a one-hot table's
    # read of 1,024 lookups ~1 us of its ~11, measured)
    if parts > 1:  # the lone reads in runs of bags on numba's threads (the same bits)
        rest, lone_reads = lone_bags_threads(idx, bags, array_rows, n_arrays, gate, base, slots, cell_of, key, draw, out, parts)
    else:
        rest, lone_reads = lone_bags(idx, bags, array_rows, n_arrays, gate, base, slots, cell_of, key, draw, out, 1)
    if rest.shape[0] == 0:
        return lone_reads
    perm, starts, first, read_bag, lone = _plan_rest(idx, bags, rest, array_rows, n_arrays, group_rows, gate)
    where = np.empty(idx.shape[0], np.int64)
    if row_slots(idx, perm, starts, lone, slot_of, table_values, where) != 0:
        out[:] = 0.0
        return -2
    if parts > 1:
        pool_bags_threads(idx, perm, starts, first, read_bag, lone, where, table_values, base, slots, cell_of, mult_x, sigma_k,
                          gain_abs, steps, tail, weights, unit, key, draw, out, parts)
    else:
        pool_bags(idx, perm, starts, first, read_bag, lone, where, table_values, base, slots, cell_of, mult_x, sigma_k, gain_abs,
                  steps, tail, weights, unit, key, draw, out, 1)
    return lone_reads + lone.shape[0]


@_kernel
def bag_extents(values, offsets, include_last, counts, bags):  # noqa: ANN001, ANN201
    """A 1-D embedding-bag input cut by ``offsets`` (int64), in one pass: ``counts`` (the bags'
    sizes, as many as bags) and, where the offsets are valid (first 0, never decreasing,
    within the input), ``bags`` (each used index's bag). Returns ``(first offset, last offset,
    fewest, most, lowest index, highest index, valid)``, the indices' extremes over the used
    ones (0, 0 when none)."""
    n, n_off, n_bags = values.shape[0], offsets.shape[0], counts.shape[0]
    for b in range(n_bags):
        counts[b] = (offsets[b + 1] if b + 1 < n_off else n) - offsets[b]
    fewest, most = (offsets[0], offsets[0]) if n_bags == 0 else (counts[0], counts[0])
    for b in range(n_bags):
        fewest = min(fewest, counts[b])
        most = max(most, counts[b])
    first, last = offsets[0], offsets[n_off - 1]
    valid = first == 0 and fewest >= 0 and last <= n
    used = min(last if include_last else n, n)
    lowest, highest = np.int64(0), np.int64(0)
    if used > 0:
        lowest, highest = np.int64(values[0]), np.int64(values[0])
        for i in range(used):
            lowest = min(lowest, np.int64(values[i]))
            highest = max(highest, np.int64(values[i]))
    if valid:
        pos = 0
        for b in range(n_bags):
            for _ in range(counts[b]):
                bags[pos] = b
                pos += 1
    return first, last, fewest, most, lowest, highest, valid


__all__ = ["bag_extents", "lone_bags", "lone_bags_threads", "lone_then_plan", "plan", "plan_flat", "pool_bags", "pool_bags_threads",
           "read_flat", "row_slots", "shared_lookups", "threads_for"]
