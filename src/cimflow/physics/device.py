"""Cell-level effects: level quantization, programming noise, drift, read noise, stuck
cells and first-order IR drop. Conductances in siemens; times in seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def quantize_to_levels(g: torch.Tensor, g_min: float, g_max: float, levels: int) -> torch.Tensor:
    """Round conductances to the nearest of ``levels`` evenly spaced values in [g_min, g_max]."""
    if levels < 2:
        raise ValueError("levels must be at least 2")
    step = (g_max - g_min) / (levels - 1)
    idx = torch.round((g.clamp(g_min, g_max) - g_min) / step)
    return g_min + idx * step


def programming_sigma(g: torch.Tensor, g_max: float, coefficients: Sequence[float]) -> torch.Tensor:
    """State-dependent programming-noise sigma in siemens:
    ``g_max * sum_k c_k (g / g_max)**k`` (negative values clipped to 0)."""
    scaled = [c * g_max for c in coefficients]  # g_max folded into the coefficients: no pass to scale back
    if len(scaled) <= 1:
        return torch.full_like(g, max(scaled[0], 0.0) if scaled else 0.0)
    x = g / g_max
    sigma = torch.mul(x, scaled[-1]).add_(scaled[-2])  # Horner, in place
    for c in reversed(scaled[:-2]):
        sigma.mul_(x).add_(c)
    return sigma.clamp_min_(0.0)


def program_conductances(
    g_target: torch.Tensor, g_max: float, coefficients: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """One programming of every cell: ``g_target + sigma(g_target) * N(0, 1)``, clipped at 0 S."""
    if all(c == 0 for c in coefficients):
        return g_target.clone()
    noise = torch.randn(g_target.shape, generator=generator, device=g_target.device, dtype=g_target.dtype)
    return (g_target + programming_sigma(g_target, g_max, coefficients) * noise).clamp_min(0.0)


def sample_drift_exponents(
    shape: Sequence[int], nu_mean: float, nu_std: float, generator: torch.Generator,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-cell drift exponents nu ~ N(nu_mean, nu_std), clipped at 0 (sampled once per programming)."""
    if nu_std == 0:
        return torch.full(tuple(shape), max(float(nu_mean), 0.0), device=device, dtype=dtype)
    return drift_exponents_(torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype), nu_mean, nu_std)


def drift_exponents_(z: torch.Tensor, nu_mean: float, nu_std: float) -> torch.Tensor:
    """:func:`sample_drift_exponents`' law applied in place to standard normals ``z``:
    ``max(nu_mean + nu_std z, 0)``."""
    return z.mul_(nu_std).add_(nu_mean).clamp_min_(0.0)


def apply_drift(g: torch.Tensor, nu: torch.Tensor | float, t: float, t0: float) -> torch.Tensor:
    """Power-law drift: ``G(t) = G(t0) * (t / t0) ** -nu`` for t >= t0; unchanged for t <= t0."""
    if t <= t0:
        return g
    if not isinstance(nu, torch.Tensor):
        return g * (t / t0) ** -nu
    return torch.mul(nu, -math.log(t / t0)).exp_().mul_(g)  # exp(-nu ln(t/t0)): one fresh tensor, in place


def read_noise(g: torch.Tensor, relative_sigma: float, generator: torch.Generator) -> torch.Tensor:
    """One read of every cell: ``g * (1 + relative_sigma * N(0, 1))`` (cell-level reference
    implementation; the simulator samples the equivalent noise on column sums)."""
    if relative_sigma == 0:
        return g
    noise = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
    return g * (1.0 + relative_sigma * noise)


def sample_stuck_mask(
    shape: Sequence[int], stuck_on_rate: float, stuck_off_rate: float, generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-cell fault codes (int8): 0 healthy, 1 stuck at g_max (on), -1 stuck at g_min (off)."""
    if stuck_on_rate == 0 and stuck_off_rate == 0:
        return torch.zeros(tuple(shape), dtype=torch.int8, device=device)
    return stuck_codes_from(torch.rand(tuple(shape), generator=generator, device=device), stuck_on_rate, stuck_off_rate)


def stuck_codes_from(u: torch.Tensor, stuck_on_rate: float, stuck_off_rate: float) -> torch.Tensor:
    """:func:`sample_stuck_mask`'s codes from uniforms ``u`` on [0, 1): 1 (stuck on) below
    ``stuck_on_rate``, -1 (stuck off) in the next ``stuck_off_rate``, else 0."""
    on = torch.lt(u, stuck_on_rate).to(torch.int8)
    return on.sub_(torch.lt(u, stuck_on_rate + stuck_off_rate).to(torch.int8).sub_(on))


def apply_stuck_at(g: torch.Tensor, mask: torch.Tensor, g_min: float, g_max: float) -> torch.Tensor:
    """Replace stuck cells: code 1 -> g_max, code -1 -> g_min."""
    if not bool(mask.any()):
        return g
    return g.masked_fill(mask == 1, g_max).masked_fill_(mask == -1, g_min)


def ir_drop_path_cells(
    rows: int, cols: int, device: torch.device | str = "cpu",
    row_index: torch.Tensor | None = None, col_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wire segments between each cell and its drivers, shape (rows, cols), or
    (len(row_index), len(col_index)) for only the cells those indices name.

    The word line is driven from column 0 and the bit line is sensed below the last row,
    so cell (i, j) sees ``(j + 1)`` word-line segments and ``(rows - i)`` bit-line
    segments in series. Give the indices of the cells in use: a 65536 x 65536 array would
    otherwise take 16 GiB.
    """
    i = torch.arange(rows, device=device) if row_index is None else row_index.to(device)
    j = torch.arange(cols, device=device) if col_index is None else col_index.to(device)
    return (j.to(torch.float32).unsqueeze(0) + 1.0) + (rows - i.to(torch.float32).unsqueeze(1))


def ir_drop_attenuate(g: torch.Tensor, path_cells: torch.Tensor, wire_resistance: float) -> torch.Tensor:
    """First-order IR drop: each cell in series with its wire resistance,
    ``G_eff = G / (1 + G * R_wire * segments)``. Ignores the current-dependent drop that
    other cells' currents cause (a first-order, input-independent model)."""
    if wire_resistance == 0:
        return g
    return g / (1.0 + g * wire_resistance * path_cells)
