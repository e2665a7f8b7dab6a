"""Macro files: the published-macro CSV schema, its reader, and what each design parameter is.

A macro file is a CSV in the schema of the UIUC IMC benchmarking database (Shanbhag and Roy,
"Comprehending In-memory Computing Trends via Proper Benchmarking", CICC 2022; repository
UIUC-IMC/UIUC-IMC-Benchmarking, MIT licence). cimflow ships one, ``data/imc_macros.csv`` next
to this module (:data:`SHIPPED_MACROS_CSV`), with its licence and citation.

Reported metrics are never an input: :func:`read_macro_csv` builds each row's
:class:`MacroDesign` from a whitelist of design columns only (:data:`DESIGN_COLUMNS`), and the
reported TOPS/W and TOPS/mm^2 travel separately in :class:`MacroRow`, used only to score.

The reader is bounded (:data:`MAX_MACRO_FILE_BYTES`, :data:`MAX_MACRO_ROWS`) and refuses a
header that names a column twice. The model's equations are in :mod:`cimflow.cost.macro_model`,
the fit and the scoring in :mod:`cimflow.cost.macro_fit`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cimflow.errors import DataError
from cimflow.readers import read_text_bounded

__all__ = [
    "DESIGN_COLUMNS",
    "MAX_MACRO_FILE_BYTES",
    "MAX_MACRO_ROWS",
    "REPORTED_METRIC_COLUMNS",
    "REQUIRED_COLUMNS",
    "SHIPPED_MACROS_CSV",
    "MacroDesign",
    "MacroRow",
    "compute_class",
    "missing_for_tops_mm2",
    "missing_for_tops_w",
    "read_macro_csv",
]

#: The published-macro file that ships with cimflow (94 rows; licence and citation beside it).
SHIPPED_MACROS_CSV = Path(__file__).with_name("data") / "imc_macros.csv"

#: Largest macro file the reader opens (bytes). The shipped file is ~29 kB; the bound only
#: stops an accidental multi-gigabyte file from being read into memory.
MAX_MACRO_FILE_BYTES = 16 * 1024 * 1024
#: Most data rows the reader accepts (the shipped file has 94).
MAX_MACRO_ROWS = 100_000

#: Reported metrics of the file. They are never read into a :class:`MacroDesign`; only TOPS/W and
#: TOPS/mm2 are read at all, into :class:`MacroRow`, to score predictions.
REPORTED_METRIC_COLUMNS: tuple[str, ...] = (
    "TOPS",
    "TOPS/W",
    "TOPS/mm2",
    "E_OP1 (fJ)",
    "E_col (fJ)",
    "E_core (pJ)",
    "E_mvm (pJ)",
    "TOPS_a",
    "CR(GB/s)",
)

_NM = 1e-9
_NS = 1e-9
_BITS_PER_KB = 1024.0

#: CSV column -> (MacroDesign field, kind, factor to SI). ``kind`` is "text", "flag" or "number".
#: These are the only columns a MacroDesign is built from. Left out on purpose: ``B_pre-ADC``
#: (= log2 N + B_x + B_w) and ``B_core`` (= N_1b / 2) are derived from the columns below, and
#: ``Year``, ``Journal/Conference``, ``Authors`` are not design parameters.
DESIGN_COLUMNS: dict[str, tuple[str, str, float]] = {
    "Architecture": ("architecture", "text", 1.0),
    "Cell Type": ("cell_type", "text", 1.0),
    "Compute Model": ("compute_model", "text", 1.0),
    "IMC_Processor": ("imc_processor", "flag", 1.0),
    "Tech (nm)": ("node_m", "number", _NM),
    "Supply V(V)": ("supply_v", "number", 1.0),
    "N_row": ("n_row", "number", 1.0),
    "N_col": ("n_col", "number", 1.0),
    "B_x": ("b_x", "number", 1.0),
    "B_w": ("b_w", "number", 1.0),
    "B_ADC": ("b_adc", "number", 1.0),
    "R_C": ("rows_per_cycle", "number", 1.0),
    "R": ("rows_per_adc", "number", 1.0),
    "C_C": ("cols_per_cycle", "number", 1.0),
    "C": ("cols_per_adc", "number", 1.0),
    "N_ADC": ("n_adc", "number", 1.0),
    "N": ("n_dot", "number", 1.0),
    "Core Size(Kb)": ("core_size_bits", "number", _BITS_PER_KB),
    "alpha": ("alpha", "number", 1.0),
    "T_core(ns)": ("t_core_s", "number", _NS),
    "N_core": ("n_core", "number", 1.0),
    "N_1b": ("n_1b", "number", 1.0),
}

#: Columns a file must have (the model reads them); the other design columns are optional.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "Index",
    "Architecture",
    "Compute Model",
    "Tech (nm)",
    "Supply V(V)",
    "N_row",
    "N_col",
    "B_x",
    "B_w",
    "B_ADC",
    "N_ADC",
    "N",
    "T_core(ns)",
)

_COLUMN_OF_FIELD = {spec[0]: column for column, spec in DESIGN_COLUMNS.items()}

_NVM_WORDS = ("envm", "eflash", "flash", "nvm", "rram", "reram", "pcm", "mram", "fefet", "fgt", "1t1r")
_CURRENT_MODELS = ("IS", "IR", "CURRENT")


# --------------------------------------------------------------------------------------------
# Design parameters and rows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacroDesign:
    """Design parameters of one IMC macro (bank), in SI units; ``None`` where not known.

    Only design parameters live here: no reported metric (TOPS, TOPS/W, energies, ...).
    """

    architecture: str = ""  # SRAM, eNVM, eDRAM, eFlash, Digital, ...
    cell_type: str = ""  # 6T, 8T1C, ReRAM+Par, ...
    compute_model: str = ""  # QS, QR, QS-QR, IS, IR, DIMC, or blank
    imc_processor: bool = False  # the figures are for a whole processor
    node_m: float | None = None  # technology node, metres
    supply_v: float | None = None  # supply, volts
    n_row: float | None = None  # rows per bank
    n_col: float | None = None  # columns per bank
    b_x: float | None = None  # input bits in the bank
    b_w: float | None = None  # weight bits in the bank
    b_adc: float | None = None  # ADC bits
    rows_per_cycle: float | None = None  # R_C
    rows_per_adc: float | None = None  # R
    cols_per_cycle: float | None = None  # C_C
    cols_per_adc: float | None = None  # C
    n_adc: float | None = None  # ADCs working in parallel
    n_dot: float | None = None  # dot-product length N
    core_size_bits: float | None = None  # bits per core
    alpha: float | None = None  # array invocations per multi-bit MVM
    t_core_s: float | None = None  # latency of one invocation, seconds
    n_core: float | None = None  # cores
    n_1b: float | None = None  # 1-bit operations per invocation, as the file states it


@dataclass(frozen=True)
class MacroRow:
    """One row of a macro file: its design (``None`` when a parameter the TOPS/W model needs is
    missing, named in ``missing``) and its reported 1b-normalized metrics (``None`` if absent)."""

    index: str
    title: str
    design: MacroDesign | None
    missing: tuple[str, ...]
    reported_tops_w: float | None
    reported_tops_mm2: float | None
    design_parameters: MacroDesign | None = field(default=None, repr=False, compare=False)
    """All design parameters read from the row, even when ``design`` is ``None``."""


_NUMBER_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\s*$|\s*[(;]|\s+\S)")


def _parse_number(text: str | None) -> float | None:
    """A finite number from a cell, or ``None`` for an empty, 'nan' or non-numeric cell.

    A number followed by a note is read (``'0.75 (Digital); 0.95 (SRAM)'`` -> 0.75);
    text that does not start with a number, or a number glued to text or to a comma
    (``'12abc'``, ``'1,024'``), is not.
    """
    if text is None:
        return None
    match = _NUMBER_RE.match(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def _design_from_cells(cells: Mapping[str, str]) -> MacroDesign:
    """Build a MacroDesign from the design columns of one row (and nothing else)."""
    values: dict[str, object] = {}
    for column, (name, kind, factor) in DESIGN_COLUMNS.items():
        text = cells.get(column)
        if kind == "text":
            values[name] = (text or "").strip()
        elif kind == "flag":
            values[name] = (text or "").strip().upper() in ("Y", "YES", "TRUE", "1")
        else:
            number = _parse_number(text)
            # Every numeric design parameter is a positive quantity; anything else is unknown.
            values[name] = number * factor if number is not None and number > 0 else None
    return MacroDesign(**values)  # type: ignore[arg-type]


def _reported_from_cells(cells: Mapping[str, str]) -> tuple[float | None, float | None]:
    """Reported (TOPS/W, TOPS/mm2) of a row; None where empty, unreadable or not positive."""

    def positive(column: str) -> float | None:
        value = _parse_number(cells.get(column))
        return value if value is not None and value > 0 else None

    return positive("TOPS/W"), positive("TOPS/mm2")


def _duplicated(names: list[str]) -> list[str]:
    """Names that occur more than once (blank names, which nothing reads, are ignored)."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name and name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def _read_bounded_text(file_path: Path, max_bytes: int) -> str:
    """The file's text (UTF-8, BOM dropped) through the one bounded reader; binary files refused."""
    if not file_path.is_file():
        raise DataError(f"macro file not found: {file_path} (give a CSV in the imc_macros.csv schema)")
    text = read_text_bounded(file_path, max_bytes, "macro file", encoding="utf-8-sig")
    if "\x00" in text:
        raise DataError(f"{file_path} is not a text CSV file (it contains NUL bytes)")
    return text


def read_macro_csv(
    path: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int = MAX_MACRO_FILE_BYTES,
    max_rows: int = MAX_MACRO_ROWS,
) -> list[MacroRow]:
    """Read a macro file in the ``imc_macros.csv`` schema into rows (default: the shipped file).

    Raises :class:`cimflow.errors.DataError` if the file is missing, larger than ``max_bytes``,
    holds more than ``max_rows`` data rows, is not a readable text CSV, names a column twice in
    its header, or lacks a column of :data:`REQUIRED_COLUMNS` (the message names the columns).
    Bad cells never raise: they read as unknown, and a row missing a parameter the model needs
    gets ``design=None``.
    """
    file_path = Path(path) if path is not None else SHIPPED_MACROS_CSV
    text = _read_bounded_text(file_path, max_bytes)
    try:
        lines = csv.reader(io.StringIO(text, newline=""))
        header = [name.strip() for name in next(lines, [])]
        records: list[list[str]] = []
        for cells in lines:
            if not cells:  # a blank line
                continue
            if len(records) >= max_rows:
                raise DataError(f"{file_path} has more than {max_rows} data rows, the most a macro file may have")
            records.append(cells)
    except csv.Error as exc:
        raise DataError(f"{file_path} is not a readable CSV file: {exc}") from exc
    if not any(header):
        raise DataError(f"{file_path} has no header line; expected the imc_macros.csv columns")
    repeated = _duplicated(header)
    if repeated:
        raise DataError(
            f"{file_path}: column(s) {', '.join(repr(c) for c in repeated)} appear more than once in the header; "
            "each column may appear once (delete or rename the extra copy)"
        )
    absent = [column for column in REQUIRED_COLUMNS if column not in header]
    if absent:
        raise DataError(
            f"{file_path} lacks required column(s) {', '.join(repr(c) for c in absent)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}"
        )
    rows: list[MacroRow] = []
    for number, record in enumerate(records, start=1):
        # cells beyond the header are ignored; a short row's missing cells read as empty
        named = {name: (record[i] if i < len(record) else "") for i, name in enumerate(header) if name}
        index = named.get("Index", "").strip() or f"row{number}"
        title = named.get("Paper Title", "").strip()
        design_cells = {column: named[column] for column in DESIGN_COLUMNS if column in named}
        design = _design_from_cells(design_cells)
        missing = tuple(missing_for_tops_w(design))
        reported_tops_w, reported_tops_mm2 = _reported_from_cells(
            {column: named.get(column, "") for column in ("TOPS/W", "TOPS/mm2")}
        )
        rows.append(
            MacroRow(
                index=index,
                title=title,
                design=None if missing else design,
                missing=missing,
                reported_tops_w=reported_tops_w,
                reported_tops_mm2=reported_tops_mm2,
                design_parameters=design,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# Classification and required parameters
# --------------------------------------------------------------------------------------------


def _is_nonvolatile(design: MacroDesign) -> bool:
    text = f"{design.architecture} {design.cell_type}".lower().replace("-", "")
    return any(word in text for word in _NVM_WORDS)


def compute_class(design: MacroDesign) -> str:
    """The model's class of a macro.

    ``"dimc"``: digital CIM (compute model DIMC, or a cell type ending in '+D');
    ``"digital"``: a digital accelerator (architecture Digital);
    ``"current_nvm"``: current-domain (IS/IR) compute on non-volatile cells (eNVM, eFlash);
    ``"current"``: current-domain compute on volatile cells (SRAM, eDRAM);
    ``"charge"``: charge-domain (QS, QR, QS-QR) and analog macros with another or no compute model.
    """
    model = design.compute_model.strip().upper()
    if "DIMC" in model or design.cell_type.strip().upper().endswith("+D"):
        return "dimc"
    if design.architecture.strip().lower() == "digital":
        return "digital"
    if model in _CURRENT_MODELS:
        return "current_nvm" if _is_nonvolatile(design) else "current"
    return "charge"


def _dot_length(design: MacroDesign) -> float | None:
    """Dot-product length N (rows summed into one ADC conversion)."""
    return design.n_dot


def missing_for_tops_w(design: MacroDesign) -> list[str]:
    """CSV columns the TOPS/W model needs for this design that are missing or unreadable."""
    needed = ["node_m", "supply_v", "b_x", "b_w"]
    kind = compute_class(design)
    if kind in ("charge", "current", "current_nvm"):
        needed += ["b_adc", "t_core_s"]
    missing = [_COLUMN_OF_FIELD[name] for name in needed if getattr(design, name) is None]
    if kind in ("charge", "current", "current_nvm") and _dot_length(design) is None:
        missing.append("N")
    return missing


def _ops_per_invocation(design: MacroDesign) -> float | None:
    """1-bit operations per invocation, N_1b = 2 N N_ADC B_x B_w (the file's N_1b if not computable)."""
    n = _dot_length(design)
    if n is not None and design.n_adc is not None and design.b_x is not None and design.b_w is not None:
        return 2.0 * n * design.n_adc * design.b_x * design.b_w
    return design.n_1b


def _cells(design: MacroDesign) -> float | None:
    """Bit cells of one bank: N_row x N_col, or the core size when the geometry is not given."""
    if design.n_row is not None and design.n_col is not None:
        return design.n_row * design.n_col
    return design.core_size_bits


def missing_for_tops_mm2(design: MacroDesign) -> list[str]:
    """CSV columns the TOPS/mm^2 model needs for this design that are missing or unreadable."""
    missing = [_COLUMN_OF_FIELD[name] for name in ("node_m", "t_core_s") if getattr(design, name) is None]
    if _ops_per_invocation(design) is None:
        missing.append("N, N_ADC, B_x, B_w (or N_1b)")
    if _cells(design) is None:
        missing.append("N_row, N_col (or Core Size(Kb))")
    if compute_class(design) in ("charge", "current", "current_nvm"):
        missing += [_COLUMN_OF_FIELD[name] for name in ("b_adc", "n_adc") if getattr(design, name) is None]
    return missing
