"""A DLRM of a given shape within a memory budget, and its pre-generated inputs, for
measuring the CPU baseline at realistic scale (:func:`cimflow.recsys.baseline.measure_dlrm_cpu`).

* :func:`scale_tables` — every table's rows times one factor (at least 1 row each) so the
  fp32 tables fit a byte budget; factor 1.0 when they already fit.
* :func:`build_scaled_dlrm` — the DLRM allocated without a slow init over GBs of tables.
* :func:`input_pool` / :func:`split_pool` — Zipf-skewed synthetic samples generated once
  and cut into batches of any size (views, no copies).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cimflow.errors import CimflowError
from cimflow.recsys.models import DLRM, DLRMConfig, criteo_kaggle, mlperf_dlrm_v2, table_weights
from cimflow.recsys.synthetic import SyntheticCriteo

__all__ = ["Pairs", "build_scaled_dlrm", "input_pool", "scale_tables", "shape_name", "split_pool"]

#: One batch's sparse side: a ``(values, offsets [B+1])`` pair per table.
Pairs = list[tuple[Tensor, Tensor]]


def shape_name(config: DLRMConfig) -> str | None:
    """``"criteo-kaggle"`` or ``"dlrm-v2"`` when ``config`` is that shape, else None."""
    known = {"criteo-kaggle": criteo_kaggle(), "dlrm-v2": mlperf_dlrm_v2()}
    return next((name for name, shape in known.items() if shape == config), None)


def scale_tables(table_sizes: Sequence[int], dim: int, budget_bytes: int) -> tuple[tuple[int, ...], float]:
    """Rows per table after scaling every table by one factor (at least 1 row each) so the
    fp32 tables fit ``budget_bytes``; returns ``(rows, factor)``, factor 1.0 when they fit."""
    row_bytes = 4 * dim
    sizes = [int(n) for n in table_sizes]
    if not sizes or min(sizes) < 1 or dim < 1:
        raise CimflowError(f"table sizes and dim must be >= 1, got {sizes} and {dim}")
    if budget_bytes < len(sizes) * row_bytes:
        raise CimflowError(
            f"memory_budget_bytes = {budget_bytes} cannot hold 1 row of each of the {len(sizes)} tables "
            f"({len(sizes) * row_bytes} bytes at dim {dim}, fp32); allowed: >= {len(sizes) * row_bytes}"
        )
    if sum(sizes) * row_bytes <= budget_bytes:
        return tuple(sizes), 1.0
    factor = budget_bytes / (sum(sizes) * row_bytes)
    for _ in range(64):  # tables held at 1 row push the total over; shrink the factor until it fits
        rows = [max(1, int(n * factor)) for n in sizes]
        total = sum(rows) * row_bytes
        if total <= budget_bytes:
            return tuple(rows), factor
        factor *= budget_bytes / total * 0.999
    return (1,) * len(sizes), min(1 / n for n in sizes)


def build_scaled_dlrm(config: DLRMConfig, seed: int) -> DLRM:
    """The DLRM allocated without initializing GBs of tables slowly: MLPs get their usual
    init, every table row the same small fp32 pattern (one fast copy per table)."""
    torch.manual_seed(seed)
    model = DLRM(config, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        pattern = torch.linspace(-0.01, 0.01, config.embedding_dim)
        for weight in table_weights(model):
            weight.copy_(pattern.expand_as(weight))
    return model.eval()


def input_pool(
    config: DLRMConfig, skew: float, samples: int, chunk: int, seed: int
) -> list[tuple[Tensor, Pairs]]:
    """``samples`` pre-generated samples in chunks of ``chunk`` as ``(dense, per-table pairs)``."""
    generator = SyntheticCriteo.from_config(config, alpha=skew, seed=seed)
    pool = []
    for index in range(max(1, -(-samples // chunk))):
        dense, sparse, _ = generator.batch(chunk, index)
        sparse.validate(config.table_sizes)
        pool.append((dense, sparse.per_feature()))
    return pool


def split_pool(pool: list[tuple[Tensor, Pairs]], batch: int) -> list[tuple[Tensor, Pairs]]:
    """The pool cut into batches of ``batch`` samples (views; a chunk's remainder is dropped)."""
    batches = []
    for dense, pairs in pool:
        for start in range(0, dense.shape[0] - batch + 1, batch):
            cut = []
            for values, offsets in pairs:
                bounds = offsets[start : start + batch + 1]
                first = int(bounds[0])
                cut.append((values[first : int(bounds[-1])], bounds - first))
            batches.append((dense[start : start + batch], cut))
    return batches
