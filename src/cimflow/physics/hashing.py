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
