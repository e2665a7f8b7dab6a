"""Tests of the macro-file reader (cimflow.cost.macro_data): the shipped data, duplicated
columns, size and row limits, and arbitrary text (property-based)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimflow.cost import macro_data, macro_fit, macro_model, macros
from cimflow.cost.macro_data import (
    MAX_MACRO_FILE_BYTES,
    REQUIRED_COLUMNS,
    SHIPPED_MACROS_CSV,
    MacroRow,
    read_macro_csv,
)
from cimflow.cost.macro_model import load_constants, save_constants
from cimflow.errors import CimflowError, DataError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _minimal_row(**overrides: str) -> dict[str, str]:
    row = {
        "Index": "1", "Architecture": "SRAM", "Compute Model": "QS", "Tech (nm)": "28", "Supply V(V)": "0.9",
        "N_row": "256", "N_col": "64", "B_x": "1", "B_w": "1", "B_ADC": "5", "N_ADC": "64", "N": "64",
        "T_core(ns)": "10",
    }  # fmt: skip
    row.update(overrides)
    return row


# --------------------------------------------------------------------------------------------
# The shipped file
# --------------------------------------------------------------------------------------------


def test_shipped_file_lives_in_the_package_with_its_licence_and_citation() -> None:
    package_dir = Path(macro_data.__file__).parent
    assert SHIPPED_MACROS_CSV.is_file() and SHIPPED_MACROS_CSV.parent == package_dir / "data"
    licence = (SHIPPED_MACROS_CSV.parent / "imc_macros.LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "Shanbhag" in licence
    readme = (SHIPPED_MACROS_CSV.parent / "README.md").read_text(encoding="utf-8")
    assert "CICC 2022" in readme and "UIUC-IMC/UIUC-IMC-Benchmarking" in readme
    # the constants were fitted on exactly this file
    digest = hashlib.sha256(SHIPPED_MACROS_CSV.read_bytes()).hexdigest()
    assert load_constants().provenance["sha256"] == digest


def test_shipped_file_is_package_data() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["cimflow"]
    relative = SHIPPED_MACROS_CSV.relative_to(Path(macro_data.__file__).parents[1])
    for name in ("imc_macros.csv", "imc_macros.LICENSE", "README.md"):
        target = relative.with_name(name)
        assert any(target.match(pattern) for pattern in patterns), (name, patterns)


def test_readers_default_to_the_shipped_file() -> None:
    rows = read_macro_csv()
    assert len(rows) == 94 and all(isinstance(r, MacroRow) for r in rows)
    assert [r.index for r in rows] == [r.index for r in read_macro_csv(SHIPPED_MACROS_CSV)]
    assert macro_fit.validate_macros().to_json() == macro_fit.validate_macros(SHIPPED_MACROS_CSV).to_json()


def test_facade_reexports_the_split_modules() -> None:
    assert macros.read_macro_csv is macro_data.read_macro_csv
    assert macros.predict_macro is macro_model.predict_macro
    assert macros.calibrate is macro_fit.calibrate
    for name in macros.__all__:
        assert hasattr(macros, name), name


# --------------------------------------------------------------------------------------------
# Refusals: duplicated columns, size and row limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["TOPS/W", "N_row", "Index"])
def test_duplicated_column_is_refused_by_name(tmp_path: Path, column: str) -> None:
    row = _minimal_row(**{"TOPS/W": "500"})
    header = list(row) + ([] if column in row else [column])
    values = [row.get(name, "") for name in header]
    path = tmp_path / "dup.csv"
    # the copy differs in value and carries stray spaces: it would silently replace every cell
    path.write_text(_csv_text([*header, f" {column} "], [[*values, "999999"]]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_macro_csv(path)
    message = str(info.value)
    assert repr(column) in message and "more than once" in message
    assert isinstance(info.value, CimflowError) and "\n" not in message


def test_blank_header_cells_are_not_duplicates(tmp_path: Path) -> None:
    row = _minimal_row()
    path = tmp_path / "trailing.csv"
    path.write_text(_csv_text([*row, "", ""], [[*row.values(), "", ""]]), encoding="utf-8")
    (read,) = read_macro_csv(path)
    assert read.design is not None and read.design.n_row == 256


def test_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    row = _minimal_row()
    text = _csv_text(list(row), [list(row.values())] * 50)
    path = tmp_path / "big.csv"
    path.write_text(text, encoding="utf-8")
    assert len(read_macro_csv(path, max_bytes=len(text.encode()))) == 50  # exactly at the limit: read
    with pytest.raises(DataError, match="larger than 100 bytes"):
        read_macro_csv(path, max_bytes=100)
    assert MAX_MACRO_FILE_BYTES >= 100 * SHIPPED_MACROS_CSV.stat().st_size


def test_rows_over_the_row_limit_are_refused(tmp_path: Path) -> None:
    row = _minimal_row()
    path = tmp_path / "rows.csv"
    path.write_text(_csv_text(list(row), [list(row.values())] * 11), encoding="utf-8")
    assert len(read_macro_csv(path, max_rows=11)) == 11
    with pytest.raises(DataError, match="more than 10 data rows"):
        read_macro_csv(path, max_rows=10)


def test_rows_longer_or_shorter_than_the_header_read_as_empty_cells(tmp_path: Path) -> None:
    row = _minimal_row()
    values = list(row.values())
    path = tmp_path / "ragged.csv"
    path.write_text(_csv_text(list(row), [[*values, "extra", "cells"], values[:-1]]), encoding="utf-8")
    long_row, short_row = read_macro_csv(path)
    assert long_row.design is not None
    assert short_row.design is None and short_row.missing == ("T_core(ns)",)


# --------------------------------------------------------------------------------------------
# Property: any text is either read into rows or refused with one DataError
# --------------------------------------------------------------------------------------------

_CELL = st.one_of(
    st.sampled_from(["", "nan", "inf", "-1", "0", "28", "0.9", "1e308", "1,024", "QS", "DIMC", "SRAM", '"', "\r"]),
    st.text(max_size=8),
)
_HEADER = st.lists(st.sampled_from([*REQUIRED_COLUMNS, "TOPS/W", "TOPS/mm2", "Paper Title", "Cell Type", ""]), max_size=16)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_HEADER, rows=st.lists(st.lists(_CELL, max_size=18), max_size=6), raw=st.binary(max_size=64))
def test_any_file_is_read_or_refused_with_a_data_error(tmp_path: Path, header: list[str], rows: list[list[str]], raw: bytes) -> None:
    for name, payload in (("table.csv", _csv_text(header, rows).encode("utf-8")), ("raw.csv", raw)):
        path = tmp_path / name
        path.write_bytes(payload)
        try:
            read = read_macro_csv(path)
        except DataError as error:
            assert str(error) and "\n" not in str(error)
            continue
        for row in read:
            if row.design is not None:
                assert not row.missing
                assert row.design.node_m is not None and row.design.node_m > 0


# --------------------------------------------------------------------------------------------
# Constants are written through the one atomic writer, as strict JSON
# --------------------------------------------------------------------------------------------


def test_save_constants_writes_strict_json_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    constants = load_constants()
    constants.provenance = {**constants.provenance, "note": float("nan")}
    target = tmp_path / "nested" / "constants.json"
    save_constants(constants, target)
    text = target.read_text(encoding="utf-8")
    payload = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    assert payload["provenance"]["note"] is None
    assert load_constants(target).values() == constants.values()
    assert sorted(p.name for p in target.parent.iterdir()) == ["constants.json"]
