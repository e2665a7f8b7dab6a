"""Bounded readers (cimflow.readers) and the data readers built on them: every limit is one
DataError line naming the file; a gzip bomb is refused after reading a bounded amount."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.errors import DataError
from cimflow.readers import ReadLimits, iter_text_lines, read_text_bounded
from cimflow.recsys.criteo import iter_criteo_tsv, read_criteo_tsv, write_criteo_tsv
from cimflow.recsys.data import read_atomic_file

SMALL = ReadLimits(max_bytes=800, max_line_bytes=50, max_lines=20)


def one_line(message: str) -> str:
    assert message and "\n" not in message
    return message


def test_lines_are_read_and_numbered(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\ntwo\n\nthree")
    assert list(iter_text_lines(path, SMALL)) == [(1, "one"), (2, "two"), (3, ""), (4, "three")]


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"x" * 51 + b"\n", "line longer than 50 bytes"),
        (b"x\n" * 21, "more than 20 lines"),
        ((b"y" * 49 + b"\n") * 17, "larger than 800 bytes"),
        (b"z" * 10_000_000, "larger than 800 bytes"),  # read one block, not 10 MB
    ],
)
def test_each_limit_is_one_data_error(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        list(iter_text_lines(path, SMALL, what="test file"))
    assert needle in one_line(str(info.value)) and str(path) in str(info.value)


def test_a_file_without_line_breaks_stops_at_the_first_block(tmp_path: Path) -> None:
    path = tmp_path / "one_line.txt"
    path.write_bytes(b"z" * 10_000_000)
    with pytest.raises(DataError) as info:
        list(iter_text_lines(path, SMALL.with_(max_bytes=1 << 30)))
    assert f"{path}:1: line longer than 50 bytes" in one_line(str(info.value))


def test_gzip_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = tmp_path / "day_0.gz"  # 64 MiB of newlines in ~65 KB: ratio ~1000
    bomb.write_bytes(gzip.compress(b"\n" * (64 << 20), compresslevel=9))
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        list(iter_criteo_tsv(bomb, 100))
    assert time.perf_counter() - start < 5.0  # stops past 1 MiB, once over 100x the compressed bytes consumed
    assert "gzip bomb" in one_line(str(info.value))


def test_gzip_file_named_by_its_magic_bytes_and_damaged_gzip(tmp_path: Path) -> None:
    plain = tmp_path / "day.tsv"
    records = write_criteo_tsv(plain, n=20, seed=1)
    packed = tmp_path / "day_without_suffix"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert len(read_criteo_tsv(packed, 100)) == len(records.labels) == 20
    truncated = tmp_path / "day.tsv.gz"
    truncated.write_bytes(packed.read_bytes()[:-30])
    with pytest.raises(DataError) as info:
        read_criteo_tsv(truncated, 100)
    assert "damaged or truncated" in one_line(str(info.value))
    notgzip = tmp_path / "plain.gz"
    notgzip.write_bytes(b"not gzip at all\n")
    with pytest.raises(DataError):
        read_criteo_tsv(notgzip, 100)


def test_criteo_limits_can_be_passed(tmp_path: Path) -> None:
    path = tmp_path / "day.tsv"
    write_criteo_tsv(path, n=50, seed=2)
    with pytest.raises(DataError, match="more than 10 lines"):
        read_criteo_tsv(path, 100, limits=ReadLimits(max_bytes=1 << 20, max_line_bytes=4096, max_lines=10))
    assert len(read_criteo_tsv(path, 100, max_rows=10, limits=ReadLimits(max_bytes=1 << 20, max_line_bytes=4096, max_lines=11))) == 10


def test_criteo_in_memory_row_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cimflow.recsys import criteo

    path = tmp_path / "day.tsv"
    write_criteo_tsv(path, n=30, seed=2)
    monkeypatch.setattr(criteo, "CRITEO_MAX_IN_MEMORY_ROWS", 29)
    with pytest.raises(DataError, match="more than 29 samples"):
        read_criteo_tsv(path, 100)
    monkeypatch.setattr(criteo, "CRITEO_MAX_IN_MEMORY_ROWS", 30)
    assert len(read_criteo_tsv(path, 100)) == 30


def test_atomic_file_limits(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_text("a:token\tb:float\n1\t2\n3\t4\n")
    assert read_atomic_file(path) == {"a": ["1", "3"], "b": ["2", "4"]}
    with pytest.raises(DataError, match="more than 2 lines"):
        read_atomic_file(path, limits=ReadLimits(max_bytes=1000, max_line_bytes=100, max_lines=2))
    path.write_text("a:token\ta:float\n1\t2\n")
    with pytest.raises(DataError, match="appears twice"):
        read_atomic_file(path)
    path.write_text("\t".join(f"c{i}:token" for i in range(300)) + "\n")
    with pytest.raises(DataError, match="at most 256"):
        read_atomic_file(path)
    with pytest.raises(DataError, match="does not exist"):
        read_atomic_file(tmp_path / "missing.inter")


def test_read_text_bounded(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{}")
    assert read_text_bounded(path, 2) == "{}"
    with pytest.raises(DataError, match="larger than 1 bytes"):
        read_text_bounded(path, 1)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not utf-8"):
        read_text_bounded(path, 10)
    with pytest.raises(DataError, match="not a regular file"):
        read_text_bounded(tmp_path, 10)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        list(iter_text_lines(fifo, SMALL))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_read_or_one_data_error(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.tsv"
    path.write_bytes(content)
    try:
        batches = list(iter_criteo_tsv(path, 100, limits=ReadLimits(max_bytes=500, max_line_bytes=450, max_lines=10)))
    except DataError as error:
        one_line(str(error))
    else:
        assert all(len(dense) == len(labels) for dense, _, labels in batches)
