"""Training data as (inputs, target) batches and the loss that goes with them.

:func:`as_batches` accepts what the workloads provide - scikit-learn digits
(:class:`cimflow.vision.DigitsData`), a recommendation dataset
(:class:`cimflow.recsys.data.RecDataset`), a pair of tensors ``(x, y)`` - or any
re-iterable of ready batches ``(input_1, ..., input_k, target)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cimflow.errors import CimflowError

Batch = tuple[tuple[Any, ...], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainData:
    """Batches for one epoch (``epoch(generator)``), their count, and the default loss."""

    epoch: Callable[[torch.Generator], Iterator[Batch]]
    batches_per_epoch: int
    loss_fn: LossFn
    description: str


def _tensor_pair(x: torch.Tensor, y: torch.Tensor, batch_size: int, name: str) -> TrainData:
    if x.shape[0] != y.shape[0]:
        raise CimflowError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} targets")
    n = x.shape[0]
    if n == 0:
        raise CimflowError(f"{name}: no training samples")

    def epoch(generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            yield (x[idx],), y[idx]

    loss: LossFn = nn.functional.cross_entropy if not y.is_floating_point() else nn.functional.mse_loss
    return TrainData(epoch, -(-n // batch_size), loss, f"{name} ({n} samples)")


def _rec_dataset(data: Any, batch_size: int) -> TrainData:
    def epoch(generator: torch.Generator) -> Iterator[Batch]:
        for dense, sparse, labels in data.batches(batch_size, shuffle=True, generator=generator):
            yield (dense, sparse.per_feature()), labels

    return TrainData(epoch, -(-len(data) // batch_size), nn.functional.binary_cross_entropy_with_logits,
                     f"{getattr(data, 'name', 'recsys')} ({len(data)} samples)")


def _ready_batches(data: Iterable[Any]) -> TrainData:
    batches = data if isinstance(data, (list, tuple)) else None
    if batches is None and iter(data) is data:
        raise CimflowError("training data given as an iterator can be read only once: pass a list, a DataLoader or another re-iterable")

    def epoch(generator: torch.Generator) -> Iterator[Batch]:
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise CimflowError("each training batch must be a tuple (input_1, ..., input_k, target)")
            yield tuple(batch[:-1]), batch[-1]

    count = len(batches) if batches is not None else (len(data) if isinstance(data, Sized) else 0)
    return TrainData(epoch, count, nn.functional.cross_entropy, "batches")


def as_batches(data: Any, batch_size: int = 64) -> TrainData:
    """Wrap training data (see the module docstring) as :class:`TrainData`."""
    if batch_size < 1:
        raise CimflowError(f"batch_size must be at least 1, got {batch_size}")
    if hasattr(data, "x_train") and hasattr(data, "y_train"):  # DigitsData and look-alikes
        return _tensor_pair(data.x_train, data.y_train, batch_size, "digits")
    if hasattr(data, "batches") and hasattr(data, "labels") and hasattr(data, "sparse"):  # RecDataset
        return _rec_dataset(data, batch_size)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return _tensor_pair(data[0], data[1], batch_size, "tensors")
    if isinstance(data, Iterable):
        return _ready_batches(data)
    raise CimflowError(
        f"cannot train on {type(data).__name__}: pass DigitsData, a RecDataset, a pair of tensors (x, y) "
        "or a re-iterable of batches (input_1, ..., input_k, target)"
    )


__all__ = ["Batch", "LossFn", "TrainData", "as_batches"]
