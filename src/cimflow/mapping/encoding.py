"""Weight -> conductance encodings (differential pair, offset column, bit slicing).

All functions take the weight matrix in (in_features, out_features) layout, i.e. rows of
the crossbar first, and return target conductances in siemens. They are pure and
deterministic: device noise is applied later by :mod:`cimflow.physics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cimflow.chip.spec import ArraySpec


@dataclass
class ConductanceTargets:
    """Target conductances of one weight matrix.

    ``positive[s]`` and ``negative[s]`` (siemens, shape (in, out)) are the two cells whose
    current difference encodes slice ``s``; for the offset scheme ``negative[0]`` is the
    shared reference column at mid-window, shape (in, col_tiles). The normalized weight
    a slice represents is ``(positive - negative) / denominator``; slices combine as
    ``sum_s significance[s] * w_s`` into a value in [-1, 1].
    """

    positive: list[torch.Tensor]
    negative: list[torch.Tensor]
    significance: list[float]
    denominator: float
    reference_per_col_tile: bool = False


def weight_scales(weight_in_out: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-column (shape (out,)) or per-layer scale ``max |w|`` that maps weights into [-1, 1].

    A column of zeros gets scale 1 (it encodes zeros either way)."""
    w = weight_in_out.detach().abs()
    if mode == "per_column":
        scale = w.amax(dim=0)
    else:
        scale = w.amax().expand(w.shape[1]).clone()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def encode_weights(w_norm: torch.Tensor, spec: ArraySpec, col_tiles: int = 1) -> ConductanceTargets:
    """Encode normalized weights ``w_norm`` in [-1, 1], shape (in, out), for an analog array."""
    dev = spec.device
    g_min, g_max, levels = dev.g_min, dev.g_max, dev.n_levels
    span = g_max - g_min
    w = w_norm.clamp(-1.0, 1.0)
    scheme = spec.weight_encoding.scheme
    if scheme == "differential":
        level = torch.round(w.abs() * (levels - 1))
        g = g_min + span * level / (levels - 1)
        below = w < 0
        g_pos = g.masked_fill(below, g_min)  # the other cell of each pair at g_min
        g_neg = g.masked_fill_(below.logical_not_(), g_min)
        return ConductanceTargets([g_pos], [g_neg], [1.0], span)
    if scheme == "offset":
        half = (levels - 1) / 2.0
        level = torch.round((w + 1.0) * half)  # 0 .. levels-1 ; mid-window is zero when levels is odd
        g = g_min + span * level / (levels - 1)
        ref = torch.full((w.shape[0], col_tiles), g_min + span / 2.0, dtype=w.dtype, device=w.device)
        return ConductanceTargets([g], [ref], [1.0], span / 2.0, reference_per_col_tile=True)
    # bit_sliced: |w| quantized to levels**slices - 1 steps, digits base `levels`, least significant first
    slices = spec.weight_encoding.slices
    full = levels**slices - 1
    magnitude = torch.round(w.abs() * full)
    sign_pos = w >= 0
    positive, negative, significance = [], [], []
    for s in range(slices):
        digit = torch.remainder(torch.div(magnitude, levels**s, rounding_mode="floor"), levels)
        g = g_min + span * digit / (levels - 1)
        g_lo = torch.full_like(g, g_min)
        positive.append(torch.where(sign_pos, g, g_lo))
        negative.append(torch.where(sign_pos, g_lo, g))
        significance.append((levels**s) * (levels - 1) / full)
    return ConductanceTargets(positive, negative, significance, span)
