"""Criteo display-advertising TSV: a streaming reader and a writer of synthetic files.

The format (Criteo Kaggle ``train.txt``, Criteo 1TB ``day_N``): one sample per line,
40 tab-separated fields::

    label  I1 ... I13  C1 ... C26

``label`` is 0 or 1; ``I1..I13`` are integers (counts; may be negative, may be empty
= missing); ``C1..C26`` are categorical values hashed to 8 hex digits (may be empty =
missing).

Transformations of the reader: integers → ``log(1 + max(x, 0))`` (missing → 0), as in
the facebookresearch/dlrm preprocessing; categoricals → ``int(hex, 16) mod table_size``
of their feature (hashing into a fixed table, like dlrm's ``max_ind_range`` cap, rather
than a dictionary pass over the data); a missing categorical is an *empty bag* (it
contributes a zero embedding to the sum pooling). Categoricals must be exactly 8 hex
digits; anything else is an error, never a silent index.

Pure Python, about 60k lines/s on one core.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cimflow.errors import DataError
from cimflow.fileio import atomic_write_text
from cimflow.readers import ReadLimits, iter_text_lines
from cimflow.recsys.jagged import FeaturePair, JaggedFeatures

if TYPE_CHECKING:
    from cimflow.recsys.data import RecDataset

__all__ = [
    "CRITEO_INTEGER_FEATURES",
    "CRITEO_CATEGORICAL_FEATURES",
    "CRITEO_DENSE_NAMES",
    "CRITEO_SPARSE_KEYS",
    "CRITEO_READ_LIMITS",
    "CRITEO_MAX_IN_MEMORY_ROWS",
    "CriteoRecords",
    "iter_criteo_tsv",
    "read_criteo_tsv",
    "write_criteo_tsv",
]

CRITEO_INTEGER_FEATURES = 13
CRITEO_CATEGORICAL_FEATURES = 26
_FIELDS = 1 + CRITEO_INTEGER_FEATURES + CRITEO_CATEGORICAL_FEATURES
CRITEO_DENSE_NAMES = [f"I{i}" for i in range(1, CRITEO_INTEGER_FEATURES + 1)]
CRITEO_SPARSE_KEYS = [f"C{i}" for i in range(1, CRITEO_CATEGORICAL_FEATURES + 1)]

_INTEGER = re.compile(r"-?[0-9]+")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
# a whole well-formed line in one match (the fast path); anything else is diagnosed field by field
_LINE = re.compile(
    r"[01]" + r"\t(?:-?[0-9]+)?" * CRITEO_INTEGER_FEATURES + r"\t(?:[0-9a-fA-F]{8})?" * CRITEO_CATEGORICAL_FEATURES
)


#: Limits of the Criteo reader: a well-formed line is at most ~420 bytes (40 fields); the
#: Criteo 1TB logs are ~50 GB per day uncompressed, the Kaggle set 11 GB. Pass ``limits`` to change.
CRITEO_READ_LIMITS = ReadLimits(max_bytes=256 << 30, max_line_bytes=4096, max_lines=2_000_000_000)
#: Samples :func:`read_criteo_tsv` holds in memory at once when no ``max_rows`` is given
#: (Criteo Kaggle has 45.8 M; ~250 bytes of tensors each).
CRITEO_MAX_IN_MEMORY_ROWS = 50_000_000


def _table_sizes(table_sizes: int | Sequence[int]) -> list[int]:
    sizes = [int(table_sizes)] * CRITEO_CATEGORICAL_FEATURES if isinstance(table_sizes, int) else list(table_sizes)
    if len(sizes) != CRITEO_CATEGORICAL_FEATURES or min(sizes) < 1:
        raise DataError(
            f"Criteo needs {CRITEO_CATEGORICAL_FEATURES} table sizes >= 1 (or one int for all), got {table_sizes!r}"
        )
    return sizes


class _Chunk:
    """Lines validated so far (their fields), converted to tensors column by column."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.rows)


def _parse_line(text: str, line_number: int, path: Path, chunk: _Chunk) -> None:
    if _LINE.fullmatch(text):
        chunk.rows.append(text.split("\t"))
        return
    _diagnose(text.split("\t"), line_number, path)
    raise DataError(f"{path}:{line_number}: malformed Criteo line")  # not reached: _diagnose raises


def _diagnose(fields: list[str], line_number: int, path: Path) -> None:
    """Raise a DataError naming the first bad field of a line that failed the fast match."""
    if len(fields) != _FIELDS:
        raise DataError(
            f"{path}:{line_number}: expected {_FIELDS} tab-separated fields (label, "
            f"{CRITEO_INTEGER_FEATURES} integers, {CRITEO_CATEGORICAL_FEATURES} categoricals), found "
            f"{len(fields)}; the line is malformed or truncated"
        )
    label = fields[0]
    if label not in ("0", "1"):
        raise DataError(f"{path}:{line_number}: label must be 0 or 1, got {label!r}")
    for j in range(CRITEO_INTEGER_FEATURES):
        raw = fields[1 + j]
        if raw and not _INTEGER.fullmatch(raw):
            raise DataError(
                f"{path}:{line_number}: integer feature I{j + 1} must be an integer or empty, got {raw!r}"
            )
    for j in range(CRITEO_CATEGORICAL_FEATURES):
        raw = fields[1 + CRITEO_INTEGER_FEATURES + j]
        if raw and not _HEX8.fullmatch(raw):
            raise DataError(
                f"{path}:{line_number}: categorical feature C{j + 1} must be 8 hex digits or empty, got {raw!r}"
            )


def _to_tensors(chunk: _Chunk, sizes: list[int]) -> tuple[torch.Tensor, JaggedFeatures, torch.Tensor]:
    columns = list(zip(*chunk.rows, strict=True))
    labels = torch.tensor([c == "1" for c in columns[0]], dtype=torch.float32)
    integers = np.array(
        [[int(x) if x else 0 for x in columns[1 + j]] for j in range(CRITEO_INTEGER_FEATURES)], dtype=np.int64
    ).T
    dense = torch.from_numpy(np.log1p(np.maximum(integers, 0).astype(np.float64)).astype(np.float32))
    values, lengths = [], []
    for j in range(CRITEO_CATEGORICAL_FEATURES):
        raw = np.array([int(x, 16) if x else -1 for x in columns[1 + CRITEO_INTEGER_FEATURES + j]], dtype=np.int64)
        present = raw >= 0
        values.append(raw[present] % sizes[j])
        lengths.append(present.astype(np.int64))
    sparse = JaggedFeatures(
        list(CRITEO_SPARSE_KEYS), torch.from_numpy(np.concatenate(values)), lengths=torch.from_numpy(np.concatenate(lengths))
    )
    return dense, sparse, labels


def iter_criteo_tsv(
    path: str | Path,
    table_sizes: int | Sequence[int],
    batch_size: int = 8192,
    max_rows: int | None = None,
    limits: ReadLimits = CRITEO_READ_LIMITS,
) -> Iterator[tuple[torch.Tensor, JaggedFeatures, torch.Tensor]]:
    """Stream a Criteo TSV file (plain or ``.gz``) in batches.

    Yields ``(dense [b, 13] float32, sparse JaggedFeatures (keys C1..C26), labels [b])``;
    see the module docstring for the transformations. Empty lines are skipped.

    Args:
        path: the file.
        table_sizes: rows of each categorical feature's table (26 ints, or one for all).
        batch_size: samples per yielded batch (the last may be smaller).
        max_rows: stop after this many samples.
        limits: bytes (after decompression), bytes per line and lines the reader accepts
            (default :data:`CRITEO_READ_LIMITS`); a gzip may also not inflate over 100x.

    Raises:
        DataError: missing file, or a malformed line, with ``path:line`` (1-based): wrong
            number of fields (e.g. a truncated last line), a label other than 0/1, a
            non-integer integer field, a categorical that is not 8 hex digits; a file past
            ``limits`` (too large, a line too long, a gzip bomb) or a damaged gzip.
    """
    path = Path(path)
    sizes = _table_sizes(table_sizes)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if max_rows is not None and max_rows < 0:
        raise DataError(f"max_rows must be >= 0, got {max_rows}")
    if not path.is_file():
        raise DataError(f"Criteo file {path} does not exist")
    chunk = _Chunk()
    rows = 0
    lines = iter_text_lines(path, limits, what="Criteo file", encoding="ascii")
    for line_number, line in lines:
        if max_rows is not None and rows >= max_rows:
            break
        if not line:
            continue
        _parse_line(line, line_number, path, chunk)
        rows += 1
        if len(chunk) == batch_size:
            yield _to_tensors(chunk, sizes)
            chunk = _Chunk()
    lines.close()
    if len(chunk):
        yield _to_tensors(chunk, sizes)


def read_criteo_tsv(
    path: str | Path,
    table_sizes: int | Sequence[int],
    max_rows: int | None = None,
    limits: ReadLimits = CRITEO_READ_LIMITS,
) -> RecDataset:
    """The whole file (or its first ``max_rows`` samples) as a :class:`RecDataset`.

    Without ``max_rows`` a file of more than :data:`CRITEO_MAX_IN_MEMORY_ROWS` samples is
    refused (DataError) rather than filling memory; stream it with :func:`iter_criteo_tsv`.
    """
    from cimflow.recsys.data import RecDataset

    sizes = _table_sizes(table_sizes)
    cap = CRITEO_MAX_IN_MEMORY_ROWS if max_rows is None else max_rows
    parts = list(iter_criteo_tsv(path, sizes, batch_size=65536, max_rows=cap + (max_rows is None), limits=limits))
    if max_rows is None and sum(len(p[2]) for p in parts) > cap:
        raise DataError(f"Criteo file {path} holds more than {cap:,} samples, too many to hold in memory; "
                        "pass max_rows, or stream it with iter_criteo_tsv")
    if not parts:
        raise DataError(f"Criteo file {path} holds no samples")
    dense = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[2] for p in parts])
    # re-assemble key-major jagged features across chunks
    per_key: list[list[FeaturePair]] = [[] for _ in range(CRITEO_CATEGORICAL_FEATURES)]
    for _, sparse, _ in parts:
        for k, pair in enumerate(sparse.per_feature()):
            per_key[k].append(pair)
    values, lengths = [], []
    for chunks in per_key:
        for v, o in chunks:
            values.append(v)
            lengths.append(o[1:] - o[:-1])
    sparse = JaggedFeatures(list(CRITEO_SPARSE_KEYS), torch.cat(values), lengths=torch.cat(lengths))
    return RecDataset(dense, sparse, labels, sizes, list(CRITEO_DENSE_NAMES), name=f"criteo:{Path(path).name}")


@dataclass(frozen=True)
class CriteoRecords:
    """What :func:`write_criteo_tsv` wrote, to check a reader against.

    Attributes:
        labels: ``[n]`` int64, 0/1.
        integers: ``[n, 13]`` int64 raw values (0 where missing).
        integer_present: ``[n, 13]`` bool, False where the field was left empty.
        categoricals: ``[n, 26]`` int64, the 32-bit value of the 8-hex-digit string.
        categorical_present: ``[n, 26]`` bool, False where the field was left empty.
    """

    labels: np.ndarray
    integers: np.ndarray
    integer_present: np.ndarray
    categoricals: np.ndarray
    categorical_present: np.ndarray

    def expected_dense(self) -> np.ndarray:
        """The reader's dense output: ``log(1 + max(x, 0))``, 0 where missing, float32."""
        values = np.where(self.integer_present, np.maximum(self.integers, 0), 0)
        return np.log1p(values.astype(np.float64)).astype(np.float32)


def write_criteo_tsv(
    path: str | Path, n: int, seed: int = 0, missing_rate: float = 0.1, click_rate: float = 0.25
) -> CriteoRecords:
    """Write ``n`` synthetic samples in the exact Criteo TSV format; return what was written.

    Integers are heavy-tailed counts (some negative in I2, as in the real data);
    categoricals come from a small, skewed vocabulary per feature, written as lowercase
    8-hex-digit strings. Each integer/categorical is empty with probability
    ``missing_rate``; labels are Bernoulli(``click_rate``). Seeded: same seed, same file.
    """
    if n < 0 or not (0 <= missing_rate < 1) or not (0 <= click_rate <= 1):
        raise DataError(f"need n >= 0, 0 <= missing_rate < 1, 0 <= click_rate <= 1; got {n}, {missing_rate}, {click_rate}")
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < click_rate).astype(np.int64)
    integers = np.floor(rng.pareto(1.5, size=(n, CRITEO_INTEGER_FEATURES)) * 3).astype(np.int64)
    integers[:, 1] -= rng.integers(0, 3, size=n)  # I2 takes small negative values too
    integer_present = rng.random((n, CRITEO_INTEGER_FEATURES)) >= missing_rate
    vocabularies = rng.integers(0, 2**32, size=(CRITEO_CATEGORICAL_FEATURES, 64), dtype=np.int64)
    picks = np.minimum(np.floor(rng.pareto(1.0, size=(n, CRITEO_CATEGORICAL_FEATURES))).astype(np.int64), 63)
    categoricals = vocabularies[np.arange(CRITEO_CATEGORICAL_FEATURES)[None, :], picks]
    categorical_present = rng.random((n, CRITEO_CATEGORICAL_FEATURES)) >= missing_rate
    lines = []
    for i in range(n):
        ints = [str(integers[i, j]) if integer_present[i, j] else "" for j in range(CRITEO_INTEGER_FEATURES)]
        cats = [
            f"{categoricals[i, j]:08x}" if categorical_present[i, j] else ""
            for j in range(CRITEO_CATEGORICAL_FEATURES)
        ]
        lines.append("\t".join([str(labels[i]), *ints, *cats]) + "\n")
    atomic_write_text(path, "".join(lines), what="Criteo file")
    return CriteoRecords(
        labels=labels,
        integers=np.where(integer_present, integers, 0),
        integer_present=integer_present,
        categoricals=categoricals,
        categorical_present=categorical_present,
    )
