"""Bounded reading of untrusted input files: every reader states how much it will read.

A data file handed to cimflow may be huge, endless (a FIFO), one gigantic line, or a small
gzip that inflates to terabytes. The helpers here read text line by line under explicit
:class:`ReadLimits` (bytes after decompression, bytes per line, lines) and refuse the first
excess with one :class:`~cimflow.errors.DataError` line that names the file, the limit
and how to raise it. Gzip input (``.gz`` or the gzip magic bytes) is also refused when it
inflates more than ``max_gzip_ratio`` times its compressed size (a "zip bomb"; real TSV
data inflates 3-10x).

Layer: below everything (no cimflow imports but the errors). Writing is :mod:`cimflow.fileio`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from cimflow.errors import DataError

__all__ = ["ReadLimits", "iter_text_lines", "read_text_bounded"]

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ReadLimits:
    """Limits of one reader (all counts inclusive).

    Attributes:
        max_bytes: bytes of text read in all (after decompression).
        max_line_bytes: bytes of one line, its newline included.
        max_lines: lines read (empty ones included).
        max_gzip_ratio: decompressed bytes per compressed byte a gzip file may reach
            (beyond ``gzip_floor_bytes``, which any gzip may inflate to).
        gzip_floor_bytes: decompressed bytes always allowed, whatever the ratio.
    """

    max_bytes: int
    max_line_bytes: int
    max_lines: int
    max_gzip_ratio: float = 100.0
    gzip_floor_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_line_bytes, self.max_lines, self.gzip_floor_bytes) < 1 or not self.max_gzip_ratio >= 1:
            raise DataError(f"read limits must be positive (and the gzip ratio >= 1), got {self}")

    def with_(self, **changes: float) -> ReadLimits:
        """A copy with some limits changed, e.g. ``limits.with_(max_lines=10)``."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _is_gzip(path: Path) -> bool:
    if path.suffix == ".gz":
        return True
    with path.open("rb") as probe:
        return probe.read(2) == _GZIP_MAGIC


_BLOCK_BYTES = 1 << 20


def iter_text_lines(
    path: str | os.PathLike[str], limits: ReadLimits, what: str = "input file", encoding: str = "utf-8"
) -> Generator[tuple[int, str], None, None]:
    """Yield ``(1-based line number, line without its line ending)`` of a text or gzip file,
    decoding with ``errors="replace"``; raise DataError at the first limit exceeded.

    Reads 1 MiB blocks, so a file without line breaks costs one block, and a gzip that
    inflates more than ``limits.max_gzip_ratio`` times the compressed bytes consumed so far
    is refused as soon as it passes ``limits.gzip_floor_bytes``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist or is not a regular file")
    try:
        packed = _is_gzip(path)
        raw = path.open("rb")
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if packed else raw  # type: ignore[assignment]
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}") from None
    with raw, stream:
        yield from _lines(stream, raw if stream is not raw else None, path, limits, what, encoding)


def _lines(stream: BinaryIO, compressed: BinaryIO | None, path: Path, limits: ReadLimits, what: str,
           encoding: str) -> Iterator[tuple[int, str]]:
    total, number, partial = 0, 0, b""
    while True:
        try:
            block = stream.read(_BLOCK_BYTES)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: cannot read {what} after line {number} ({error}); the file is damaged or truncated") from None
        total += len(block)
        if total > limits.max_bytes:
            raise DataError(f"{path}: {what} is larger than {limits.max_bytes:,} bytes; that is the limit "
                            "(read a part of it, or raise max_bytes)")
        if compressed is not None and total > limits.gzip_floor_bytes:
            consumed = max(compressed.tell(), 1)
            if total > limits.max_gzip_ratio * consumed:
                raise DataError(f"{path}: {what} inflates {total / consumed:.0f}x ({total:,} bytes from the first {consumed:,} "
                                f"compressed); more than {limits.max_gzip_ratio:g}x is refused as a possible gzip bomb")
        data = partial + block
        if block:
            cut = data.rfind(b"\n") + 1
            data, partial = data[:cut], data[cut:]
            if len(partial) > limits.max_line_bytes:
                at = number + data.count(b"\n") + 1
                raise DataError(f"{path}:{at}: line longer than {limits.max_line_bytes:,} bytes; "
                                f"a {what} line is never that long (wrong file, or no line breaks?)")
        pieces = data.split(b"\n")
        if block or not data:
            pieces.pop()  # after the last newline: empty (the partial line waits for the next block)
        if not pieces:
            if not block:
                return
            continue
        longest = max(map(len, pieces)) + 1
        if longest > limits.max_line_bytes:
            at = next(i for i, piece in enumerate(pieces) if len(piece) + 1 == longest)
            raise DataError(f"{path}:{number + at + 1}: line longer than {limits.max_line_bytes:,} bytes; "
                            f"a {what} line is never that long (wrong file, or no line breaks?)")
        lines = data.decode(encoding, errors="replace").split("\n")[: len(pieces)]
        if number + len(pieces) > limits.max_lines:  # the lines up to the limit are still read
            del lines[max(limits.max_lines - number, 0):]
        for offset, line in enumerate(lines, start=number + 1):
            yield offset, line.rstrip("\r")
        if number + len(pieces) > limits.max_lines:
            raise DataError(f"{path}: {what} has more than {limits.max_lines:,} lines; that is the limit "
                            "(read a part of it, or raise max_lines)")
        number += len(pieces)
        if not block:
            return


def read_text_bounded(path: str | os.PathLike[str], max_bytes: int, what: str = "input file", encoding: str = "utf-8") -> str:
    """The whole text of a (plain) file of at most ``max_bytes`` bytes; DataError otherwise.
    Reads at most ``max_bytes + 1`` bytes, so an endless or huge file costs nothing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist or is not a regular file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(raw) > max_bytes:
        raise DataError(f"{path}: {what} is larger than {max_bytes:,} bytes; that is the limit")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: {what} is not {encoding} text (byte {error.start}: {error.reason})") from None
