"""Compiled CPU kernel (numba) of weight clipping: :func:`cimflow.train.clip.clip_weights` of a
matrix layer in two passes over its weight instead of six.

The torch form takes each crossbar column's mean, its centred copy (a fresh tensor), the
copy's norm, the largest and smallest weight, then clamps. Here one pass per row of the
weight (out, in), a crossbar column, gathers its sum, its sum of squares (float64: the
population variance ``E[w^2] - E[w]^2`` keeps float32's digits for any weights a layer holds)
and its largest ``|w|`` (:func:`cimflow.sim.read_kernels.absmax`); a second pass clamps only
the rows whose largest ``|w|`` lies beyond their bound. The bounds are the torch form's up to
float rounding (``tests/train/test_clip.py`` compares the two). Imported lazily by
:mod:`cimflow.train.clip`; compiled once per machine, cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cimflow.sim.read_kernels import _inline, absmax

# read_kernels' decorator with the sums' order left to the compiler (reassociation: the
# float64 sums vectorize; their order is not the torch form's anyway)
_kernel = njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "reassoc"})

_FLOOR = 1e-12  # the smallest bound (clip_weights' clamp_min)


@_inline
def _bound(total, squares, n, sigmas):  # noqa: ANN001, ANN202
    """``max(sigmas * std, 1e-12)``, the population std of ``n`` values from their sum and sum
    of squares; NaN when those are not numbers (NaN or infinite weights)."""
    mean = total / n
    var = squares / n - mean * mean
    if var != var:
        return np.nan
    return max(sigmas * np.sqrt(max(var, 0.0)), _FLOOR)


@_kernel
def clip_rows(w, sigmas, per_row, bounds):  # noqa: ANN001, ANN201
    """Clip each row of the C-contiguous float32 ``w`` (R, C) in place to ``+-bounds[r]``,
    ``bounds[r] = max(sigmas * std, 1e-12)`` with the population std of row ``r`` (``per_row``)
    or of the whole matrix (written into ``bounds`` (R,) float32). Returns how many weights
    were beyond their bound. A row whose bound or largest ``|w|`` is not a number (NaN or
    infinite weights: :func:`_bound`) is left alone."""
    rows, cols = w.shape
    bits = w.view(np.int32)
    total, total_sq = 0.0, 0.0
    top = np.empty(rows, np.float32)
    for r in range(rows):
        s, ss = 0.0, 0.0
        for j in range(cols):
            v = np.float64(w[r, j])
            s += v
            ss += v * v
        top[r] = absmax(bits, r)
        if per_row:
            bounds[r] = _bound(s, ss, cols, sigmas)
        total += s
        total_sq += ss
    if not per_row:
        bounds[:] = _bound(total, total_sq, rows * cols, sigmas)
    clipped = 0
    for r in range(rows):
        b = bounds[r]
        if not top[r] > b:  # nothing beyond (or a NaN bound)
            continue
        for j in range(cols):
            v = w[r, j]
            clipped += v > b or v < -b
            w[r, j] = min(max(v, -b), b)
    return clipped


__all__ = ["clip_rows"]
