"""The fused CPU read: read noise drawn inside the readout, one pass after the matmuls.

On a CPU, eager PyTorch runs a read's elementwise steps one pass each (combine the int8
planes' products, widen the variances, square root, draw the normals, add, scale, clamp,
round, scale twice), and the normal draw alone costs about as much as a float32 matmul of
the same output. :func:`int_readout` does all of it in one compiled pass per output row
(:mod:`cimflow.sim.read_kernels`, numba), drawing the read noise from a counter-based
stream (:func:`normals`: a 256-layer ziggurat on a SplitMix64 hash of (stream key, draw
number, row, column); no generator state, so a row's noise does not depend on the batch it
was read in). The stream key is the layer's (seed, name, "read") key and the draw number its
:attr:`read_counter`, restarted by ``program``: the same seed reads the same values.

The arithmetic is the unfused read's (:func:`cimflow.sim.single_read.single_read`): the
same ADC codes up to float rounding at a code boundary; ``tests/sim/test_fused_read.py``
pins the normals' distribution (moments, tails, Kolmogorov-Smirnov) and the fused read's
noise moments against the float32 read.

Used where the read runs on the int8 matrix units (:func:`cimflow.sim.fastmm.int8_planes`)
with a multi-bit ADC; ``CIMFLOW_FUSED_READ=0`` turns it off (the unfused torch passes, with
the instance's torch generator), and so does a missing numba.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

_KERNELS: Any = None
_TRIED = False


def _kernels() -> Any:
    global _KERNELS, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            from cimflow.sim import read_kernels
        except ImportError:  # numba absent or not built for this Python: the unfused read
            read_kernels = None  # type: ignore[assignment]
        _KERNELS = read_kernels
    return _KERNELS


def available() -> bool:
    """Whether the fused read runs here (numba importable, not turned off)."""
    return os.environ.get("CIMFLOW_FUSED_READ", "1") != "0" and _kernels() is not None


def _u64(value: int) -> np.uint64:
    """A stream key or draw number as the kernels' one integer type (two's complement for negatives)."""
    return np.uint64(value & 0xFFFFFFFFFFFFFFFF)


_EMPTY_I16 = torch.empty(0, dtype=torch.int16)
_EMPTY_BOOL = torch.empty(0, dtype=torch.bool)


def normals(key: int, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals (float32, CPU) of draw ``draw`` of stream ``key``, element e of the
    flattened tensor the stream's element e: the values :func:`int_readout` adds there."""
    out = torch.empty(shape, dtype=torch.float32)
    _kernels().normals(_u64(key), _u64(draw), out.view(-1).numpy())
    return out


def int_readout(hi: torch.Tensor, lo: torch.Tensor, var: torch.Tensor | None, z: torch.Tensor, given: bool, key: int,
                draw: int, coef: torch.Tensor, steps: float, lsb: torch.Tensor, scale_x: torch.Tensor,
                want_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """One read after its int8 products ``hi``, ``lo`` (G, N, out) int32: returns the output
    (N, out) float32, the ADC's in-range mask (G, N, out) when ``want_mask``, and whether
    any partial sum clipped. ``var``: bfloat16 variances (G, N, out) in the planes' units
    (None: no read noise); ``z`` (G N out,) float32: scratch for the stream's normals, or
    the normals to use when ``given`` (training's pooled draws); ``coef`` (G, out): planes'
    units to ADC steps; ``steps``: the ADC's steps per side; ``lsb`` (G, out): an ADC step in
    output units over the input scale; ``scale_x`` (N,): each vector's input scale."""
    groups, n, m = hi.shape
    y = torch.empty((n, m), dtype=torch.float32)
    mask = torch.empty((groups, n, m), dtype=torch.bool) if want_mask else _EMPTY_BOOL
    var16 = _EMPTY_I16 if var is None else var.contiguous().view(torch.int16)
    clipped = _kernels().int_readout(
        hi.numpy(), lo.numpy(), var16.view(-1, n, m).numpy(), z.view(-1).numpy(), _u64(key), _u64(draw), given,
        coef.to(torch.float32).contiguous().view(groups, m).numpy(), float(steps),
        lsb.to(torch.float32).contiguous().view(groups, m).numpy(), scale_x.reshape(-1).to(torch.float32).contiguous().numpy(),
        y.numpy(), mask.view(-1, n, m).numpy())
    return y, (mask if want_mask else None), bool(clipped)


__all__ = ["available", "int_readout", "normals"]
