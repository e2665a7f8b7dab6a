"""Counter-based random numbers: a value for every (seed, table, row, cell, purpose) without
storing anything, so the programming noise of a 10^8-row table costs nothing until a row
is read (docs/architecture.md, "Huge tables").

The mixer is SplitMix64's finalizer on int64 tensors (wrap-around multiplication, logical
shifts by masking); uniforms use its top 53 bits; normals use Box-Muller on two uniforms.
"""

from __future__ import annotations

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
# modulo 2^32, as PyTorch's int32 kernels do on every device.

_M32_1 = 0x7FEB352D
_M32_2 = 0x846CA68B - (1 << 32)  # as int32
_G32 = 0x9E3779B9 - (1 << 32)


def _shr32(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int32 values."""
    return (x >> k) & ((1 << (32 - k)) - 1)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective avalanche mix of int32 values (the "lowbias32" finalizer)."""
    x = x ^ _shr32(x, 16)
    x = x * _M32_1
    x = x ^ _shr32(x, 15)
    x = x * _M32_2
    return x ^ _shr32(x, 16)


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def _uniform24(h: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) float32 from the top 24 bits of int32 hashes (exact in float32)."""
    return (_shr32(h, 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def cell_hashes(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> torch.Tensor:
    """int32 hashes (n, cols) of the cells (row, 0..cols-1) of ``rows`` under the stream
    (seed, keys). Rows may exceed 2^32 (both halves are mixed in)."""
    salt = derive_seed(seed, *keys)
    r = rows.to(torch.int64)
    lo = _int32_tensor(r & 0xFFFFFFFF)
    hi = _int32_tensor((r >> 32) & 0xFFFFFFFF)
    row_key = mix32(lo ^ mix32(hi ^ _int32(salt)))
    col = torch.arange(cols, device=rows.device, dtype=torch.int32)
    col_key = mix32(col * _G32 ^ _int32(salt >> 32))
    return mix32(row_key.unsqueeze(1) ^ col_key.unsqueeze(0))


def _int32_tensor(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as the int32 with the same bits."""
    return torch.where(x >= (1 << 31), x - (1 << 32), x).to(torch.int32)


def cell_draws(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three independent float32 draws per cell (n, cols): two standard normals (the cosine
    and sine outputs of one Box-Muller pair on 24-bit uniforms, so |z| < 5.9) and a uniform
    (0, 1), reproducible for the same (seed, keys, row, column)."""
    h1 = cell_hashes(rows, cols, seed, *keys)
    h2 = mix32(h1 ^ _G32)
    h3 = mix32(h2 ^ _M32_1)
    radius = torch.sqrt(-2.0 * torch.log(_uniform24(h1)))
    angle = (2.0 * math.pi) * _uniform24(h2)
    return radius * torch.cos(angle), radius * torch.sin(angle), _uniform24(h3)


def cell_normal(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> torch.Tensor:
    """One float32 standard normal per cell (n, cols) (the cosine output of :func:`cell_draws`)."""
    h1 = cell_hashes(rows, cols, seed, *keys)
    h2 = mix32(h1 ^ _G32)
    return torch.sqrt(-2.0 * torch.log(_uniform24(h1))) * torch.cos((2.0 * math.pi) * _uniform24(h2))


def cell_uniform(rows: torch.Tensor, cols: int, seed: int, *keys: object) -> torch.Tensor:
    """One float32 uniform (0, 1) per cell (n, cols), on a 2^-24 grid."""
    return _uniform24(cell_hashes(rows, cols, seed, *keys))


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
