"""Weight clipping for hardware-aware training.

A crossbar maps each column's largest weight magnitude onto the top of the conductance
window (``weight_scaling: per_column``; the largest of the layer for ``per_layer``). One
outlier weight therefore stretches the scale of its whole column: every other weight of
the column lands on a few low conductance levels, where programming noise and
quantization are largest relative to it. Clipping each column to ``clip_sigma`` standard
deviations (of that column's weights; of the layer's for ``per_layer`` scaling) after
every optimizer step keeps the window used by the bulk of the weights. 2.5-3 sigma is the
usual choice (aihwkit clips to 2.5 sigma of the layer); the network adapts to the clipped
outliers while it trains. Embedding tables are clipped per embedding column, the way they
are scaled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import increment_version

from cimflow.errors import CimflowError
from cimflow.sim import fused_read
from cimflow.sim.convert import cim_layers
from cimflow.sim.embedding import CIMEmbeddingBag
from cimflow.sim.layers import CIMLayer


def clip_bounds(weight_in_out: torch.Tensor, clip_sigma: float, per_column: bool, dim: int = 0) -> torch.Tensor:
    """``clip_sigma`` standard deviations of each column of an (in, out) matrix (``dim``
    reduced: 0, or 1 for the same matrix laid out (out, in)), or of the whole matrix; shape
    (out,) or () respectively."""
    w = weight_in_out.detach()
    if per_column:  # the population std as the norm of the centred values (torch.std is ~15x slower on a CPU)
        centred = w - w.mean(dim=dim, keepdim=True)
        return torch.linalg.vector_norm(centred, dim=dim).mul_(clip_sigma / math.sqrt(w.shape[dim]))
    return clip_sigma * w.std(unbiased=False)


@torch.no_grad()
def clip_weights(model: nn.Module, clip_sigma: float = 3.0, analog_only: bool = True, count: bool = True) -> int:
    """Clip every CIM layer's weights to ``clip_sigma`` standard deviations per column (per
    layer for ``weight_scaling: per_layer``), in place. Digital arrays are skipped unless
    ``analog_only`` is false. Returns the number of weights that were clipped (``count=False``:
    the number of layers that had weights beyond their bounds, one pass over the weights
    fewer; what a training loop that only clips wants).

    Matrix layers are clipped in their weight's own layout (out, in): each crossbar column is
    a contiguous row there, so the statistics and the clip are single passes."""
    if not clip_sigma > 0:
        raise CimflowError(f"clip_sigma must be a positive number of standard deviations, got {clip_sigma!r}")
    clipped = 0
    for _, layer in cim_layers(model):
        spec = layer.engine.spec if isinstance(layer, CIMLayer) else layer.spec
        if analog_only and spec.kind != "analog":
            continue
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue  # a table read from a memory map or a hash: nothing to train
        per_column = spec.weight_scaling == "per_column"
        if isinstance(layer, CIMEmbeddingBag):
            matrix, dim = weight, 0  # (rows, dim): embedding columns are the array's columns
        else:
            matrix, dim = weight.reshape(weight.shape[0], -1), 1  # (out, in): a crossbar column per row
            kernel = _compiled(matrix, weight)
            if kernel is not None:  # two passes, in place
                n = int(kernel.clip_rows(matrix.detach().numpy(), float(clip_sigma), per_column, torch.empty(matrix.shape[0]).numpy()))
                if n:  # written through NumPy: the version counter told, as clamp_ would (a layer re-programs on it)
                    increment_version(weight)
                clipped += n if count else int(n > 0)
                continue
        bound = clip_bounds(matrix, clip_sigma, per_column, dim).clamp_min(1e-12)
        if per_column:
            bound = bound.unsqueeze(dim)
        high, low = matrix.amax(dim=dim, keepdim=per_column), matrix.amin(dim=dim, keepdim=per_column)
        if bool((high <= bound).all()) and bool((low >= -bound).all()):
            continue  # nothing beyond the bounds (two reductions, no pass that writes)
        n = int((matrix.abs() > bound).sum()) if count else 1
        if n:
            clipped += n
            matrix.clamp_(-bound, bound)
            if matrix.data_ptr() != weight.data_ptr():  # reshape copied a non-contiguous weight
                weight.copy_(matrix.view_as(weight))
    return clipped


def _compiled(matrix: torch.Tensor, weight: torch.Tensor) -> Any:
    """:mod:`cimflow.train.clip_kernels` where it clips ``matrix`` in place (a C-contiguous
    float32 view of ``weight`` on the CPU, numba importable and the compiled kernels on:
    :func:`cimflow.sim.fused_read.available`), else None (the torch form)."""
    if not (matrix.device.type == "cpu" and matrix.dtype == torch.float32 and matrix.is_contiguous()
            and matrix.data_ptr() == weight.data_ptr() and fused_read.available()):
        return None
    try:
        from cimflow.train import clip_kernels
    except ImportError:  # numba not built for this Python
        return None
    return clip_kernels


__all__ = ["clip_bounds", "clip_weights"]
