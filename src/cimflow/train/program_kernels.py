"""Compiled CPU kernels (numba) of the cached-draw fast path's per-cell arithmetic.

:meth:`cimflow.train.draws.InstanceDraws._program_fast` programs a fresh chip instance of one
differential slice on every training step. Written as torch operations that is about twenty
elementwise passes over the cells (the PCM law, many more); here it is one pass over the
weights (:func:`column_scales`: the weight scale per column, the largest |w| of each output
row of the weight or of the whole layer, 1 for an all-zero column) and one over the cells
(:func:`program_instance`), block of 16 cell rows by block, each step on contiguous rows:

- the signed level ``rint(clamp(w / scale, -1, 1) (levels - 1))`` of every weight, gathered
  from the (out, in) weight a cache line at a time into the cells' (in, out) layout;
- the conductances at ``t0`` of both cells of every pair: the target
  ``G = g_min + level (g_max - g_min) / (levels - 1)`` plus the programming sigma (a
  polynomial in ``G / g_max``, as :func:`cimflow.physics.programming_sigma`) times the cell's
  standard normal, clamped at 0; then the stuck cells;
- the PCM law only (:mod:`cimflow.physics.devices.pcm`): each cell's state, the drift
  exponent ``|mean + std z|`` (the level's moments), the 1/f noise's standard normal and
  ``Q_s`` (a piecewise curve of ``|G| / g_max``, :func:`_curve_row`);
- the per-read-group column sums of ``|w|``, ``w`` and ``w^2`` of the effective weights at
  ``t0``, from which :func:`adc_full_scale` sets the ADC full scale (in one call: in torch
  it is a dozen small operations, ~60 us a layer);
- the conductances at ``t``: the power-law drift ``G(t) = G(t0) exp(-nu log(t / t0))``, or
  PCM's ``max((G + |G| Q_s growth z) exp(-nu log(t / t0)), 0)``; the effective weights
  ``(G+ - G-) / (g_max - g_min)`` and the read-noise variances
  ``read_noise^2 ((G+ / den)^2 + (G- / den)^2)``.

The float32 operations are the torch form's in the same order, so the values are the same up
to float rounding (multiply-adds may be fused; the column sums are added in another order;
the exponential is :func:`_exp` below, within 2 ulp of the correctly rounded one, the log
:func:`cimflow.sim.read_kernels._log`). ``tests/train/test_program_kernels.py`` compares
every output with the torch form (which, for PCM, is the device model's own code), the
curves with :func:`cimflow.physics.devices.evaluate_curve`.

Arrays are indexed as ``a[s, i, j]``, never through row views ``a[i]`` (a view costs its
reference counting, ~20 ns, more than a short row's arithmetic). Imported lazily by
:mod:`cimflow.train.draws` (numba costs ~0.2 s to import); compiled once per machine and
cached on disk. The decorators are those of :mod:`cimflow.sim.read_kernels`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cimflow.sim.read_kernels import _inline, _kernel, _log, _threaded, absmax, for_threads

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
#: the columns of a curve row before its coefficients (:func:`_curve_row`)
CURVE_HEAD = 4
#: a curve piece's form, column 0 of its row (the order of ``CurvePiece.form``'s values)
POLYNOMIAL, LOG, POWER = 0, 1, 2
_LOG_FLOOR = _F(1e-7)  # x floored here in a log piece, there in a power piece (evaluate_curve's)
_POWER_FLOOR = _F(1e-3)


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
def _levels_block(weight, scale, top, i0, rows, block):  # noqa: ANN001, ANN202
    """``block[r, o] = rint(clamp(weight[o, i0 + r] / scale[o], -1, 1) * top)`` for the rows
    ``r < rows`` (``weight`` (out, in)): a block of the signed levels, transposed to the
    cells' (in, out) layout (each weight row's slice is one cache line)."""
    one = _F(1.0)
    for o in range(weight.shape[0]):
        s = scale[o]
        for r in range(rows):
            v = weight[o, i0 + r] / s
            block[r, o] = np.rint((one if v > one else (-one if v < -one else v)) * top)  # a NaN stays NaN, as torch's clamp


@_inline
def _program_row(lev, r, z, i, g0, coeffs, step, g_min, top):  # noqa: ANN001, ANN202
    """Row ``i`` of both cells' conductances at t0 from the signed levels ``lev[r]`` (see
    :func:`program_instance`)."""
    zero = _F(0.0)
    c0, c1, c2, c3 = _F(coeffs[0]), _F(coeffs[1]), _F(coeffs[2]), _F(coeffs[3])
    c4, c5, c6, c7 = _F(coeffs[4]), _F(coeffs[5]), _F(coeffs[6]), _F(coeffs[7])
    for j in range(g0.shape[2]):
        p = max(lev[r, j], zero)
        tp, tn = p * step + g_min, (p - lev[r, j]) * step + g_min
        xp, xn = tp / top, tn / top
        sp = ((((((c0 * xp + c1) * xp + c2) * xp + c3) * xp + c4) * xp + c5) * xp + c6) * xp + c7
        sn = ((((((c0 * xn + c1) * xn + c2) * xn + c3) * xn + c4) * xn + c5) * xn + c6) * xn + c7
        g0[0, i, j] = max(tp + max(sp, zero) * z[0, i, j], zero)
        g0[1, i, j] = max(tn + max(sn, zero) * z[1, i, j], zero)


@_inline
def _stick(g0, codes, i, g_max, g_min):  # noqa: ANN001, ANN202
    """Row ``i`` of both cells: ``g_max`` where the code is 1 (stuck on), ``g_min`` where it is -1
    (stuck off)."""
    for s in range(2):
        for j in range(g0.shape[2]):
            code = codes[s, i, j]
            g0[s, i, j] = g_max if code == 1 else (g_min if code == -1 else g0[s, i, j])


@_inline
def _curve_row(curve, x, y):  # noqa: ANN001, ANN202
    """``y[j]``: the piecewise curve at ``x[j]``, as
    :func:`cimflow.physics.devices.evaluate_curve` (piece ``k`` holds from ``curve[k, 1]`` on,
    the first everywhere below the second). Row ``k`` of ``curve`` is a piece: its form
    (``POLYNOMIAL``, ``LOG``, ``POWER``), ``x_from``, ``y_min`` and ``y_max`` (-inf / inf:
    none), then ``COEFFICIENTS`` coefficients: a polynomial's highest power first (leading
    zeros as padding: the same Horner values), a log piece's ``c0 + c1 ln(max(x, 1e-7))`` and
    a power piece's ``c0 max(x, 1e-3)^c1`` (``exp(c1 ln x)``, for values below float32's
    largest) in the first two."""
    for k in range(curve.shape[0]):
        form, x_from, lo, hi = curve[k, 0], _F(curve[k, 1]), _F(curve[k, 2]), _F(curve[k, 3])
        h = CURVE_HEAD
        c0, c1, c2, c3 = _F(curve[k, h]), _F(curve[k, h + 1]), _F(curve[k, h + 2]), _F(curve[k, h + 3])
        c4, c5, c6, c7 = _F(curve[k, h + 4]), _F(curve[k, h + 5]), _F(curve[k, h + 6]), _F(curve[k, h + 7])
        first = k == 0
        if form == POLYNOMIAL:
            for j in range(x.shape[0]):
                v = x[j]
                u = min(max(((((((c0 * v + c1) * v + c2) * v + c3) * v + c4) * v + c5) * v + c6) * v + c7, lo), hi)
                y[j] = u if first or v >= x_from else y[j]
        elif form == LOG:
            for j in range(x.shape[0]):
                v = x[j]
                u = min(max(_log(max(v, _LOG_FLOOR)) * c1 + c0, lo), hi)
                y[j] = u if first or v >= x_from else y[j]
        else:
            for j in range(x.shape[0]):
                v = x[j]
                u = min(max(_exp(c1 * _log(max(v, _POWER_FLOOR))) * c0, lo), hi)
                y[j] = u if first or v >= x_from else y[j]


@_inline
def _pcm_row(lev, r, g0, zd, flicker, i, moments, curve, g_max, growth0, growth, c, x, q, state, now, at):  # noqa: ANN001, ANN202
    """Row ``i`` of both cells' PCM state (:meth:`cimflow.physics.devices.PCMModel.sample_state`)
    and conductances (:meth:`~cimflow.physics.devices.PCMModel.conductance`). The state:
    ``state[0]`` the drift exponent ``nu = |mean + std zd|`` with the moments of the cell's
    level (``moments`` (2, levels): mean, std), ``state[1]`` the 1/f noise's standard normal
    ``z = flicker``, ``state[2]`` ``Q_s``, ``curve`` at ``|G| / g_max`` (``x``, ``q``, ``at``: scratch
    rows). The conductances ``max((G + |G| Q_s growth z) exp(nu c), 0)``: at t0 into ``now[s,
    0]`` (the 1/f noise's ``growth0``, no drift), at t into ``now[s, 1]`` (``c = -log(t /
    t0)``; 0 before t0: the factor is then 1 exactly)."""
    zero = _F(0.0)
    for s in range(2):
        for j in range(g0.shape[2]):
            x[j] = abs(g0[s, i, j] / g_max)
        _curve_row(curve, x, q)
        for j in range(g0.shape[2]):  # the levels as unsigned table indices first: the gather below then vectorizes better
            p = max(lev[r, j], zero)
            level = p - lev[r, j] if s else p
            at[j] = np.uint32(level if level >= zero else zero)  # a NaN level (a NaN weight: G is NaN): level 0, as the torch form
        # (a loop per output: in one loop with the gather, the copies and the conductances, a
        # PCM layer's kernel took ~10 % longer, and all in one loop twice as long; measured)
        for j in range(g0.shape[2]):
            k = at[j]
            state[0, s, i, j] = abs(moments[0, k] + moments[1, k] * zd[s, i, j])
        for j in range(g0.shape[2]):
            state[1, s, i, j] = flicker[s, i, j]
        for j in range(g0.shape[2]):
            state[2, s, i, j] = q[j]
        for j in range(g0.shape[2]):
            g, noise = g0[s, i, j], q[j] * flicker[s, i, j]
            now[s, 0, j] = max(noise * growth0 * abs(g) + g, zero)
        for j in range(g0.shape[2]):
            g, noise = g0[s, i, j], q[j] * flicker[s, i, j]
            now[s, 1, j] = max((noise * growth * abs(g) + g) * _exp(state[0, s, i, j] * c), zero)


@_inline
def _sum_row(g, n, den, sums, group):  # noqa: ANN001, ANN202
    """Add ``|w|``, ``w``, ``w^2`` (``w = (g[0, n] - g[1, n]) / den``) to read group ``group``'s
    column sums."""
    for j in range(g.shape[2]):
        d = (g[0, n, j] - g[1, n, j]) / den
        sums[0, group, j] += abs(d)
        sums[1, group, j] += d
        sums[2, group, j] += d * d


@_inline
def _age_row(g, n, nu, c, drift, den, rn2, w_eff, var, i, noisy):  # noqa: ANN001, ANN202
    """Row ``i`` of effective weights (and read variances when ``noisy``) from the conductances
    ``g[:, n]``: at ``t``, ``G exp(nu c)`` when ``drift`` (``c = -log(t / t0)``, ``nu[:, n]``)."""
    if drift and noisy:
        for j in range(g.shape[2]):
            p = g[0, n, j] * _exp(nu[0, n, j] * c)
            m = g[1, n, j] * _exp(nu[1, n, j] * c)
            w_eff[i, j] = (p - m) / den
            pd, nd = p / den, m / den
            var[i, j] = (pd * pd + nd * nd) * rn2
    elif drift:
        for j in range(g.shape[2]):
            w_eff[i, j] = (g[0, n, j] * _exp(nu[0, n, j] * c) - g[1, n, j] * _exp(nu[1, n, j] * c)) / den
    elif noisy:
        for j in range(g.shape[2]):
            w_eff[i, j] = (g[0, n, j] - g[1, n, j]) / den
            pd, nd = g[0, n, j] / den, g[1, n, j] / den
            var[i, j] = (pd * pd + nd * nd) * rn2
    else:
        for j in range(g.shape[2]):
            w_eff[i, j] = (g[0, n, j] - g[1, n, j]) / den


def _program_instance(weight, scale, top_level, z, coeffs, step, g_min, g_max, stuck, nu, log_ratio, den, read_noise_sq,  # noqa: ANN001, ANN202
                      group_rows, sums, g0, w_eff, var, state, flicker, moments, curve, growth0, growth):
    """A fresh instance of one differential slice, row block by row block of the cells:

    - levels: ``l = rint(clamp(weight[o, i] / scale[o], -1, 1) top_level)`` (``weight`` (out,
      in), ``scale`` from :func:`column_scales`);
    - conductances at ``t0`` (``g0`` (2, in, out): positive cells, then negative ones): the
      positive cell at level ``max(l, 0)``, the negative at ``max(l, 0) - l``; target ``G =
      level step + g_min``; sigma the polynomial ``coeffs`` (``COEFFICIENTS`` of them, highest
      power first, leading zeros as padding) in ``G / g_max``, clamped at 0; ``g0 = max(G +
      sigma z, 0)`` with ``z`` (2, in, out) standard normals; then ``g_max`` where the int8
      code ``stuck`` (2, in, out; or empty: none) is 1, ``g_min`` where it is -1;
    - the generic law (``state`` empty): ``nu`` (2, in, out) the drift exponents; the PCM law
      (``state`` (3, 2, in, out), written): ``nu`` the drift exponents' standard normals,
      ``flicker`` (2, in, out) the 1/f noise's, ``moments`` (2, levels) the drift exponent's
      mean and std at each level, ``curve`` Q_s (:func:`_curve_row`), ``growth0`` and
      ``growth`` the 1/f noise's growth at t0 and t (:func:`_pcm_row`);
    - ``sums`` (3, G, out), or empty: per read group (rows ``g group_rows ..``) the column
      sums of ``|w|``, ``w`` and ``w^2`` with ``w = (G+ - G-) / den`` at ``t0``
      (overwritten);
    - at ``t`` (``log_ratio = log(t / t0)``; 0: no drift) the conductances (``G(t0) exp(-nu
      log_ratio)``, or PCM's), ``w_eff`` (in, out) ``(G+ - G-) / den`` and ``var`` (in, out),
      or empty, ``read_noise_sq ((G+ / den)^2 + (G- / den)^2)``.

    Read group by read group (each its own rows and column sums: the same values whatever
    the order), the groups shared among numba's threads in :data:`program_instance_threads`."""
    rows, m = w_eff.shape
    top, step, g_min, g_max = _F(top_level), _F(step), _F(g_min), _F(g_max)
    den, rn2, c = _F(den), _F(read_noise_sq), _F(-log_ratio)
    growth0, growth = _F(growth0), _F(growth)
    drift = log_ratio > 0
    has_stuck, want_sums, noisy, pcm = stuck.shape[0] > 0, sums.shape[0] > 0, var.shape[0] > 0, state.shape[0] > 0
    if want_sums:
        sums[:] = 0
    for group in prange((rows + group_rows - 1) // group_rows):  # (each group its own scratch)
        block = np.empty((_ROWS, m), np.float32)
        x, q = np.empty(m, np.float32), np.empty(m, np.float32)
        at = np.empty(m, np.uint32)  # PCM: a row's cell levels as table indices
        now = np.empty((2, 2, m), np.float32)  # PCM: a row's conductances at t0 (n = 0) and at t (n = 1)
        end = min(rows, (group + 1) * group_rows)
        for i0 in range(group * group_rows, end, _ROWS):
            n = min(_ROWS, end - i0)
            _levels_block(weight, scale, top, i0, n, block)
            for r in range(n):
                i = i0 + r
                _program_row(block, r, z, i, g0, coeffs, step, g_min, g_max)
                if has_stuck:
                    _stick(g0, stuck, i, g_max, g_min)
                if pcm:
                    _pcm_row(block, r, g0, nu, flicker, i, moments, curve, g_max, growth0, growth, c, x, q, state, now, at)
                    if want_sums:
                        _sum_row(now, 0, den, sums, group)
                    _age_row(now, 1, now, c, False, den, rn2, w_eff, var, i, noisy)
                else:
                    if want_sums:
                        _sum_row(g0, i, den, sums, group)
                    _age_row(g0, i, nu, c, drift, den, rn2, w_eff, var, i, noisy)


program_instance = _kernel(_program_instance)
#: :func:`program_instance` with its read groups shared among numba's threads
#: (:func:`cimflow.sim.read_kernels.for_threads`)
program_instance_threads = _threaded(_program_instance)


@_kernel
def adc_full_scale(sums, expected, m1, m2, sigmas, width, full):  # noqa: ANN001, ANN201
    """``full`` (G, out): the ADC full scale of every read group and column from
    :func:`program_instance`'s column sums at t0 (``sums`` (3, G, out): ``|w|``, ``w``,
    ``w^2``). Per column ``sum |w|`` (``per_array_max``), or when ``expected`` the smaller of
    that and ``|sum w| m1 + sigmas sqrt(sum w^2 m2)`` (``full_scale_from_sums``); then the
    largest of each array's ``width`` columns for all of them (``_col_tile_max``), at least
    1e-12. A NaN column sum makes its array's scale NaN, as torch's maximum does."""
    groups, out = full.shape
    for g in range(groups):
        for j in range(out):
            v = sums[0, g, j]
            if expected:
                v = min(abs(sums[1, g, j]) * _F(m1) + _F(sigmas) * np.sqrt(sums[2, g, j] * _F(m2)), v)
            full[g, j] = v
        for a in range(0, out, width):
            top = full[g, a]
            for j in range(a + 1, min(a + width, out)):
                v = full[g, j]
                top = v if v > top or v != v else top
            top = top if top != top or top > _F(1e-12) else _F(1e-12)
            for j in range(a, min(a + width, out)):
                full[g, j] = top


__all__ = ["COEFFICIENTS", "CURVE_HEAD", "LOG", "POLYNOMIAL", "POWER", "adc_full_scale", "column_scales", "program_instance",
           "for_threads", "program_instance_threads"]
