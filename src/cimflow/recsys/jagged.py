"""Jagged (variable-length) sparse features, shaped like TorchRec's KeyedJaggedTensor.

A recommendation sample has, for every sparse feature ("key"), a *bag* of row indices
into that feature's embedding table: one index for a single-hot feature (user id),
several for a multi-hot one (a movie's genres), none for a missing value. A batch of
``B`` samples and ``K`` keys is stored flat, key-major, the way TorchRec lays it out::

    values  = [bags of key 0 for samples 0..B-1, bags of key 1 for samples 0..B-1, ...]
    lengths = [len(key0,s0) ... len(key0,sB-1), len(key1,s0) ... ]      # K*B entries
    offsets = [0, cumsum(lengths)]                                      # K*B+1 entries

:meth:`JaggedFeatures.per_feature` splits this into one ``(values, offsets)`` pair per
key, where ``offsets`` has ``B+1`` entries starting at 0 — exactly what
``nn.EmbeddingBag(..., include_last_offset=True)`` takes.

This module depends on torch only (no torchrec).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cimflow.errors import DataError

__all__ = ["JaggedFeatures", "FeaturePair"]

#: One key's bags: ``(values [n] int64, offsets [B+1] int64)`` with ``offsets[0] == 0``.
FeaturePair = tuple[Tensor, Tensor]


def _has_data(t: Tensor) -> bool:
    """False for meta tensors (shape only), whose values cannot be inspected."""
    return t.device.type != "meta"


def _as_index_tensor(name: str, t: Tensor | Sequence[int]) -> Tensor:
    tensor = torch.as_tensor(t)
    if tensor.dtype.is_floating_point or tensor.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise DataError(f"JaggedFeatures.{name} must hold integers, got dtype {tensor.dtype}")
    if tensor.dim() != 1:
        raise DataError(f"JaggedFeatures.{name} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.int64)


@dataclass(eq=False)
class JaggedFeatures:
    """A batch of sparse features in jagged, key-major layout (see the module docstring).

    Give ``lengths`` or ``offsets`` (or both, which must then agree); the other is
    derived. Construction checks the structure and raises :class:`DataError` for
    negative lengths, offsets that do not start at 0, decrease, or do not end at
    ``len(values)``, and a length count that is not a multiple of ``len(keys)``.
    Index *ranges* depend on the table sizes and are checked by :meth:`validate`.

    Attributes:
        keys: feature names, one per embedding table, in table order.
        values: row indices, int64, all keys concatenated (key-major).
        lengths: bag sizes, int64 ``[K*B]``.
        offsets: bag boundaries, int64 ``[K*B + 1]``.
    """

    keys: list[str]
    values: Tensor
    lengths: Tensor | None = None
    offsets: Tensor | None = None

    def __post_init__(self) -> None:
        self.keys = [str(k) for k in self.keys]
        if not self.keys:
            raise DataError("JaggedFeatures needs at least one key")
        if len(set(self.keys)) != len(self.keys):
            raise DataError(f"JaggedFeatures keys must be unique, got {self.keys}")
        self.values = _as_index_tensor("values", self.values)
        if self.lengths is None and self.offsets is None:
            raise DataError("JaggedFeatures needs lengths or offsets")
        if self.lengths is not None:
            self.lengths = _as_index_tensor("lengths", self.lengths)
        if self.offsets is not None:
            self.offsets = _as_index_tensor("offsets", self.offsets)
        self._check_and_complete()

    # ------------------------------------------------------------------ structure
    def _check_and_complete(self) -> None:
        num_keys = len(self.keys)
        if self.offsets is not None:
            self._check_offsets(self.offsets)
            derived = self.offsets[1:] - self.offsets[:-1]
            if self.lengths is not None and _has_data(self.lengths):
                if self.lengths.shape != derived.shape or not torch.equal(self.lengths, derived):
                    raise DataError("JaggedFeatures lengths and offsets disagree; give one of them")
            self.lengths = derived
        else:
            assert self.lengths is not None
            if _has_data(self.lengths) and self.lengths.numel() and int(self.lengths.min()) < 0:
                bad = int(torch.nonzero(self.lengths < 0)[0, 0])
                raise DataError(
                    f"JaggedFeatures lengths must be >= 0; lengths[{bad}] = {int(self.lengths[bad])}"
                )
            zero = torch.zeros(1, dtype=torch.int64, device=self.lengths.device)
            self.offsets = torch.cat([zero, torch.cumsum(self.lengths, 0)])
            if _has_data(self.offsets) and int(self.offsets[-1]) != self.values.numel():
                raise DataError(
                    f"JaggedFeatures lengths sum to {int(self.offsets[-1])} but there are "
                    f"{self.values.numel()} values"
                )
        if self.lengths.numel() % num_keys != 0:
            raise DataError(
                f"JaggedFeatures has {self.lengths.numel()} bags for {num_keys} keys; the number "
                "of bags must be a multiple of the number of keys (key-major layout, K*B bags)"
            )

    def _check_offsets(self, offsets: Tensor) -> None:
        if offsets.numel() == 0:
            raise DataError("JaggedFeatures offsets must have K*B+1 >= 1 entries, got 0")
        if not _has_data(offsets):
            return
        if int(offsets[0]) != 0:
            raise DataError(f"JaggedFeatures offsets must start at 0, got offsets[0] = {int(offsets[0])}")
        if offsets.numel() > 1:
            steps = offsets[1:] - offsets[:-1]
            if int(steps.min()) < 0:
                bad = int(torch.nonzero(steps < 0)[0, 0])
                raise DataError(
                    "JaggedFeatures offsets must be non-decreasing; offsets"
                    f"[{bad + 1}] = {int(offsets[bad + 1])} < offsets[{bad}] = {int(offsets[bad])}"
                )
        if int(offsets[-1]) != self.values.numel():
            raise DataError(
                f"JaggedFeatures offsets end at {int(offsets[-1])} but there are "
                f"{self.values.numel()} values"
            )

    # ------------------------------------------------------------------ views
    @property
    def num_keys(self) -> int:
        """Number of sparse features K."""
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        """Number of samples B."""
        assert self.lengths is not None
        return self.lengths.numel() // self.num_keys

    def lengths_by_key(self) -> Tensor:
        """Bag sizes as a ``[K, B]`` int64 tensor."""
        assert self.lengths is not None
        return self.lengths.view(self.num_keys, self.batch_size)

    def per_feature(self) -> list[FeaturePair]:
        """One ``(values, offsets)`` pair per key, offsets ``[B+1]`` starting at 0.

        The values are views into :attr:`values` (no copy).
        """
        assert self.offsets is not None
        batch = self.batch_size
        if batch == 0:
            empty = self.values[:0]
            zero = torch.zeros(1, dtype=torch.int64, device=self.values.device)
            return [(empty, zero) for _ in self.keys]
        bounds = self.offsets[::batch].tolist()
        pairs: list[FeaturePair] = []
        for k in range(self.num_keys):
            start, end = bounds[k], bounds[k + 1]
            local = self.offsets[k * batch : (k + 1) * batch + 1] - start
            pairs.append((self.values[start:end], local))
        return pairs

    def to_dict(self) -> dict[str, FeaturePair]:
        """``{key: (values, offsets)}``, see :meth:`per_feature`."""
        return dict(zip(self.keys, self.per_feature(), strict=True))

    # ------------------------------------------------------------------ checks
    def validate(self, table_sizes: Sequence[int]) -> None:
        """Check every index lies in ``[0, table_size)`` of its key's table.

        Raises:
            DataError: naming the feature, its table, the bad index, its position in
                the feature's values and the table size.
        """
        if len(table_sizes) != self.num_keys:
            raise DataError(
                f"JaggedFeatures has {self.num_keys} keys {self.keys} but {len(table_sizes)} "
                "table sizes were given; one table per key is required"
            )
        if not _has_data(self.values):
            return
        for k, ((values, _), size) in enumerate(zip(self.per_feature(), table_sizes, strict=True)):
            if values.numel() == 0:
                continue
            bad_mask = (values < 0) | (values >= int(size))
            if bool(bad_mask.any()):
                position = int(torch.nonzero(bad_mask)[0, 0])
                raise DataError(
                    f"sparse feature '{self.keys[k]}' (table {k}, {int(size)} rows): index "
                    f"{int(values[position])} at position {position} is out of range; "
                    f"allowed 0..{int(size) - 1}"
                )

    # ------------------------------------------------------------------ transforms
    def take(self, samples: Tensor | Sequence[int]) -> JaggedFeatures:
        """The sub-batch of the given sample indices (all keys), in that order."""
        assert self.offsets is not None
        index = torch.as_tensor(samples, dtype=torch.int64, device=self.values.device).reshape(-1)
        batch = self.batch_size
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
            raise DataError(f"sample index out of range for a batch of {batch}")
        starts = self.offsets[:-1].view(self.num_keys, batch)[:, index].reshape(-1)
        lengths = self.lengths_by_key()[:, index].reshape(-1)
        new_offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        total = int(new_offsets[-1])
        shift = torch.repeat_interleave(starts - new_offsets[:-1], lengths, output_size=total)
        positions = torch.arange(total, device=self.values.device) + shift
        return JaggedFeatures(self.keys, self.values[positions], offsets=new_offsets)

    def to(self, device: torch.device | str) -> JaggedFeatures:
        """A copy on ``device``."""
        assert self.offsets is not None
        return JaggedFeatures(self.keys, self.values.to(device), offsets=self.offsets.to(device))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_per_feature(cls, keys: Sequence[str], pairs: Sequence[FeaturePair]) -> JaggedFeatures:
        """Build from one ``(values, offsets [B+1])`` pair per key (all with the same B)."""
        if len(keys) != len(pairs):
            raise DataError(f"{len(keys)} keys but {len(pairs)} (values, offsets) pairs")
        lengths: list[Tensor] = []
        values: list[Tensor] = []
        batch: int | None = None
        for key, (v, o) in zip(keys, pairs, strict=True):
            o = _as_index_tensor(f"offsets of {key!r}", o)
            v = _as_index_tensor(f"values of {key!r}", v)
            if batch is None:
                batch = o.numel() - 1
            if o.numel() - 1 != batch:
                raise DataError(
                    f"feature {key!r} has {o.numel() - 1} bags but the first feature has {batch}; "
                    "every key needs the same batch size"
                )
            if o.numel() == 0 or int(o[0]) != 0 or int(o[-1]) != v.numel():
                raise DataError(
                    f"feature {key!r}: offsets must start at 0 and end at len(values) = {v.numel()}"
                )
            lengths.append(o[1:] - o[:-1])
            values.append(v)
        return cls(list(keys), torch.cat(values), lengths=torch.cat(lengths))

    @classmethod
    def from_dense_indices(cls, keys: Sequence[str], indices: Tensor) -> JaggedFeatures:
        """Single-hot features from an index matrix ``[B, K]`` (one row per sample)."""
        indices = torch.as_tensor(indices)
        if indices.dim() != 2 or indices.shape[1] != len(keys):
            raise DataError(
                f"from_dense_indices needs a [B, {len(keys)}] index matrix, got {tuple(indices.shape)}"
            )
        values = indices.t().reshape(-1).to(torch.int64)
        return cls(list(keys), values, lengths=torch.ones_like(values))

    @classmethod
    def from_lists(cls, keys: Sequence[str], bags: Sequence[Sequence[Sequence[int]]]) -> JaggedFeatures:
        """From nested Python lists ``bags[key][sample] = [row, row, ...]`` (tests, examples)."""
        if len(bags) != len(keys):
            raise DataError(f"{len(keys)} keys but bags for {len(bags)} keys")
        sizes = {len(per_key) for per_key in bags}
        if len(sizes) > 1:
            raise DataError(f"every key needs the same number of samples, got {sorted(sizes)}")
        flat: list[int] = []
        lengths: list[int] = []
        for per_key in bags:
            for bag in per_key:
                flat.extend(int(x) for x in bag)
                lengths.append(len(bag))
        return cls(
            list(keys), torch.tensor(flat, dtype=torch.int64), lengths=torch.tensor(lengths, dtype=torch.int64)
        )
