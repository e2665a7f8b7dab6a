"""Compiled CPU kernels (numba) of the cached-draw fast path's per-cell arithmetic.

:meth:`cimflow.train.draws.InstanceDraws._program_fast` programs a fresh chip instance of one
differential slice on every training step. Written as torch operations that is about twenty
elementwise passes over the cells; here it is one pass over the weights
(:func:`column_scales`: the weight scale per column, the largest |w| of each output row of the
weight or of the whole layer, 1 for an all-zero column) and one over the cells
(:func:`program_instance`), block of 16 cell rows by block, each step on contiguous rows:

- the signed level ``rint(clamp(w / scale, -1, 1) (levels - 1))`` of every weight, gathered
  from the (out, in) weight a cache line at a time into the cells' (in, out) layout;
- the conductances at ``t0`` of both cells of every pair: the target
  ``G = g_min + level (g_max - g_min) / (levels - 1)`` plus the programming sigma (a
  polynomial in ``G / g_max``, as :func:`cimflow.physics.programming_sigma`) times the cell's
  standard normal, clamped at 0; then the stuck cells;
- the per-read-group column sums of ``|w|``, ``w`` and ``w^2`` of the effective weights at
  ``t0`` (what the ADC full scale is set from);
- the power-law drift ``G(t) = G(t0) exp(-nu log(t / t0))``, the effective weights
  ``(G+ - G-) / (g_max - g_min)`` and the read-noise variances
  ``read_noise^2 ((G+ / den)^2 + (G- / den)^2)``.

The float32 operations are the torch form's in the same order, so the values are the same up
to float rounding (multiply-adds may be fused; the column sums are added in another order;
the exponential is :func:`_exp` below, within 2 ulp of the correctly rounded one).
``tests/train/test_program_kernels.py`` compares every output with the torch form.

Imported lazily by :mod:`cimflow.train.draws` (numba costs ~0.2 s to import); compiled once
per machine and cached on disk. The decorators are those of :mod:`cimflow.sim.read_kernels`.
"""

from __future__ import annotations

import math

import numpy as np

from cimflow.sim.read_kernels import _inline, _kernel, absmax

_F = np.float32
#: the programming-sigma polynomial's coefficients are padded to this many (the spec allows 8)
COEFFICIENTS = 8
_ROWS = 16  # cell rows per block: 16 float32 of a weight row are one 64-byte cache line
_LOG2E = _F(1.0 / math.log(2.0))
# ln 2 split so that k ln2_hi is exact for |k| < 2^11 (Cody and Waite's reduction)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(math.log(2.0) - 0.693359375)
_EXP_LO = _F(-87.0)  # below: the exponential is under float32's smallest normal; taken as 0
_EXP_HI = _F(88.0)


@_inline
def _exp(x):  # noqa: ANN001, ANN202
    """``exp(x)`` in float32 for ``x <= 88``, 0 below -87, with no branch (the loop calling it
    stays vectorizable; numba's ``np.exp`` is a scalar libm call without Intel's SVML):
    ``x = k ln 2 + r`` with ``|r| <= ln2 / 2``, ``exp(r)`` by its Taylor series to ``r^7``
    (truncation < 6e-9 relative), ``2^k`` from the float's exponent bits."""
    kept = _F(x > _EXP_LO)
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = np.rint(x * _LOG2E)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _F(1.0 / 5040.0)
    p = p * r + _F(1.0 / 720.0)
    p = p * r + _F(1.0 / 120.0)
    p = p * r + _F(1.0 / 24.0)
    p = p * r + _F(1.0 / 6.0)
    p = p * r + _F(0.5)
    p = p * r + _F(1.0)
    p = p * r + _F(1.0)
    two_k = np.uint32(np.int32(k) + np.int32(127) << np.int32(23)).view(np.float32)
    return p * two_k * kept


@_kernel
def column_scales(weight, per_column, scale):  # noqa: ANN001, ANN201
    """``scale[o]``: the largest ``|weight[o, i]|`` over ``i`` (``weight`` (out, in) float32,
    C-contiguous), or over the whole weight unless ``per_column``; 1 where that is not > 0
    (an all-zero column; NaN too, as the torch form's ``where(scale > 0, scale, 1)``). The
    largest |w| is an integer maximum of the floats' bits with the sign cleared (the same
    order for finite floats, and it vectorizes where a float maximum does not)."""
    bits = weight.view(np.int32)
    for o in range(weight.shape[0]):
        scale[o] = absmax(bits, o)
    if not per_column:  # the scales are >= 0 (or NaN, the largest bits): the same trick
        top = np.int32(0)
        sb = scale.view(np.int32)
        for o in range(scale.shape[0]):
            top = max(top, sb[o])
        scale[:] = np.uint32(top).view(np.float32)
    for o in range(scale.shape[0]):
        if not scale[o] > 0:
            scale[o] = _F(1.0)


@_inline
def _levels_block(weight, scale, top, i0, block):  # noqa: ANN001, ANN202
    """``block[r, o] = rint(clamp(weight[o, i0 + r] / scale[o], -1, 1) * top)`` for the rows
    ``r < len(block)`` (``weight`` (out, in)): a block of the signed levels, transposed to the
    cells' (in, out) layout (each weight row's slice is one cache line)."""
    one = _F(1.0)
    for o in range(weight.shape[0]):
        s, wr = scale[o], weight[o, i0:i0 + block.shape[0]]
        for r in range(wr.shape[0]):
            v = wr[r] / s
            block[r, o] = np.rint((one if v > one else (-one if v < -one else v)) * top)  # a NaN stays NaN, as torch's clamp


@_inline
def _program_row(lr, zp, zn, gp, gn, coeffs, step, g_min, top):  # noqa: ANN001, ANN202
    """One row of both cells' conductances at t0 from the signed levels ``lr`` (see
    :func:`program_instance`)."""
    zero = _F(0.0)
    c0, c1, c2, c3 = _F(coeffs[0]), _F(coeffs[1]), _F(coeffs[2]), _F(coeffs[3])
    c4, c5, c6, c7 = _F(coeffs[4]), _F(coeffs[5]), _F(coeffs[6]), _F(coeffs[7])
    for j in range(lr.shape[0]):
        p = max(lr[j], zero)
        tp, tn = p * step + g_min, (p - lr[j]) * step + g_min
        xp, xn = tp / top, tn / top
        sp = ((((((c0 * xp + c1) * xp + c2) * xp + c3) * xp + c4) * xp + c5) * xp + c6) * xp + c7
        sn = ((((((c0 * xn + c1) * xn + c2) * xn + c3) * xn + c4) * xn + c5) * xn + c6) * xn + c7
        gp[j] = max(tp + max(sp, zero) * zp[j], zero)
        gn[j] = max(tn + max(sn, zero) * zn[j], zero)


@_inline
def _stick(gr, codes, g_max, g_min):  # noqa: ANN001, ANN202
    """``g_max`` where the code is 1 (stuck on), ``g_min`` where it is -1 (stuck off)."""
    for j in range(gr.shape[0]):
        code = codes[j]
        gr[j] = g_max if code == 1 else (g_min if code == -1 else gr[j])


@_inline
def _sum_row(gp, gn, den, sa, s1, s2):  # noqa: ANN001, ANN202
    """Add one row's ``|w|``, ``w``, ``w^2`` (``w = (G+ - G-) / den``) to the column sums."""
    for j in range(gp.shape[0]):
        d = (gp[j] - gn[j]) / den
        sa[j] += abs(d)
        s1[j] += d
        s2[j] += d * d


@_inline
def _age_row(gp, gn, np_, nn, c, drift, den, rn2, wr, vr, noisy):  # noqa: ANN001, ANN202
    """One row of effective weights (and read variances when ``noisy``) at ``t``: ``G(t) =
    G(t0) exp(nu c)`` when ``drift`` (``c = -log(t / t0)``)."""
    if drift and noisy:
        for j in range(gp.shape[0]):
            p = gp[j] * _exp(np_[j] * c)
            n = gn[j] * _exp(nn[j] * c)
            wr[j] = (p - n) / den
            pd, nd = p / den, n / den
            vr[j] = (pd * pd + nd * nd) * rn2
    elif drift:
        for j in range(gp.shape[0]):
            wr[j] = (gp[j] * _exp(np_[j] * c) - gn[j] * _exp(nn[j] * c)) / den
    elif noisy:
        for j in range(gp.shape[0]):
            wr[j] = (gp[j] - gn[j]) / den
            pd, nd = gp[j] / den, gn[j] / den
            vr[j] = (pd * pd + nd * nd) * rn2
    else:
        for j in range(gp.shape[0]):
            wr[j] = (gp[j] - gn[j]) / den


@_kernel
def program_instance(weight, scale, top_level, z, coeffs, step, g_min, g_max, stuck, nu, log_ratio, den, read_noise_sq,  # noqa: ANN001, ANN201
                     group_rows, sums, g0, w_eff, var):
    """A fresh instance of one differential slice, row block by row block of the cells:

    - levels: ``l = rint(clamp(weight[o, i] / scale[o], -1, 1) top_level)`` (``weight`` (out,
      in), ``scale`` from :func:`column_scales`);
    - conductances at ``t0`` (``g0`` (2, in, out): positive cells, then negative ones): the
      positive cell at level ``max(l, 0)``, the negative at ``max(l, 0) - l``; target ``G =
      level step + g_min``; sigma the polynomial ``coeffs`` (``COEFFICIENTS`` of them, highest
      power first, leading zeros as padding) in ``G / g_max``, clamped at 0; ``g0 = max(G +
      sigma z, 0)`` with ``z`` (2, in, out) standard normals; then ``g_max`` where the int8
      code ``stuck`` (2, in, out; or empty: none) is 1, ``g_min`` where it is -1;
    - ``sums`` (3, G, out), or empty: per read group (rows ``g group_rows ..``) the column
      sums of ``|w|``, ``w`` and ``w^2`` with ``w = (G+ - G-) / den`` at ``t0``
      (overwritten);
    - at ``t`` (``log_ratio = log(t / t0)``; 0: no drift) ``G(t) = G(t0) exp(-nu log_ratio)``
      with the exponents ``nu`` (2, in, out), ``w_eff`` (in, out) ``(G+ - G-) / den`` and
      ``var`` (in, out), or empty, ``read_noise_sq ((G+ / den)^2 + (G- / den)^2)``."""
    rows, m = w_eff.shape
    top, step, g_min, g_max = _F(top_level), _F(step), _F(g_min), _F(g_max)
    den, rn2, c = _F(den), _F(read_noise_sq), _F(-log_ratio)
    drift = log_ratio > 0
    has_stuck, want_sums, noisy = stuck.shape[0] > 0, sums.shape[0] > 0, var.shape[0] > 0
    if want_sums:
        sums[:] = 0
    block = np.empty((_ROWS, m), np.float32)
    for i0 in range(0, rows, _ROWS):
        lev = block[:min(_ROWS, rows - i0)]
        _levels_block(weight, scale, top, i0, lev)
        for r in range(lev.shape[0]):
            i = i0 + r
            gp, gn = g0[0, i], g0[1, i]
            _program_row(lev[r], z[0, i], z[1, i], gp, gn, coeffs, step, g_min, g_max)
            if has_stuck:
                _stick(gp, stuck[0, i], g_max, g_min)
                _stick(gn, stuck[1, i], g_max, g_min)
            if want_sums:
                g = i // group_rows
                _sum_row(gp, gn, den, sums[0, g], sums[1, g], sums[2, g])
            _age_row(gp, gn, nu[0, i], nu[1, i], c, drift, den, rn2, w_eff[i], var[i] if noisy else w_eff[i], noisy)


__all__ = ["COEFFICIENTS", "column_scales", "program_instance"]
