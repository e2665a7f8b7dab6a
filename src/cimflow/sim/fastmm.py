"""Integer and bfloat16 matrix units for the crossbar's inference read (CPU with AMX).

The arrays are driven by DAC codes, small integers (|code| <= 127 for inputs of up to 8
bits). Two products of one read can therefore run on the CPU's int8 / bfloat16 matrix
units (Intel AMX) instead of float32 FMA, with no loss that a test could see:

- **the signal** ``codes @ W``: ``W`` is split per column into three signed 8-bit limbs,
  ``W = c (L1 2^16 + L2 2^8 + L3) / Q`` with ``Q = 2^23 - 2^16``; each limb product is an
  exact int32 sum, so the only error is ``W``'s rounding to 23 bits of its column's largest
  magnitude (about 1.2e-7 of it, the size of float32 rounding) and the float32 combination;
- **the read-noise variance** ``codes^2 @ var``: only its square root scales the noise, and
  bfloat16 inputs (8-bit mantissa, float32 accumulation, bfloat16 result) hold each
  variance to about 0.4 %: a sample would need ~10^6 reads per column to tell the
  difference. The moments are pinned by ``tests/sim/test_fast_read.py``.

Read groups are laid out block-diagonally (group ``g``'s rows feed columns
``g*out .. (g+1)*out``), so several groups are one matmul over the layer's true input
rows, with no padding to a whole number of groups.

Where the matrix units are missing (other CPUs, CUDA) :func:`matrix_units_available` is
False and the engine keeps its float32 path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

#: Full scale of the 3-limb integer weights: |q| <= Q keeps the top limb within int8.
LIMB_SCALE = float((1 << 23) - (1 << 16))
#: Inputs per read beyond which an int32 limb product could overflow (127 * 128 per term).
MAX_INT8_ROWS = (1 << 31) // (127 * 128)

_AVAILABLE: bool | None = None


def matrix_units_available() -> bool:
    """Whether this CPU has int8/bfloat16 matrix units torch uses (AMX). Set
    ``CIMFLOW_MATRIX_UNITS=0`` to force the float32 path (benchmarks compare both)."""
    global _AVAILABLE
    if os.environ.get("CIMFLOW_MATRIX_UNITS", "1") == "0":
        return False
    if _AVAILABLE is None:
        try:
            _AVAILABLE = bool(torch._C._cpu._init_amx()) and hasattr(torch, "_int_mm")
        except (AttributeError, RuntimeError):
            _AVAILABLE = False
    return _AVAILABLE


@dataclass
class IntegerReadPlan:
    """One programmed slice laid out for :func:`signal_and_variance`: ``limbs`` (in, 3*G*out)
    int8 (the three limbs side by side, one matmul), ``col_scale`` (G*out,) float32 (``c / Q``), ``var_bf16`` (in, G*out) bfloat16 per-cell
    read-noise variances divided by ``col_scale**2``, or None."""

    limbs: torch.Tensor
    col_scale: torch.Tensor
    var_bf16: torch.Tensor | None


def block_diagonal(grouped: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(G, gr, out) per-group matrices, group g holding ``sizes[g]`` real rows, as one
    (sum(sizes), G*out) matrix: group g's rows feed only its own column block."""
    g_count, _, out = grouped.shape
    full = grouped.new_zeros(sum(sizes), g_count * out)
    start = 0
    for g, size in enumerate(sizes):  # programming time, not the read
        full[start : start + size, g * out : (g + 1) * out] = grouped[g, :size]
        start += size
    return full


def split_limbs(w: torch.Tensor, floor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a float (in, K) matrix into three int8 limbs (3, in, K) and per-column scales
    (K,), ``w ~= col_scale * (L1 * 65536 + L2 * 256 + L3)``. ``floor`` (K,) is the smallest
    column peak allowed (see :func:`make_plan`); an all-zero column gets scale 1 / Q (exact)."""
    peak = w.abs().amax(dim=0)
    if floor is not None:
        peak = torch.maximum(peak, floor.to(peak.dtype))
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    q = torch.round(w.double() * (LIMB_SCALE / peak.double())).to(torch.int64)
    l3 = torch.remainder(q + 128, 256) - 128
    q2 = torch.div(q - l3, 256, rounding_mode="floor")
    l2 = torch.remainder(q2 + 128, 256) - 128
    l1 = torch.div(q2 - l2, 256, rounding_mode="floor")
    limbs = torch.stack([l1, l2, l3]).to(torch.int8)
    return limbs, (peak / LIMB_SCALE).to(torch.float32)


def join_limbs(limbs: torch.Tensor) -> torch.Tensor:
    """(3, in, K) limbs side by side as one (in, 3K) int8 matrix."""
    return torch.cat(list(limbs), dim=1).contiguous()


def make_plan(w_grouped: torch.Tensor, var_grouped: torch.Tensor | None, sizes: list[int]) -> IntegerReadPlan:
    """Lay out one slice's effective weights (G, gr, out) and per-cell read-noise variances
    (G, gr, out) or None for :func:`signal_and_variance`."""
    block_var = None if var_grouped is None else block_diagonal(var_grouped, sizes)
    # A column's peak is at least its largest noise sigma, so var / scale^2 <= Q^2 stays finite in
    # bfloat16 (a column of stuck cells has w = 0 and var > 0: 0 / 0 was NaN); float64 division,
    # as scale^2 underflows float32 for tiny columns.
    floor = None if block_var is None else block_var.amax(dim=0).sqrt()
    limbs, scale = split_limbs(block_diagonal(w_grouped, sizes), floor)
    var = None
    if block_var is not None:  # in limb units squared, so the noise adds to the integer sums
        var = (block_var.double() / scale.double().square()).to(torch.bfloat16).contiguous()
    return IntegerReadPlan(join_limbs(limbs), scale, var)


def signal_and_variance(codes: torch.Tensor, plan: IntegerReadPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Partial sums (N, G*out) and their read-noise variances (N, G*out) float32 (None
    without read noise), for integer DAC codes ``codes`` (N, in) in [-127, 127], both in limb
    units: multiply the sums (and the noise's standard deviation) by ``plan.col_scale`` for
    DAC-code units."""
    k = plan.col_scale.shape[0]
    sums = torch._int_mm(codes.to(torch.int8), plan.limbs)  # (N, 3K) exact int32
    acc = sums[:, :k].to(torch.float32)
    acc.mul_(65536.0).add_(sums[:, k : 2 * k], alpha=256.0).add_(sums[:, 2 * k :])
    if plan.var_bf16 is None:
        return acc, None
    xb = codes.to(torch.bfloat16)
    var = torch.mm(xb.mul_(xb), plan.var_bf16).to(torch.float32)
    return acc, var


__all__ = ["IntegerReadPlan", "LIMB_SCALE", "MAX_INT8_ROWS", "block_diagonal", "join_limbs", "make_plan", "matrix_units_available", "signal_and_variance", "split_limbs"]
