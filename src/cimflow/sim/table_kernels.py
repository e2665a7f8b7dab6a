"""Compiled CPU kernel of an embedding table's shared reads (numba): grouping, sums, read
noise, ADC and pooling in one pass.

Imported only by :mod:`cimflow.sim.fused_table` when a fused table read runs (numba compiles
it once per machine, cached on disk). :mod:`cimflow.sim.fused_table` documents the read and
holds the torch-facing API; the normals are the counter-based stream of
:mod:`cimflow.sim.read_kernels` (element e of a draw from the hash of ``e // 2``).
"""

from __future__ import annotations

import numpy as np
from numba import uint32, uint64

from cimflow.sim.read_kernels import _GOLDEN, _draw_key, _inline, _kernel, _mix, quantiles

#: Bags with at most this many lookups are ordered by array with an insertion sort (larger
#: ones with a merge sort).
_INSERTION = 48
#: Partial sums converted per pass (a pass's sums, their noise and codes stay in cache).
_PASS_VALUES = 8192


@_inline
def _order_by_array(idx, i0, m, array_rows, keys, order):  # noqa: ANN001, ANN202
    """``keys[:m]``: the arrays of lookups ``i0 .. i0 + m`` in increasing order, ``order[:m]``
    the lookups (stable: equal arrays keep the lookups' order)."""
    for j in range(m):
        keys[j] = idx[i0 + j] // array_rows
        order[j] = i0 + j
    if m <= _INSERTION:
        for j in range(1, m):
            kj, oj = keys[j], order[j]
            p = j - 1
            while p >= 0 and keys[p] > kj:
                keys[p + 1], order[p + 1] = keys[p], order[p]
                p -= 1
            keys[p + 1], order[p + 1] = kj, oj
    else:
        perm = np.argsort(keys[:m], kind="mergesort")
        sorted_keys = keys[:m][perm]
        keys[:m] = sorted_keys
        order[:m] = perm + i0


@_inline
def _element_bits(dk, e):  # noqa: ANN001, ANN202
    """The 32 random bits of element ``e`` of the draw keyed ``dk`` (as ``read_kernels._fill``)."""
    h = _mix(dk + (uint64(e // 2) + uint64(1)) * _GOLDEN)
    return uint32(h >> uint64(32)) if e % 2 == 0 else uint32(h & uint64(0xFFFFFFFF))


@_kernel
def _convert(acc, filled, first_read, sd, noisy, mult_x, sigma_k, gain_abs, steps, tail, dk, codes,  # noqa: ANN001, ANN202
             xs, sigmas, near_at, bits, z):
    """ADC codes ``codes[:filled]`` of the partial sums ``acc[:filled, :sd]`` (variances in
    ``acc[:, sd:]`` when ``noisy``): ``x = sum * mult_x``, ``sigma = sqrt(var) * sigma_k *
    gain_abs``, code ``rint(clamp(x + sigma clamp(z, +-tail), +-steps))`` with z element
    ``(first_read + r) * sd + c`` of the draw; z is drawn only where a decision boundary is
    within ``tail`` sigma (elsewhere every z in the clamp gives ``rint(x)``: the same code).
    ``xs``, ``sigmas`` (as ``codes``), ``near_at``, ``bits``, ``z`` (``codes.size``): scratch."""
    neg = -steps
    half = np.float32(0.5)
    for r in range(filled):  # vectorized: sums in steps, noise-free codes, noise in steps
        ar, cr, xr, sr = acc[r], codes[r], xs[r], sigmas[r]
        for c in range(sd):
            x = ar[c] * mult_x[c]
            xr[c] = x
            cr[c] = np.rint(min(max(x, neg), steps))
        if noisy:
            for c in range(sd):
                sr[c] = np.sqrt(max(ar[sd + c], np.float32(0.0))) * sigma_k * gain_abs[c]
    if not noisy:
        return
    x_flat, s_flat, flat = xs.reshape(-1), sigmas.reshape(-1), codes.reshape(-1)
    count = 0
    for i in range(filled * sd):  # the sums a draw can move, compacted without a branch
        near_at[count] = i
        count += abs(x_flat[i] - np.rint(x_flat[i])) + s_flat[i] * tail >= half
    if count == 0:
        return
    base = uint64(first_read) * uint64(sd)
    for j in range(count):
        bits[j] = _element_bits(dk, base + uint64(near_at[j]))
    quantiles(bits[:count], z[:count])
    for j in range(count):
        i = near_at[j]
        v = x_flat[i] + min(max(z[j], -tail), tail) * s_flat[i]
        flat[i] = np.rint(min(max(v, neg), steps))


@_inline
def _flush(bag_codes, bag, weights, unit, out):  # noqa: ANN001, ANN202
    """``out[bag, d] += unit * sum_s bag_codes[s, d] weights[s, d]``; clears ``bag_codes``."""
    s_count, dim = weights.shape
    orow = out[bag]
    for d in range(dim):
        t = np.float32(0.0)
        for s in range(s_count):
            t += bag_codes[s * dim + d] * weights[s, d]
        orow[d] += unit * t
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
        cr = codes[r]
        for c in range(cr.shape[0]):
            bag_codes[c] += cr[c]
    return current


@_kernel
def shared_reads(values, where, idx, bags, array_rows, group_rows, mult_x, sigma_k, gain_abs, steps, tail,  # noqa: ANN001, ANN201
                 weights, unit, key, draw, out):
    """Read and pool the lookups of rows ``idx`` (int64, in non-decreasing ``bags``) that
    share array reads, accumulating into ``out`` (bags, dim) float32. A bag's lookups are
    ordered by array (``idx // array_rows``); each run of one array is read ``group_rows``
    lookups at a time. A read's partial sums are the sum of ``values[where[i]]`` over its
    lookups (float32 (rows, S dim): effective weights in cell units, then, when the width is
    2 S dim, the cells' read-noise variances). Codes by :func:`_convert` (``mult_x``,
    ``gain_abs`` (S dim) and ``sigma_k``: the ADC's steps per cell times the compensation
    gain; noise from draw ``draw`` of stream ``key``, read r's column c its element
    ``r S dim + c``, reads numbered in this order), summed per bag and combined over slices
    with ``weights`` (S, dim) times ``unit``. Returns the number of reads."""
    n = idx.shape[0]
    s_count, dim = weights.shape
    sd = s_count * dim
    width = values.shape[1]
    noisy = width > sd
    steps = np.float32(steps)
    tail = np.float32(tail)
    sigma_k = np.float32(sigma_k)
    unit = np.float32(unit)
    dk = _draw_key(key, draw)
    per_pass = max(1, _PASS_VALUES // sd)
    acc = np.empty((per_pass, width), np.float32)
    read_bag = np.empty(per_pass, np.int64)
    codes = np.empty((per_pass, sd), np.float32)
    xs = np.empty((per_pass, sd), np.float32)
    sigmas = np.empty((per_pass, sd), np.float32)
    near_at = np.empty(per_pass * sd, np.int64)
    bits = np.empty(per_pass * sd, np.uint32)
    z = np.empty(per_pass * sd, np.float32)
    bag_codes = np.zeros(sd, np.float32)
    keys = np.empty(64, np.int64)
    order = np.empty(64, np.int64)
    current = -1
    reads = 0  # reads converted before this pass
    filled = 0
    i0 = 0
    while i0 < n:
        bag = bags[i0]
        i1 = i0 + 1
        while i1 < n and bags[i1] == bag:
            i1 += 1
        m = i1 - i0
        if m > keys.shape[0]:
            keys = np.empty(2 * m, np.int64)
            order = np.empty(2 * m, np.int64)
        _order_by_array(idx, i0, m, array_rows, keys, order)
        j = 0
        while j < m:
            if filled == per_pass:  # convert the pass, pool its codes
                _convert(acc, filled, reads, sd, noisy, mult_x, sigma_k, gain_abs, steps, tail, dk, codes,
                         xs, sigmas, near_at, bits, z)
                current = _pool(codes, read_bag, filled, current, bag_codes, weights, unit, out)
                reads += filled
                filled = 0
            array = keys[j]
            row = acc[filled]
            src = values[where[order[j]]]
            for c in range(width):
                row[c] = src[c]
            j += 1
            taken = 1
            while j < m and keys[j] == array and taken < group_rows:
                src = values[where[order[j]]]
                for c in range(width):
                    row[c] += src[c]
                j += 1
                taken += 1
            read_bag[filled] = bag
            filled += 1
        i0 = i1
    if filled:
        _convert(acc, filled, reads, sd, noisy, mult_x, sigma_k, gain_abs, steps, tail, dk, codes,
                 xs, sigmas, near_at, bits, z)
        current = _pool(codes, read_bag, filled, current, bag_codes, weights, unit, out)
        reads += filled
    if current >= 0:
        _flush(bag_codes, current, weights, unit, out)
    return reads


__all__ = ["shared_reads"]
