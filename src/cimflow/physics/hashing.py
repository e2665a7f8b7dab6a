"""Counter-based random numbers: a value for every (seed, table, row, cell, purpose) without
storing anything, so the programming noise of a 10^8-row table costs nothing until a row
is read (docs/architecture.md, "Huge tables").

The mixer is SplitMix64's finalizer on int64 tensors (wrap-around multiplication, logical
shifts by masking); uniforms use its top 53 bits; normals use Box-Muller on two uniforms.
"""

from __future__ import annotations

import functools
import math

import torch

from cimflow.physics.rng import derive_seed

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finalizer: a bijective avalanche mix of int64 values."""
    x = x ^ _shr(x, 30)
    x = x * _M1
    x = x ^ _shr(x, 27)
    x = x * _M2
    return x ^ _shr(x, 31)


def hash_counters(counters: torch.Tensor, seed: int, *keys: object) -> torch.Tensor:
    """int64 hashes of ``counters`` under the stream named by (seed, keys)."""
    salt = derive_seed(seed, *keys)
    salt = salt - (1 << 64) if salt >= (1 << 63) else salt
    return mix64(counters.to(torch.int64) * _GOLDEN + salt)


def hash_uniform(counters: torch.Tensor, seed: int, *keys: object, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform (0, 1) values, one per counter, reproducible for the same (seed, keys, counter)."""
    bits = _shr(hash_counters(counters, seed, *keys), 11)
    return ((bits.to(torch.float64) + 0.5) * (1.0 / (1 << 53))).to(dtype)


def hash_normal(counters: torch.Tensor, seed: int, *keys: object, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal values, one per counter: Box-Muller on the two 32-bit halves of one
    hash (uniforms on a 2^-32 grid, offset by half a step so the logarithm stays finite)."""
    h = hash_counters(counters, seed, *keys)
    scale = 1.0 / 4294967296.0
    u1 = ((h & 0xFFFFFFFF).to(torch.float64) + 0.5) * scale
    u2 = (_shr(h, 32).to(torch.float64) + 0.5) * scale
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


# --------------------------------------------------------------------------- 32-bit cell draws
# The per-cell work of a lazily read table is hashing, so it is done in int32 / float32
# arithmetic (3x cheaper than int64 / float64 on CPUs): one 64-bit-salted hash per row,
# one per column (both tiny), and a 32-bit mix per cell and draw. Multiplication wraps
# modulo 2^32, as PyTorch's int32 kernels do on every device. On a CPU the cells are
# processed in blocks of :data:`BLOCK_CELLS`, every pass in place, so a block stays in cache
# through all of its passes (8x faster than whole-tensor passes on 10^7 cells).

_M32_1 = 0x7FEB352D
_M32_2 = 0x846CA68B - (1 << 32)  # as int32
_G32 = 0x9E3779B9 - (1 << 32)
#: Cells hashed per block on a CPU (int32 and float32 blocks of 512 KiB: in a core's L2 cache).
BLOCK_CELLS = 1 << 17


def _shr32(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int32 values."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def _mix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """:func:`mix32` in place on ``x`` (``tmp``: scratch of x's shape and dtype)."""
    for shift, multiplier in ((16, _M32_1), (15, _M32_2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (32 - shift)) - 1))  # a logical shift: the sign bits masked off
        if multiplier is not None:
            x.mul_(multiplier)
    return x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective avalanche mix of int32 values (the "lowbias32" finalizer)."""
    out = x.to(torch.int32, copy=True, memory_format=torch.contiguous_format)
    # one block on a GPU and under torch.compile (there in-place writes to slices become nested
    # scatters the compiler inlines into one huge kernel; it fuses the whole-tensor form)
    if out.numel() <= BLOCK_CELLS or out.device.type != "cpu" or torch.compiler.is_compiling():
        return _mix32_(out, torch.empty_like(out))
    for block, tmp in _blocks(out.view(-1)):
        _mix32_(block, tmp)
    return out


def _blocks(flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Slices of a flat tensor of at most :data:`BLOCK_CELLS` elements (one on a GPU), each
    with an int32 scratch tensor of its size."""
    step = flat.numel() if flat.device.type != "cpu" else BLOCK_CELLS
    scratch = torch.empty(min(step, flat.numel()), dtype=torch.int32, device=flat.device)
    return [(flat[i : i + step], scratch[: min(step, flat.numel() - i)]) for i in range(0, flat.numel(), max(step, 1))]


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def _uniform24_(h: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) float32 in ``out`` from the top 24 bits of the int32 hashes ``h``
    (exact in float32: ``(top + 1/2) / 2^24``)."""
    torch.bitwise_right_shift(h, 8, out=tmp)
    out.copy_(tmp.bitwise_and_(0xFFFFFF))
    return out.add_(0.5).mul_(1.0 / (1 << 24))


def _uniform24(h: torch.Tensor) -> torch.Tensor:
    return (_shr32(h, 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def _cell_keys(rows: torch.Tensor, cols: int, seed: int, keys: tuple[object, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The int32 key of each row (n,) and column (cols,) under the stream (seed, keys); a
    cell's hash is ``mix32(row_key ^ col_key)``. Rows may exceed 2^32 (both halves mixed in)."""
    salt = _salt(int(seed), keys)
    r = rows.to(torch.int64)
    lo = _int32_tensor(r & 0xFFFFFFFF)
    hi = _int32_tensor((r >> 32) & 0xFFFFFFFF)
    row_key = mix32(lo ^ mix32(hi ^ _int32(salt)))
    return row_key, _column_keys(salt, cols, str(rows.device))


@functools.lru_cache(maxsize=1024)
def _salt(seed: int, keys: tuple[object, ...]) -> int:
    return derive_seed(seed, *keys)


@functools.lru_cache(maxsize=256)
def _column_keys(salt: int, cols: int, device: str) -> torch.Tensor:
    """The int32 key of each column (cols,) under a stream's salt (kept: a table reads the
    same few streams on every forward)."""
    col = torch.arange(cols, device=device, dtype=torch.int32)
    return mix32(col * _G32 ^ _int32(salt >> 32))


def cell_hashes(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> torch.Tensor:
    """int32 hashes (n, cols) of the cells (row, 0..cols-1) of ``rows`` under the stream
    (seed, keys). Rows may exceed 2^32 (both halves are mixed in)."""
    row_key, col_key = _cell_keys(rows, cols, seed, keys)
    h = row_key.unsqueeze(1) ^ col_key.unsqueeze(0)
    for block, tmp in _blocks(h.view(-1)):
        _mix32_(block, tmp)
    return h


def _int32_tensor(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as the int32 with the same bits."""
    return torch.where(x >= (1 << 31), x - (1 << 32), x).to(torch.int32)


def _cell_streams(rows: torch.Tensor, cols: int, seed: int, keys: tuple[object, ...], uniforms: int,
                  normals: int = 0) -> list[torch.Tensor]:
    """``uniforms`` float32 uniforms (n, cols) per cell: the first from the cell's hash h1,
    the next from h2 = mix32(h1 ^ G), the third from mix32(h2 ^ M1); block by block, in
    place. With ``normals`` (1 or 2; needs two uniforms), the first two become the Box-Muller
    pair's cosine output and scratch, and (``normals`` = 2) the sine output is appended."""
    row_key, col_key = _cell_keys(rows, cols, seed, keys)
    n = row_key.numel()
    outs = [torch.empty(n, cols, device=rows.device) for _ in range(uniforms + (normals == 2))]
    flats = [o.view(-1) for o in outs]
    h = torch.empty(n, cols, dtype=torch.int32, device=rows.device)
    torch.bitwise_xor(row_key.unsqueeze(1), col_key.unsqueeze(0), out=h)
    start = 0
    for block, tmp in _blocks(h.view(-1)):
        stop = start + block.numel()
        _mix32_(block, tmp)
        for j, salt in enumerate((None, _G32, _M32_1)[:uniforms]):
            if salt is not None:
                _mix32_(block.bitwise_xor_(salt), tmp)
            _uniform24_(block, flats[j][start:stop], tmp)
        if normals:
            _box_muller_(flats[0][start:stop], flats[1][start:stop], flats[-1][start:stop] if normals == 2 else None)
        start = stop
    return outs


def _box_muller_(u1: torch.Tensor, u2: torch.Tensor, sine: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(-2 ln u1) cos(2 pi u2)`` in place of u1 (and the sine output in ``sine``), u2 consumed."""
    radius = u1.log_().mul_(-2.0).sqrt_()
    angle = u2.mul_(2.0 * math.pi)
    if sine is not None:
        torch.sin(angle, out=sine).mul_(radius)
    return radius.mul_(angle.cos_())


def cell_draws(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three independent float32 draws per cell (n, cols): two standard normals (the cosine
    and sine outputs of one Box-Muller pair on 24-bit uniforms, so |z| < 5.9) and a uniform
    (0, 1), reproducible for the same (seed, keys, row, column)."""
    cosine, _, uniform, sine = _cell_streams(rows, cols, seed, keys, 3, normals=2)
    return cosine, sine, uniform


def cell_normal(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> torch.Tensor:
    """One float32 standard normal per cell (n, cols) (the cosine output of :func:`cell_draws`)."""
    return _cell_streams(rows, cols, seed, keys, 2, normals=1)[0]


def cell_uniform(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> torch.Tensor:
    """One float32 uniform (0, 1) per cell (n, cols), on a 2^-24 grid."""
    return _cell_streams(rows, cols, seed, keys, 1)[0]


def stream_key(seed: int, *keys: object) -> int:
    """The int32 key of the stream (seed, keys) for :func:`counter_normal` (computed once,
    outside any compiled region: the key derivation is host work)."""
    return _int32(derive_seed(seed, *keys))


def counter_normal(counter: torch.Tensor, key: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals of ``shape`` for draw number ``counter`` (an int32 scalar tensor) of
    the stream ``key`` (:func:`stream_key`): one 32-bit mix per element, Box-Muller on 24-bit
    uniforms. Pure tensor arithmetic with no generator object and no host sync, so it traces
    into one fused kernel under ``torch.compile``; the same (key, counter) gives the same values."""
    numel = math.prod(shape)
    base = mix32(counter.to(torch.int32) ^ key)
    index = torch.arange(numel, device=counter.device, dtype=torch.int32)
    h1 = mix32(index * _G32 ^ base)
    h2 = mix32(h1 ^ _G32)
    radius = torch.sqrt(-2.0 * torch.log(_uniform24(h1)))
    return (radius * torch.cos((2.0 * math.pi) * _uniform24(h2))).to(dtype).view(shape)
