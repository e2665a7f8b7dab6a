"""Bring-your-own embedding access traces in the TorchRec / FBGEMM jagged layout.

A trace is one batch of lookups of ``T`` tables (keys) by ``B`` samples, stored flat,
key-major then sample-major, as TorchRec's ``KeyedJaggedTensor`` and FBGEMM's TBE take it::

    indices = [rows of (key 0, sample 0), (key 0, sample 1), ..., (key 1, sample 0), ...]
    offsets = [0, end of bag (0, 0), end of bag (0, 1), ...]          # T*B + 1 entries

**Files.** ``.npz`` (``numpy.savez``), read with ``numpy.load(allow_pickle=False)``, or
``.pt``/``.pth`` (``torch.save`` of a dict of tensors), read with
``torch.load(weights_only=True)``; nothing is ever unpickled. Fields:

* ``indices`` — integers ``>= 0``, all lookups (1-D);
* ``offsets`` (``T*B + 1`` integers, ``offsets[0] == 0``, non-decreasing, last ==
  ``len(indices)``) or ``lengths`` (``T*B`` integers ``>= 0`` summing to ``len(indices)``),
  or both if they agree;
* ``batch_size`` — the integer ``B >= 1`` (a scalar or a 1-element array);
* ``keys`` (optional) — ``T`` unique non-empty names (a unicode array; a list of strings
  in a ``.pt``); default ``cat_0 .. cat_{T-1}``, the default feature names of a DLRMConfig;
* ``table_sizes`` (optional) — ``T`` integers ``>= 1``; every index of table ``t`` must
  lie in ``[0, table_sizes[t])``. Without them :meth:`AccessTrace.effective_table_sizes`
  infers ``max index + 1``.

``T`` comes from ``keys``, else ``table_sizes``, else ``(len(offsets) - 1) / B``. Limits:
files of at most :data:`MAX_TRACE_FILE_BYTES` (also what the archive members unpack to),
at most :data:`MAX_TABLES` tables, integer dtypes only, no other fields. Every violation
raises :class:`~cimflow.errors.DataError` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cimflow.errors import DataError
from cimflow.fileio import atomic_write_bytes
from cimflow.recsys.jagged import JaggedFeatures

__all__ = ["MAX_TABLES", "MAX_TRACE_FILE_BYTES", "AccessTrace", "load_trace", "save_trace"]

#: Largest trace file read (bytes), and the most its archive members may unpack to.
MAX_TRACE_FILE_BYTES = 4 << 30
#: Most tables (keys) a trace may have.
MAX_TABLES = 10_000
#: Longest key name (characters).
MAX_KEY_CHARS = 256

_FIELDS = ("indices", "offsets", "lengths", "batch_size", "keys", "table_sizes")
_INT64_MAX = np.iinfo(np.int64).max


def _fail(message: str) -> DataError:
    return DataError(f"access trace: {message}")


def _reason(error: BaseException) -> str:
    """An exception as one short line (library messages can span many lines)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


@dataclass(frozen=True, eq=False)
class AccessTrace:
    """One batch of embedding lookups in the KeyedJaggedTensor / FBGEMM TBE layout.

    Construction checks everything (see the module docstring) and raises
    :class:`DataError`, so an ``AccessTrace`` is always consistent.

    Attributes:
        keys: one name per table.
        indices: int64 ``[N]``, all lookups, key-major then sample-major.
        offsets: int64 ``[len(keys) * batch_size + 1]``, bag boundaries into ``indices``.
        batch_size: samples ``B``.
        table_sizes: rows per table, or None when the file gave none.
    """

    keys: tuple[str, ...]
    indices: Tensor
    offsets: Tensor
    batch_size: int
    table_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        keys = _check_keys(list(self.keys))
        object.__setattr__(self, "keys", keys)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)):
            raise _fail(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if int(self.batch_size) < 1:
            raise _fail(f"batch_size must be >= 1, got {int(self.batch_size)}")
        object.__setattr__(self, "batch_size", int(self.batch_size))
        indices = _int64_tensor("indices", self.indices)
        offsets = _int64_tensor("offsets", self.offsets)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "offsets", offsets)
        _check_offsets(offsets, len(keys) * self.batch_size + 1, indices.numel())
        if indices.numel() and int(indices.min()) < 0:
            raise _fail(f"indices must be >= 0, found {int(indices.min())}")
        if self.table_sizes is not None:
            sizes = tuple(int(n) for n in self.table_sizes)
            if len(sizes) != len(keys):
                raise _fail(f"table_sizes has {len(sizes)} entries for {len(keys)} keys; allowed: one per key")
            if min(sizes) < 1:
                raise _fail(f"table_sizes must all be >= 1, got {min(sizes)}")
            object.__setattr__(self, "table_sizes", sizes)
            for key, values, size in zip(keys, self.per_table(), sizes, strict=True):
                if values.numel() and int(values.max()) >= size:
                    raise _fail(
                        f"indices of table {key!r} must lie in [0, {size}) (table_sizes), found {int(values.max())}"
                    )

    # ------------------------------------------------------------------ views
    @property
    def num_tables(self) -> int:
        """Number of tables T."""
        return len(self.keys)

    @property
    def lengths(self) -> Tensor:
        """Bag sizes, int64 ``[T * B]``."""
        return self.offsets[1:] - self.offsets[:-1]

    def per_table(self) -> list[Tensor]:
        """The indices of each table (views into :attr:`indices`), for access counting."""
        bounds = self.offsets[:: self.batch_size].tolist()
        return [self.indices[bounds[t] : bounds[t + 1]] for t in range(self.num_tables)]

    def pooling_factors(self) -> list[float]:
        """Mean lookups per sample of each table."""
        return [values.numel() / self.batch_size for values in self.per_table()]

    def effective_table_sizes(self) -> tuple[int, ...]:
        """:attr:`table_sizes` if given, else each table's largest index + 1 (1 if it has none)."""
        if self.table_sizes is not None:
            return self.table_sizes
        return tuple(int(v.max()) + 1 if v.numel() else 1 for v in self.per_table())

    def to_jagged(self) -> JaggedFeatures:
        """The same lookups as :class:`~cimflow.recsys.jagged.JaggedFeatures`."""
        return JaggedFeatures(list(self.keys), self.indices, offsets=self.offsets)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessTrace):
            return NotImplemented
        return (
            self.keys == other.keys
            and self.batch_size == other.batch_size
            and self.table_sizes == other.table_sizes
            and torch.equal(self.indices, other.indices)
            and torch.equal(self.offsets, other.offsets)
        )

    __hash__ = None  # type: ignore[assignment]


# ---------------------------------------------------------------------- checks
def _check_keys(keys: list[Any]) -> tuple[str, ...]:
    if not 1 <= len(keys) <= MAX_TABLES:
        raise _fail(f"keys must name 1 to {MAX_TABLES} tables, got {len(keys)}")
    for key in keys:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
            raise _fail(f"keys must be non-empty strings of at most {MAX_KEY_CHARS} characters, got {key!r}")
    if len(set(keys)) != len(keys):
        raise _fail("keys must be unique")
    return tuple(keys)


def _int64_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise _fail(f"{name} must be a tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise _fail(f"{name} must hold integers, got dtype {value.dtype}")
    if value.dim() != 1:
        raise _fail(f"{name} must be 1-D, got shape {tuple(value.shape)}")
    return value.to(device="cpu", dtype=torch.int64).contiguous()


def _check_offsets(offsets: Tensor, expected: int, num_indices: int) -> None:
    if offsets.numel() != expected:
        raise _fail(f"offsets must have len(keys) * batch_size + 1 = {expected} entries, got {offsets.numel()}")
    low, high = int(offsets.min()), int(offsets.max())
    if int(offsets[0]) != 0 or low < 0 or high > num_indices:
        raise _fail(f"offsets must start at 0 and lie in [0, len(indices) = {num_indices}], found {low}..{high}")
    if int(offsets[-1]) != num_indices:
        raise _fail(f"offsets must end at len(indices) = {num_indices}, got {int(offsets[-1])}")
    if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        raise _fail("offsets must be non-decreasing")


def _integer_array(name: str, array: np.ndarray, scalar: bool = False) -> np.ndarray:
    if array.dtype.kind not in "iu":
        raise _fail(f"{name} must hold integers, got dtype {array.dtype}")
    if scalar:
        if array.size != 1:
            raise _fail(f"{name} must be one integer, got shape {array.shape}")
        array = array.reshape(1)
    elif array.ndim != 1:
        raise _fail(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
        raise _fail(f"{name} must be below 2**63, found {int(array.max())}")
    return array.astype(np.int64, copy=False)


def _from_fields(fields: dict[str, Any]) -> AccessTrace:
    """An :class:`AccessTrace` from the raw fields of a file (numpy arrays, key strings)."""
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise _fail(f"unknown field(s) {unknown}; allowed: {list(_FIELDS)}")
    for required in ("indices", "batch_size"):
        if required not in fields:
            raise _fail(f"field '{required}' is missing; a trace needs indices, batch_size and offsets or lengths")
    indices = _integer_array("indices", fields["indices"])
    batch = int(_integer_array("batch_size", fields["batch_size"], scalar=True)[0])
    if batch < 1:
        raise _fail(f"batch_size must be >= 1, got {batch}")
    sizes = None
    if "table_sizes" in fields:
        sizes = tuple(int(n) for n in _integer_array("table_sizes", fields["table_sizes"]))
    keys = fields.get("keys")
    offsets = _offsets_from(fields, indices.size)
    if keys is None:
        count = len(sizes) if sizes is not None else (offsets.size - 1) // batch
        if sizes is None and (offsets.size - 1) % batch:
            raise _fail(
                f"without keys or table_sizes, the {offsets.size - 1} bags must be a multiple of batch_size = {batch}"
            )
        if not 1 <= count <= MAX_TABLES:
            raise _fail(f"a trace must have 1 to {MAX_TABLES} tables, got {count}")
        keys = [f"cat_{t}" for t in range(count)]
    return AccessTrace(tuple(keys), torch.from_numpy(indices), torch.from_numpy(offsets), batch, sizes)


def _offsets_from(fields: dict[str, Any], num_indices: int) -> np.ndarray:
    offsets = _integer_array("offsets", fields["offsets"]) if "offsets" in fields else None
    if "lengths" in fields:
        lengths = _integer_array("lengths", fields["lengths"])
        if lengths.size and (int(lengths.min()) < 0 or int(lengths.max()) > num_indices):
            raise _fail(f"lengths must lie in [0, len(indices) = {num_indices}]")
        derived = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths, dtype=np.int64)])
        if int(derived[-1]) != num_indices:
            raise _fail(f"lengths must sum to len(indices) = {num_indices}, got {int(derived[-1])}")
        if offsets is not None and (offsets.shape != derived.shape or not np.array_equal(offsets, derived)):
            raise _fail("offsets and lengths disagree; give one of them")
        return derived
    if offsets is None:
        raise _fail("give offsets (len(keys) * batch_size + 1 entries) or lengths (len(keys) * batch_size)")
    if offsets.size == 0:
        raise _fail("offsets must have len(keys) * batch_size + 1 >= 2 entries, got 0")
    return offsets


def _check_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise _fail(f"cannot read {path}: {error.strerror or error}") from error
    if not path.is_file():
        raise _fail(f"{path} is not a file")
    if size > MAX_TRACE_FILE_BYTES:
        raise _fail(f"{path} has {size} bytes; allowed at most {MAX_TRACE_FILE_BYTES}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                unpacked = sum(member.file_size for member in archive.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise _fail(f"{path} is not a readable archive ({_reason(error)})") from error
        if unpacked > MAX_TRACE_FILE_BYTES:
            raise _fail(f"{path} unpacks to {unpacked} bytes; allowed at most {MAX_TRACE_FILE_BYTES}")


# ---------------------------------------------------------------------- files
def _read_npz(path: Path) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        # open the file here: np.load leaves its own handle open when the archive is corrupt
        with path.open("rb") as stream, np.load(stream, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise _fail(f"{path} holds one array, not an .npz archive of named fields")
            for name in archive.files:
                if name not in _FIELDS:
                    raise _fail(f"unknown field {name!r} in {path.name}; allowed: {list(_FIELDS)}")
                try:
                    fields[name] = archive[name]
                except Exception as error:  # noqa: BLE001 - any failure to decode a member is bad data
                    reason = _reason(error)
                    raise _fail(f"field {name!r} is corrupt or needs unpickling ({reason})") from error
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - numpy raises many types for a malformed file
        raise _fail(f"{path} is not a readable .npz file ({_reason(error)})") from error
    if "keys" in fields:
        keys = fields["keys"]
        if keys.dtype.kind != "U" or keys.ndim != 1:
            raise _fail(f"keys must be a 1-D unicode string array, got dtype {keys.dtype} shape {keys.shape}")
        fields["keys"] = [str(k) for k in keys.tolist()]
    return fields


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a malformed or unsafe file
        raise _fail(f"{path} is not a readable weights-only torch file ({_reason(error)})") from error
    if not isinstance(data, dict):
        raise _fail(f"{path} must hold a dict of tensors, got {type(data).__name__}")
    fields: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _FIELDS:
            raise _fail(f"unknown field {name!r} in {path.name}; allowed: {list(_FIELDS)}")
        if name == "keys":
            if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
                raise _fail("keys must be a list of strings")
            fields[name] = list(value)
        elif isinstance(value, Tensor):
            if value.layout != torch.strided or value.dtype.is_floating_point or value.dtype.is_complex:
                raise _fail(f"{name} must be a dense integer tensor, got {value.dtype} ({value.layout})")
            try:
                fields[name] = value.detach().cpu().numpy()
            except Exception as error:  # noqa: BLE001 - dtypes numpy cannot hold
                raise _fail(f"{name} must be an integer tensor numpy can hold ({_reason(error)})") from error
        elif name == "batch_size" and isinstance(value, int) and not isinstance(value, bool):
            fields[name] = np.asarray(value, dtype=np.int64)
        else:
            raise _fail(f"{name} must be an integer tensor, got {type(value).__name__}")
    return fields


def load_trace(path: str | os.PathLike[str]) -> AccessTrace:
    """Read an access trace from ``.npz`` or ``.pt``/``.pth`` (format: module docstring).

    Raises:
        DataError: a missing, oversized, malformed or inconsistent file, one line naming
            the field and what is allowed.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in (".npz", ".pt", ".pth"):
        raise _fail(f"{source}: the file must end in .npz, .pt or .pth")
    _check_size(source)
    fields = _read_npz(source) if suffix == ".npz" else _read_pt(source)
    return _from_fields(fields)


def save_trace(path: str | os.PathLike[str], trace: AccessTrace) -> None:
    """Write ``trace`` (``.npz``, or ``.pt``/``.pth``) atomically; :func:`load_trace` reads it back equal."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".npz", ".pt", ".pth"):
        raise _fail(f"{target}: the file must end in .npz, .pt or .pth")
    buffer = io.BytesIO()
    if suffix == ".npz":
        arrays: dict[str, np.ndarray] = {
            "indices": trace.indices.numpy(),
            "offsets": trace.offsets.numpy(),
            "batch_size": np.asarray(trace.batch_size, dtype=np.int64),
            "keys": np.asarray(trace.keys, dtype=np.str_),
        }
        if trace.table_sizes is not None:
            arrays["table_sizes"] = np.asarray(trace.table_sizes, dtype=np.int64)
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
    else:
        data: dict[str, Any] = {
            "indices": trace.indices,
            "offsets": trace.offsets,
            "batch_size": torch.tensor(trace.batch_size, dtype=torch.int64),
            "keys": list(trace.keys),
        }
        if trace.table_sizes is not None:
            data["table_sizes"] = torch.tensor(trace.table_sizes, dtype=torch.int64)
        torch.save(data, buffer)
    atomic_write_bytes(target, buffer.getvalue(), what="access trace")
