"""Where an embedding table's float values come from: a tensor (in memory or memory-mapped),
a hash of (seed, row, column) for tables described by shape only, or the owning module's
live ``weight`` parameter. :class:`cimflow.sim.embedding.CIMEmbeddingBag` reads rows through
:class:`TableSource` and never copies a whole table."""

from __future__ import annotations

from typing import Protocol

import torch

from cimflow.errors import DataError
from cimflow.physics.hashing import cell_uniform


class TableSource(Protocol):
    """Where a table's float values come from (a parameter, a memory map, a hash)."""

    num_embeddings: int
    embedding_dim: int

    def rows(self, idx: torch.Tensor) -> torch.Tensor: ...

    def column_scale(self) -> torch.Tensor: ...


class TensorTable:
    """Rows of an in-memory or memory-mapped (``torch.from_numpy(np.memmap)``) tensor; the
    column scale is computed in chunks, never copying the table. Rows are read in float32."""

    def __init__(self, tensor: torch.Tensor, chunk_rows: int = 1 << 20) -> None:
        if tensor.dim() != 2:
            raise DataError(f"an embedding table must be 2-D (rows x dim), got shape {tuple(tensor.shape)}")
        self.tensor = tensor
        self.num_embeddings, self.embedding_dim = int(tensor.shape[0]), int(tensor.shape[1])
        self.chunk_rows = chunk_rows

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tensor.detach()[idx].float()

    def column_scale(self) -> torch.Tensor:
        scale = torch.zeros(self.embedding_dim)
        for start in range(0, self.num_embeddings, self.chunk_rows):
            chunk = self.tensor.detach()[start : start + self.chunk_rows].float().abs().amax(dim=0)
            scale = torch.maximum(scale, chunk.cpu())
        return torch.where(scale > 0, scale, torch.ones_like(scale))


class HashedTable:
    """A table described by shape only: row r, column c holds ``scale * (2u - 1)`` with u a
    hashed uniform of (seed, r, c). Nothing is allocated until rows are read."""

    def __init__(self, num_embeddings: int, embedding_dim: int, seed: int = 0, scale: float = 0.01, name: str = "table") -> None:
        if num_embeddings < 1 or embedding_dim < 1:
            raise DataError(f"a table needs at least one row and one column, got {num_embeddings} x {embedding_dim}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.seed, self.scale, self.name = seed, float(scale), name

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.scale * (2.0 * cell_uniform(idx, self.embedding_dim, self.seed, self.name, "values") - 1.0)

    def column_scale(self) -> torch.Tensor:
        return torch.full((self.embedding_dim,), self.scale)


class WeightOwner(Protocol):
    """A module with a ``weight`` parameter of shape (num_embeddings, embedding_dim)."""

    num_embeddings: int
    embedding_dim: int
    weight: torch.Tensor


class ParameterTable(TensorTable):
    """The owning module's ``weight`` parameter (read live, so optimizers keep working)."""

    def __init__(self, owner: WeightOwner) -> None:
        self.owner = owner
        self.num_embeddings, self.embedding_dim = owner.num_embeddings, owner.embedding_dim
        self.chunk_rows = 1 << 20

    @property
    def tensor(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner.weight
