"""Compiled CPU kernels of the fused read (numba): counter-based normals and the readout.

Imported only by :mod:`cimflow.sim.fused_read` when a fused read runs (numba costs ~0.2 s to
import and compiles these once per machine, cached on disk). Everything here is plain
arithmetic on NumPy views of torch tensors; :mod:`cimflow.sim.fused_read` documents the
stream and the readout and holds the torch-facing API.

The normal generator is Box-Muller (Box and Muller, Ann. Math. Stat. 29, 1958), exact in
law, vectorizable with no table and no rejection: the radius ``sqrt(-2 log u)`` with the log
from the float's exponent and an atanh series, the angle's quadrant from two bits and its sine
and cosine within the quadrant from polynomials fitted by ``scripts/fit_normal_kernels.py``
(float32 error <= 2e-7, no range reduction). A 32-bit uniform reaches |z| = 6.8 (torch's
float32 Box-Muller on 24-bit uniforms reaches 5.8). The random bits come from a
counter-based hash (the SplitMix64 finalizer, Steele et al., OOPSLA 2014), not from a
generator state: the value at (key, draw, row, column) is a function of those alone, so any
read can be re-drawn and rows do not depend on how they are batched.
"""

from __future__ import annotations

import math
import os
import threading
from types import FunctionType
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types, uint32, uint64
from numba.core import cgutils
from numba.extending import intrinsic

from cimflow.sim import kernel_cache
from cimflow.sim.fastmm import LO_LEVELS, MIN_SCALE

kernel_cache.install()  # before any kernel is decorated: each one's disk cache keyed by every kernel file

# numpy's error model: no Python division checks in the loops (they would stop vectorization);
# contract: multiply-adds fused
_kernel = njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_inline = njit(inline="always", cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
# the same, its prange loops shared among numba's threads
_threads = njit(cache=True, nogil=True, parallel=True, error_model="numpy", fastmath={"contract"})


def _threaded(fn: Any) -> Any:
    """``fn`` compiled with :data:`_threads`, as a function object of its own (numba's disk
    cache names a kernel by its qualified name, not by how it was compiled): the serial
    kernel and this one from one source."""
    twin = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_threads", fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_threads"
    twin.__doc__ = fn.__doc__
    return _threads(twin)

_GOLDEN = uint64(0x9E3779B97F4A7C15)
_F = np.float32
_TWO_M32 = _F(2.0**-32)
_LN2 = _F(math.log(2.0))
_SQRT2 = _F(math.sqrt(2.0))


@intrinsic
def prefetch(typingctx, array, row, column):  # noqa: ANN001, ANN201, ARG001
    """Ask the CPU to bring ``array[row, column]`` (a 2-D array) into its caches for a read
    soon (LLVM's ``prefetch`` hint: read, high locality; no effect on values, none on an
    index out of range): a gather of rows at random issues the next rows' loads ahead."""
    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        at = [context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2)]
        address = cgutils.get_item_pointer(context, builder, array_type, data, at, wraparound=False)
        byte = ir.IntType(8).as_pointer()
        hint = ir.FunctionType(ir.VoidType(), [byte, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, hint, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(address, byte), ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                          ir.Constant(ir.IntType(32), 1)])
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


@_inline
def _mix(z):  # noqa: ANN001, ANN202
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@_inline
def _log(x):  # noqa: ANN001, ANN202
    """Natural log of a positive normal float32: exponent from the bits, the mantissa (moved
    into [sqrt(1/2), sqrt(2))) through 2 atanh((m-1)/(m+1)), series to y^9 (error < 4e-10)."""
    b = np.float32(x).view(np.uint32)
    e = np.float32(np.int32(b >> uint32(23)) - np.int32(127))
    m = np.uint32((b & uint32(0x7FFFFF)) | uint32(0x3F800000)).view(np.float32)
    big = np.float32(m > _SQRT2)  # arithmetic, not a branch: the loop stays vectorizable
    m = m - _F(0.5) * big * m
    e = e + big
    y = (m - _F(1.0)) / (m + _F(1.0))
    y2 = y * y
    series = _F(1.0) + y2 * (_F(1 / 3) + y2 * (_F(1 / 5) + y2 * (_F(1 / 7) + y2 * _F(1 / 9))))
    return np.float32(e * _LN2 + _F(2.0) * y * series)


_CHUNK = 4096  # normals drawn per pass: long enough to vectorize, short enough to stay in cache
_INV_LO = np.float32(1.0 / LO_LEVELS)


@_kernel
def _draw_key(key, draw):  # noqa: ANN001, ANN202
    return _mix(uint64(key) ^ ((uint64(draw) + uint64(1)) * _GOLDEN))


_HALF_PI_2M30 = np.float32(math.pi / 2 * 2.0**-30)


@_inline
def _radius(a):  # noqa: ANN001, ANN202
    """Box-Muller's radius ``sqrt(-2 log u)`` of the uniform ``u = (a + 1/2) / 2^32``. Near
    ``u = 1`` (``v = 1 - u < 1/16``, exact from the bits) ``-log u = -log(1 - v)`` comes from its
    series in ``v`` to ``v^6`` (error < 3e-10): ``u`` itself has lost those digits in float32."""
    w = -_log((np.float32(a) + _F(0.5)) * _TWO_M32)
    v = (np.float32(np.uint32(~a)) + _F(0.5)) * _TWO_M32
    near = v * (_F(1.0) + v * (_F(1 / 2) + v * (_F(1 / 3) + v * (_F(1 / 4) + v * (_F(1 / 5) + v * _F(1 / 6))))))
    w = near if v < _F(1 / 16) else w
    return np.float32(np.sqrt(_F(2.0) * w))


@_inline
def _rotate(b, r):  # noqa: ANN001, ANN202
    """``(r cos t, r sin t)`` for the angle ``t = (pi/2) (k + f)`` of the 32 bits ``b``: quadrant
    ``k`` from the top two bits, ``f`` from the other 30; sine and cosine on the quadrant by
    polynomials in ``x^2`` (scripts/fit_normal_kernels.py ``angle``), no range reduction."""
    x = (np.float32(b & uint32(0x3FFFFFFF)) + _F(0.5)) * _HALF_PI_2M30
    x2 = x * x
    sn = _F(2.60839009e-06)
    sn = sn * x2 + _F(-0.000198107498)
    sn = sn * x2 + _F(0.00833307983)
    sn = sn * x2 + _F(-0.166666597)
    sn = (sn * x2 + _F(0.999999998)) * x
    cs = _F(-2.60770931e-07)
    cs = cs * x2 + _F(2.47618288e-05)
    cs = cs * x2 + _F(-0.00138884002)
    cs = cs * x2 + _F(0.0416666401)
    cs = cs * x2 + _F(-0.499999995)
    cs = cs * x2 + _F(1.0)
    k = b >> uint32(30)
    odd = (k & uint32(1)) == uint32(1)
    c1 = -sn if odd else cs  # quadrant k turns (cos, sin) by k right angles
    s1 = cs if odd else sn
    neg = k >= uint32(2)
    return (-c1 if neg else c1) * r, (-s1 if neg else s1) * r


@_kernel
def box_muller(a, b, even, odd):  # noqa: ANN001, ANN201
    """Pairs of standard normals from pairs of 32-bit uniforms: radius ``sqrt(-2 log u)`` from
    ``a`` (``u = (a + 1/2) / 2^32``), angle from ``b`` (:func:`_rotate`): ``even = r cos t``,
    ``odd = r sin t``."""
    for p in range(a.shape[0]):  # two short loops vectorize where one long one does not
        even[p] = _radius(a[p])
    for p in range(a.shape[0]):
        even[p], odd[p] = _rotate(b[p], even[p])


@_kernel
def _fill(draw_key, start, out, bits):  # noqa: ANN001, ANN202
    """Standard normals of elements ``start .. start + len(out)`` (``start`` even) of a draw:
    the hash of pair ``e // 2`` gives its radius (high 32 bits) and angle (low 32 bits)
    (:func:`box_muller`); the even element of the pair is ``r cos t``, the odd ``r sin t``.
    ``bits`` is scratch of at least ``4 ceil(len(out) / 2)``."""
    m = out.shape[0]
    pairs = (m + 1) // 2
    base = uint64(start // 2) + uint64(1)
    hi, lo = bits[:pairs], bits[pairs:2 * pairs]
    for p in range(pairs):
        h = _mix(draw_key + (base + uint64(p)) * _GOLDEN)
        hi[p] = uint32(h >> uint64(32))
        lo[p] = uint32(h & uint64(0xFFFFFFFF))
    even, odd = bits[2 * pairs:3 * pairs].view(np.float32), bits[3 * pairs:4 * pairs].view(np.float32)
    box_muller(hi, lo, even, odd)
    for p in range(m // 2):
        out[2 * p] = even[p]
        out[2 * p + 1] = odd[p]
    if m % 2:
        out[m - 1] = even[pairs - 1]


@_kernel
def normals(key, draw, out):  # noqa: ANN001, ANN201
    """Fill the flat float32 ``out`` with the normals of draw ``draw`` of stream ``key``."""
    dk = _draw_key(key, draw)
    bits = np.empty(2 * _CHUNK + 4, np.uint32)
    for start in range(0, out.shape[0], _CHUNK):
        _fill(dk, start, out[start:start + _CHUNK], bits)


@_inline
def _element_bits(dk, e):  # noqa: ANN001, ANN202
    """32 random bits for element ``e`` of the draw keyed ``dk``: the high (even e) or low (odd
    e) half of the SplitMix64 hash of pair ``e // 2``, the hash the normal stream uses."""
    h = _mix(dk + (uint64(e // 2) + uint64(1)) * _GOLDEN)
    return uint32(h >> uint64(32)) if e % 2 == 0 else uint32(h & uint64(0xFFFFFFFF))


@_inline
def _uniform(dk, e):  # noqa: ANN001, ANN202
    """A float32 uniform on the 2^-24 grid in [0, 1) (as ``torch.rand``) from element ``e``'s bits."""
    return _unit(_element_bits(dk, e))


@_inline
def _unit(bits):  # noqa: ANN001, ANN202
    """The uniform of 32 random bits: their top 24 on the 2^-24 grid in [0, 1)."""
    return _F(bits >> uint32(8)) * _F(2.0**-24)


@_kernel
def uniforms(key, draw, out):  # noqa: ANN001, ANN201
    """Fill the flat float32 ``out`` with the uniforms of draw ``draw`` of stream ``key``:
    element ``e`` is :func:`_uniform` of it (the 32 bits of :func:`_element_bits`, a pair's
    hash per two elements)."""
    dk = _draw_key(key, draw)
    m = out.shape[0]
    for p in range(m // 2):
        h = _mix(dk + (uint64(p) + uint64(1)) * _GOLDEN)
        out[2 * p] = _unit(uint32(h >> uint64(32)))  # (the pair's halves, as _element_bits splits them)
        out[2 * p + 1] = _unit(uint32(h & uint64(0xFFFFFFFF)))
    if m % 2:
        out[m - 1] = _uniform(dk, m - 1)


@_inline
def _bf16_bits(v):  # noqa: ANN001, ANN202
    """The bfloat16 bits (int16) of the float32 ``v``, rounded to nearest even as
    ``Tensor.to(torch.bfloat16)`` rounds."""
    b = np.uint32(np.float32(v).view(np.uint32))
    return np.int16(np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)))


@_inline
def _bf16_value(bits):  # noqa: ANN001, ANN202
    """The float32 value of bfloat16 bits given as int16."""
    return np.uint32(np.uint32(np.uint16(bits)) << np.uint32(16)).view(np.float32)


@_inline
def absmax(bits, n):  # noqa: ANN001, ANN201
    """The largest ``|x[n, j]|`` of row ``n`` of a C-contiguous float32 matrix given as its
    int32 view ``bits``: an integer maximum of the floats' bits with the sign cleared (the same
    order for finite floats; NaN has the largest bits, so a NaN row gives NaN), which
    vectorizes where a float maximum does not. (Kernels here index rows as ``a[n, j]``, never
    through a row view ``a[n]``: a view per row costs its reference counting, ~20 ns, more than
    a short row's arithmetic.)"""
    top = np.int32(0)
    for j in range(bits.shape[1]):
        top = max(top, bits[n, j] & np.int32(0x7FFFFFFF))
    return np.uint32(top).view(np.float32)


@_kernel
def quantize_rows(x, steps, eps, codes, scale, squares, floats):  # noqa: ANN001, ANN201
    """The input DAC with a per-vector range: ``scale[n] = max(max_j |x[n, j]|, eps)`` and
    ``codes[n, j] = rint(x[n, j] * (1 / scale[n] * steps))`` (into ``codes``' dtype: int8 for
    the integer units, float32 otherwise), float32 as the torch read computes it. ``x`` is
    C-contiguous (its largest |x| by :func:`absmax`). ``squares`` (N, in) int16, or empty: the codes' squares as bfloat16 bits, rounded to
    nearest even as ``Tensor.to(torch.bfloat16)`` rounds (the read-noise variance's input).
    ``floats`` (N, in) float32, or empty: the codes again as float32 (what a training
    backward keeps), written from the row just converted."""
    steps = np.float32(steps)
    bits = x.view(np.int32)
    m = x.shape[1]
    for n in range(x.shape[0]):
        largest = max(absmax(bits, n), np.float32(eps))
        scale[n] = largest
        f = (np.float32(1.0) / largest) * steps
        for j in range(m):
            codes[n, j] = np.rint(x[n, j] * f)
        if squares.shape[0] > 0:  # (from the stored codes, exact integers, in a loop of its own: 13-14 % less time, measured)
            for j in range(m):
                c = np.float32(codes[n, j])
                squares[n, j] = _bf16_bits(c * c)
        if floats.shape[0] > 0:  # (a loop of its own: stores into three arrays in one loop vectorize worse)
            for j in range(m):
                floats[n, j] = np.float32(codes[n, j])


@_kernel
def scale_products(acc, per_out, scale_x, y):  # noqa: ANN001, ANN201
    """``y[n, j] = float32(acc[n, j]) * per_out[j] * scale_x[n]``: int32 products (N, M) to
    float32, scaled per column then per vector (the order of the torch form's two passes)."""
    for n in range(acc.shape[0]):
        s = scale_x[n]
        for j in range(acc.shape[1]):
            y[n, j] = np.float32(acc[n, j]) * per_out[j] * s


def _int_readout(prod, var16, z, key, draw, given, c, steps, lsb, scale_x, y, mask, n_base, n_total):  # noqa: ANN001, ANN202
    """The read after the int8 products, fused, in float32, of the vectors ``n_base ..
    n_base + B`` of a read of ``n_total``. ``prod`` (G, B, 2, M) int32: per read group the
    products with the weights' high and low planes. For group g, vector n (of the read),
    column j: ``v = c[g, j] (hi + lo / LO_LEVELS + z sqrt(var))`` with z the normal of flat
    element (g N + n) M + j of the draw (``N = n_total``; drawn a chunk of vectors at a time
    into scratch of the chunk's own, so they stay in cache; ``z`` (G N M,): the normals to
    use instead when ``given``, else unread; no noise when ``var16`` is empty),
    the ADC ``round(clamp(v, +-steps))``, and ``y[n, j] = scale_x[n] * sum_g code * lsb[g,
    j]`` (``y`` (N, M), ``scale_x`` (N,)). ``var16`` (G, B, M): bfloat16 variances as int16
    bits. ``mask`` (G, N, M) bool, or empty: where |v| <= steps, written only when a partial
    sum clipped (a second sweep, drawing the same normals again; the caller reads it only
    then). Returns whether any partial sum clipped. (A read in blocks of vectors gives each
    element the draws and values of the read in one block.)"""
    groups, n_vec, _, m = prod.shape
    noisy = var16.shape[0] > 0
    want_mask = mask.shape[0] > 0
    steps = np.float32(steps)
    neg = -steps
    dk = _draw_key(key, draw)
    rows_per_chunk = max(1, _CHUNK // m)
    chunks = (n_vec + rows_per_chunk - 1) // rows_per_chunk
    drawn = noisy and not given
    clipped = 0
    # (the partial sum and its noise are written out in each loop: taken from @_inline helpers
    # the loops stop vectorizing, the readout ~2x slower, measured)
    for sweep in range(2):  # the outputs; then, only where a partial sum clipped (rare), the mask
        if sweep == 1 and not (want_mask and clipped > 0):
            break
        for chunk in prange(chunks):  # (int_readout_threads: among numba's threads; each chunk its own scratch)
            n0 = chunk * rows_per_chunk
            n1 = min(n_vec, n0 + rows_per_chunk)
            zc = np.empty(rows_per_chunk * m + 2, np.float32) if drawn else z  # (scratch of the chunk's own)
            bits = np.empty(2 * rows_per_chunk * m + 8 if drawn else 0, np.uint32)
            v_row = np.empty(m, np.float32)  # a vector's ADC inputs
            for g in range(groups):
                first, count = (g * n_total + n_base + n0) * m, (n1 - n0) * m
                off = first  # where zc holds element first
                if drawn:
                    off = first % 2  # draws start at even elements: the pair's first half drawn too
                    _fill(dk, first - off, zc[:count + off], bits)
                for n in range(n0, n1):  # (indexed, not through row views: see absmax)
                    zb = off + (n - n0) * m
                    if sweep == 1:
                        for j in range(m):
                            v = np.float32(prod[g, n, 0, j]) + np.float32(prod[g, n, 1, j]) * _INV_LO
                            if noisy:
                                var = _bf16_value(var16[g, n, j])
                                v += zc[zb + j] * np.sqrt(var)
                            mask[g, n_base + n, j] = abs(v * c[g, j]) <= steps
                        continue
                    ny = n_base + n
                    sx = np.float32(scale_x[ny]) if g == groups - 1 else np.float32(1.0)
                    # (the ADC's inputs, the clip count and the outputs in loops of their own: in one
                    # loop, the readout of a Linear 512x512 or an MLP took 12-19 % longer, measured)
                    if noisy:
                        for j in range(m):
                            noise = zc[zb + j] * np.sqrt(_bf16_value(var16[g, n, j]))
                            v_row[j] = (np.float32(prod[g, n, 0, j]) + np.float32(prod[g, n, 1, j]) * _INV_LO + noise) * c[g, j]
                    else:
                        for j in range(m):
                            v_row[j] = (np.float32(prod[g, n, 0, j]) + np.float32(prod[g, n, 1, j]) * _INV_LO) * c[g, j]
                    clip = 0
                    for j in range(m):
                        clip += abs(v_row[j]) > steps
                    if g > 0:
                        for j in range(m):
                            y[ny, j] = (y[ny, j] + np.rint(min(max(v_row[j], neg), steps)) * lsb[g, j]) * sx
                    else:
                        for j in range(m):
                            y[ny, j] = (np.float32(0.0) + np.rint(min(max(v_row[j], neg), steps)) * lsb[g, j]) * sx
                    clipped += clip
    return clipped > 0


int_readout = _kernel(_int_readout)
#: :func:`int_readout` with its chunks of vectors shared among numba's threads (:func:`for_threads`)
int_readout_threads = _threaded(_int_readout)


@_threads
def _probe(x):  # noqa: ANN001, ANN202
    for i in prange(x.shape[0]):
        x[i] = i


_THREADS_SAFE: bool | None = None  # numba's threading layer takes concurrent launches (None: not started)
_SET = threading.local()  # per Python thread: the count last given to numba.set_num_threads (a call costs ~3.5 us)


def _after_fork() -> None:
    """In a child forked after numba's threading layer started: no threads (GNU OpenMP's do
    not survive a fork; numba ends a child that launches them)."""
    global _THREADS_SAFE
    if _THREADS_SAFE is not None:
        _THREADS_SAFE = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def threads_for(threads: int) -> int:
    """How many of numba's threads work at ``threads`` torch threads runs on (set as numba's
    count where more than one): ``min(threads, numba's pool)``, but one where numba's
    threading layer is not OpenMP or TBB (they take launches from several Python threads at
    once; numba's fallback "workqueue" aborts the process then) and in a child forked after
    the layer started (:func:`_after_fork`)."""
    global _THREADS_SAFE
    if threads <= 1:
        return 1
    if _THREADS_SAFE is None:
        _probe(np.zeros(2))  # (starts numba's threading layer)
        _THREADS_SAFE = numba.threading_layer() in ("omp", "tbb")
    if not _THREADS_SAFE:
        return 1
    threads = min(threads, getattr(numba.config, "NUMBA_NUM_THREADS", 1))  # (at most numba's pool)
    if threads > 1 and getattr(_SET, "count", 0) != threads:
        numba.set_num_threads(threads)
        _SET.count = threads
    return threads


def for_threads(serial: Any, threaded: Any, threads: int) -> Any:
    """The kernel for work at ``threads`` torch threads: ``threaded`` (``serial``'s
    :func:`_threaded` twin) where :func:`threads_for` gives more than one thread, else
    ``serial``. (At one thread the twin costs more than the serial kernel: an MLP forward
    ~8 %, numba's OpenMP workers spinning beside it.)"""
    return threaded if threads_for(threads) > 1 else serial


@_kernel
def few_products(codes, squares, both, cell16, rows, prod, var16):  # noqa: ANN001, ANN201
    """The fused read's products for a few vectors, in place of one int8 and one bfloat16
    matmul per read group (each costs ~10-20 us whatever its size): ``prod`` (G, N, 2, out)
    int32 the exact products of the DAC codes ``codes`` (N, rows) int8 with the weight planes
    ``both`` (G, gr, 2, out) int8; with ``cell16`` (G, gr, out) (or empty) ``var16`` (G, N,
    out) the read-noise variances, the sums of the squares (``squares`` (N, rows), bfloat16
    bits) times the cell variances (bfloat16 bits), added in float32 row by row and rounded
    to bfloat16 (the bfloat16 matmul's values up to the order of its sums). Zero codes add
    nothing and are skipped."""
    groups, group_rows, _, out = both.shape
    noisy = cell16.shape[0] > 0
    acc = np.empty((2, out), np.int32)
    acc_var = np.empty(out, np.float32)
    for g in range(groups):
        start = g * group_rows
        real = min(group_rows, rows - start)
        for n in range(codes.shape[0]):
            acc[:] = 0
            acc_var[:] = 0
            for r in range(real):
                c = np.int32(codes[n, start + r])
                if c == 0:
                    continue
                for s in range(2):
                    for j in range(out):
                        acc[s, j] += c * np.int32(both[g, r, s, j])
                if noisy:
                    q = _bf16_value(squares[n, start + r])
                    for j in range(out):
                        acc_var[j] += q * _bf16_value(cell16[g, r, j])
            for s in range(2):
                for j in range(out):
                    prod[g, n, s, j] = acc[s, j]
            if noisy:
                for j in range(out):
                    var16[g, n, j] = _bf16_bits(acc_var[j])


@_kernel
def weight_planes(w, var, both, cell16, scale, rows):  # noqa: ANN001, ANN201
    """:func:`cimflow.sim.fastmm.int8_planes` of the weights ``w`` (G, gr, out) in one pass
    per group, into the fused read's layout: ``both`` (G, gr, 2, out) int8 (high and low
    plane side by side), ``scale`` (G, out); with ``var`` (G, gr, out) (or empty) the cell
    variances over the scale squared as bfloat16 bits ``cell16``, rounded to nearest even.
    The same float32 operations as the torch form, so the same values. Only the first ``rows``
    rows in all (the layer's inputs) are read and written: the last group's padding is left."""
    groups, group_rows, out = w.shape
    smallest = np.float32(MIN_SCALE)
    tops = np.zeros(out, np.int32)
    ratio = np.empty(out, np.float32)  # a row of w / scale
    inv_lo = np.float32(LO_LEVELS)
    noisy = var.shape[0] > 0
    for g in range(groups):  # (indexed, not through row views: see absmax)
        real = min(group_rows, rows - g * group_rows)
        bits = w[g].view(np.int32)
        tops[:] = 0
        for r in range(real):
            for j in range(out):
                tops[j] = max(tops[j], bits[r, j] & np.int32(0x7FFFFFFF))
        for j in range(out):
            scale[g, j] = max(np.float32(np.uint32(tops[j]).view(np.float32)) / np.float32(127.0), smallest)
        for r in range(real):  # a loop per plane: the two stores into ``both`` in one loop keep it from vectorizing (~7x)
            for j in range(out):
                ratio[j] = w[g, r, j] / scale[g, j]
            for j in range(out):
                both[g, r, 0, j] = np.rint(ratio[j])
            for j in range(out):
                both[g, r, 1, j] = np.rint((ratio[j] - np.rint(ratio[j])) * inv_lo)
            if noisy:
                for j in range(out):
                    sj = scale[g, j]
                    cell16[g, r, j] = _bf16_bits(var[g, r, j] / (sj * sj))


@_kernel
def read_scales(adc, planes_scale, gain, w_scale, steps_in, steps_adc, coef, lsb):  # noqa: ANN001, ANN201
    """The fused read's per (group, column) scales (:class:`cimflow.sim.fused_read.Operands`)
    from the ADC full scale ``adc`` (G, out), the planes' scale (G, out), the drift
    compensation ``gain`` (out,) (or empty) and the weight scale ``w_scale`` (out,), with the
    torch form's float32 operations in its order: ``r = adc steps_in``, ``coef = (1 / r)
    steps_adc planes_scale gain`` (planes' units to ADC steps) and ``lsb = r (w_scale /
    (steps_adc steps_in))`` (an ADC step in output units over the input scale)."""
    groups, out = coef.shape
    s_in, s_adc = np.float32(steps_in), np.float32(steps_adc)
    per_lsb = np.float32(steps_adc * steps_in)
    gained = gain.shape[0] > 0
    for g in range(groups):
        for j in range(out):
            r = adc[g, j] * s_in
            c = np.float32(1.0) / r * s_adc * planes_scale[g, j]
            coef[g, j] = c * gain[j] if gained else c
            lsb[g, j] = r * (w_scale[j] / per_lsb)


__all__ = ["absmax", "box_muller", "few_products", "for_threads", "int_readout", "int_readout_threads", "normals", "quantize_rows",
           "read_scales", "threads_for", "uniforms", "weight_planes"]
