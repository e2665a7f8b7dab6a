"""Seeded random generators derived from (seed, keys...)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from an integer seed and any keys (layer name, purpose, instance ...).

    Stable across processes and platforms (BLAKE2b of the keys' ``repr``), so the same
    (seed, keys) always gives the same stream.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((int(seed),) + tuple(keys)).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def generator_for(seed: int, *keys: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded by :func:`derive_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *keys))
    return gen
