"""Criteo TSV reader: round trip against the writer, streaming, errors with line numbers."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cimflow.errors import DataError
from cimflow.recsys.criteo import iter_criteo_tsv, read_criteo_tsv, write_criteo_tsv

SIZES = [int(s) for s in np.linspace(3, 5000, 26)]


def _check_against_records(dataset, records, sizes) -> None:  # type: ignore[no-untyped-def]
    assert np.array_equal(dataset.labels.numpy(), records.labels.astype(np.float32))
    assert np.allclose(dataset.dense.numpy(), records.expected_dense(), rtol=0, atol=1e-6)
    for j, (values, offsets) in enumerate(dataset.sparse.per_feature()):
        present = records.categorical_present[:, j]
        assert np.array_equal(np.diff(offsets.numpy()), present.astype(np.int64))
        assert np.array_equal(values.numpy(), records.categoricals[present, j] % sizes[j])


def test_round_trip_matches_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "day.tsv"
    records = write_criteo_tsv(path, n=300, seed=3, missing_rate=0.2)
    assert (~records.integer_present).any() and (~records.categorical_present).any()
    assert (records.integers[:, 1] < 0).any()  # negatives exercise the clipping
    dataset = read_criteo_tsv(path, SIZES)
    assert len(dataset) == 300
    _check_against_records(dataset, records, SIZES)


def test_streaming_batches_equal_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "day.tsv"
    records = write_criteo_tsv(path, n=150, seed=1)
    batches = list(iter_criteo_tsv(path, 1000, batch_size=64))
    assert [b[2].numel() for b in batches] == [64, 64, 22]
    whole = read_criteo_tsv(path, 1000)
    assert torch.equal(torch.cat([b[0] for b in batches]), whole.dense)
    assert torch.equal(batches[1][1].values, whole.sparse.take(torch.arange(64, 128)).values)
    assert np.array_equal(whole.labels.numpy(), records.labels)


def test_gzip_files_are_read(tmp_path: Path) -> None:
    plain = tmp_path / "day.tsv"
    records = write_criteo_tsv(plain, n=40, seed=2)
    packed = tmp_path / "day.tsv.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    _check_against_records(read_criteo_tsv(packed, 77), records, [77] * 26)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_truncated_last_line_reports_its_number(tmp_path: Path) -> None:
    path = tmp_path / "day.tsv"
    write_criteo_tsv(path, n=10, seed=0)
    text = path.read_text()
    cut = text.rstrip("\n").rfind("\t", 0, len(text) - 40)  # drop the last fields
    path.write_text(text[:cut])
    with pytest.raises(DataError, match=r"day\.tsv:10: expected 40 tab-separated fields"):
        read_criteo_tsv(path, 100)


@pytest.mark.parametrize(
    ("column", "bad", "pattern"),
    [
        (3, "12x", "integer feature I3"),
        (14 + 6, "zz00aa11", "categorical feature C7"),
        (14 + 6, "abc", "categorical feature C7"),
        (0, "2", "label must be 0 or 1"),
    ],
)
def test_malformed_field_reports_line_and_column(tmp_path: Path, column: int, bad: str, pattern: str) -> None:
    path = tmp_path / "day.tsv"
    write_criteo_tsv(path, n=8, seed=0)
    lines = _lines(path)
    fields = lines[4].rstrip("\n").split("\t")
    fields[column] = bad
    lines[4] = "\t".join(fields) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=rf":5: {pattern}"):
        list(iter_criteo_tsv(path, 100))


def test_empty_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "day.tsv"
    write_criteo_tsv(path, n=3, seed=0)
    lines = _lines(path)
    path.write_text(lines[0] + "\n" + lines[1] + "1\t2\n")
    with pytest.raises(DataError, match=r":4: expected 40"):
        read_criteo_tsv(path, 100)


def test_missing_file_and_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_criteo_tsv(tmp_path / "nope.tsv", 10)
    with pytest.raises(DataError, match="26 table sizes"):
        read_criteo_tsv(tmp_path / "nope.tsv", [10, 10])


def test_max_rows_stops_early(tmp_path: Path) -> None:
    path = tmp_path / "day.tsv"
    write_criteo_tsv(path, n=50, seed=0)
    assert len(read_criteo_tsv(path, 10, max_rows=7)) == 7
