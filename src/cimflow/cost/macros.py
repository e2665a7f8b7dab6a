"""Macro-level cost model of published in-memory-computing (IMC) macros, and its validation.

The model predicts a macro's energy efficiency (TOPS/W) and compute density (TOPS/mm^2), both
normalized to 1-bit operations (the reported figure x B_x x B_w, as in the UIUC IMC benchmarking
database: Shanbhag and Roy, "Comprehending In-memory Computing Trends via Proper Benchmarking",
CICC 2022; repository UIUC-IMC/UIUC-IMC-Benchmarking, MIT licence), from the macro's *design
parameters alone*: architecture, compute model, node, supply, array geometry, bit widths, ADC
count and invocation latency. Eleven global constants, fitted once by robust least squares in
log space on ``imc_macros.csv``, ship in ``macro_constants.json``. The equations, the fit and
how to reproduce it are in ``docs/cost_model.md``.

Energy per 1-bit operation (joules), with ``s = (L / 28 nm) ** gamma * (V / 1 V) ** 2`` the
C V^2 scaling of :mod:`cimflow.cost.technology`:

* analog IMC (charge domain QS/QR, current domain IS/IR)::

      E_op = FOM_adc * s * 2**B_ADC / (2 * N * B_x * B_w)        # one conversion per output
           + e_array * s * (k_current if current-mode on volatile cells else 1)
           + G_static * V**2 * T_core * paths / (2 * N * B_x * B_w)   # static conduction

  where ``paths`` is the number of static conduction paths per converted column during one
  invocation: the N cells of a current-mode eNVM/eFlash column (their read current), else one
  (the column's sense/converter bias).

* digital CIM (DIMC): ``E_op = e_digital * k_dimc * s``; digital accelerators: ``E_op = e_digital * s``.

Area of one core (square metres), F = the node::

      A = F**2 * (a_cell * cells * (k_digital_cell if digital/DIMC else 1)
                  + a_adc * N_ADC * 2**B_ADC (analog only) + a_periphery)

and ``TOPS/mm^2 = (N_1b / T_core) / A`` with ``N_1b = 2 * N * N_ADC * B_x * B_w`` 1-bit operations
per invocation.

Reported metrics are never an input: :func:`read_macro_csv` builds each row's
:class:`MacroDesign` from a whitelist of design columns only (:data:`DESIGN_COLUMNS`), and the
reported TOPS/W and TOPS/mm^2 travel separately in :class:`MacroRow`, used only to score.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from cimflow.cost.technology import REFERENCE_NODE_M, REFERENCE_SUPPLY_V
from cimflow.errors import DataError

__all__ = [
    "DESIGN_COLUMNS",
    "REPORTED_METRIC_COLUMNS",
    "REQUIRED_COLUMNS",
    "CalibrationResult",
    "MacroConstants",
    "MacroDesign",
    "MacroRow",
    "MacroValidation",
    "calibrate",
    "compute_class",
    "load_constants",
    "missing_for_tops_mm2",
    "missing_for_tops_w",
    "predict_macro",
    "read_macro_csv",
    "save_constants",
    "validate_macros",
]

#: Where the fitted constants ship.
SHIPPED_CONSTANTS_PATH = Path(__file__).with_name("macro_constants.json")

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


def read_macro_csv(path: str | os.PathLike[str]) -> list[MacroRow]:
    """Read a macro file in the ``imc_macros.csv`` schema into rows.

    Raises :class:`cimflow.errors.DataError` if the file is missing, is not a readable CSV, or
    lacks a column of :data:`REQUIRED_COLUMNS` (the message names them). Bad cells never raise:
    they read as unknown, and a row missing a parameter the model needs gets ``design=None``.
    """
    file_path = Path(path)
    if not file_path.is_file():
        raise DataError(f"macro file not found: {file_path} (give a CSV in the imc_macros.csv schema)")
    try:
        with file_path.open(newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{file_path} is not a text CSV file (cannot decode it as UTF-8: {exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"cannot read macro file {file_path}: {exc}") from exc
    if "\x00" in text:
        raise DataError(f"{file_path} is not a text CSV file (it contains NUL bytes)")
    try:
        reader = csv.DictReader(text.splitlines(keepends=True))
        header = [name.strip() for name in (reader.fieldnames or [])]
        records = list(reader)
    except csv.Error as exc:
        raise DataError(f"{file_path} is not a readable CSV file: {exc}") from exc
    if not header:
        raise DataError(f"{file_path} has no header line; expected the imc_macros.csv columns")
    absent = [column for column in REQUIRED_COLUMNS if column not in header]
    if absent:
        raise DataError(
            f"{file_path} lacks required column(s) {', '.join(repr(c) for c in absent)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}"
        )
    rows: list[MacroRow] = []
    for number, record in enumerate(records, start=1):
        cells = {(key or "").strip(): (value if isinstance(value, str) else "") for key, value in record.items()}
        index = cells.get("Index", "").strip() or f"row{number}"
        title = cells.get("Paper Title", "").strip()
        design_cells = {column: cells[column] for column in DESIGN_COLUMNS if column in cells}
        design = _design_from_cells(design_cells)
        missing = tuple(missing_for_tops_w(design))
        reported_tops_w, reported_tops_mm2 = _reported_from_cells(
            {column: cells.get(column, "") for column in ("TOPS/W", "TOPS/mm2")}
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


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------


@dataclass
class MacroConstants:
    """The model's global constants (SI units), at the reference point 28 nm, 1 V.

    Energy (TOPS/W) constants: ``node_exponent`` (gamma in C ∝ L^gamma), ``adc_fom_j`` (ADC
    energy per conversion step, E_ADC = FOM 2^B), ``array_energy_j`` (array energy per 1-bit op),
    ``current_mode_factor`` (array-energy factor of current-domain compute on volatile cells),
    ``static_conductance_s`` (conductance of one static path during an invocation: a cell of a
    current-domain eNVM column, else one column's sense/converter bias),
    ``digital_energy_j`` (digital accelerator energy per 1-bit op), ``dimc_factor`` (digital CIM
    relative to a digital accelerator).
    Area (TOPS/mm^2) constants, in F^2: ``cell_area_f2`` (per bit cell with its share of the
    compute periphery), ``adc_area_f2`` (per ADC and per 2^B), ``periphery_area_f2`` (fixed per
    bank), and ``digital_cell_area_factor`` (cell-area factor of digital and DIMC macros).
    """

    node_exponent: float
    adc_fom_j: float
    array_energy_j: float
    current_mode_factor: float
    static_conductance_s: float
    digital_energy_j: float
    dimc_factor: float
    cell_area_f2: float
    adc_area_f2: float
    periphery_area_f2: float
    digital_cell_area_factor: float
    provenance: dict = field(default_factory=dict, compare=False)

    def values(self) -> dict[str, float]:
        """The numeric constants by name."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name != "provenance"}


_ENERGY_NAMES = (
    "node_exponent",
    "adc_fom_j",
    "array_energy_j",
    "current_mode_factor",
    "static_conductance_s",
    "digital_energy_j",
    "dimc_factor",
)
_AREA_NAMES = ("cell_area_f2", "adc_area_f2", "periphery_area_f2", "digital_cell_area_factor")
_CONSTANT_NAMES = _ENERGY_NAMES + _AREA_NAMES


def save_constants(constants: MacroConstants, path: str | os.PathLike[str]) -> None:
    """Write constants (and their provenance) to a JSON file, atomically."""
    payload = {"constants": constants.values(), "provenance": constants.provenance}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, sort_keys=False)
            stream.write("\n")
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_constants(path: str | os.PathLike[str] | None = None) -> MacroConstants:
    """Load constants from a JSON file written by :func:`save_constants` (default: the shipped ones)."""
    source = Path(path) if path is not None else SHIPPED_CONSTANTS_PATH
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"macro constants file not found: {source}") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read macro constants from {source}: {exc}") from exc
    table = payload.get("constants") if isinstance(payload, dict) else None
    if not isinstance(table, dict):
        raise DataError(f"{source}: expected a JSON object with a 'constants' table")
    absent = [name for name in _CONSTANT_NAMES if name not in table]
    if absent:
        raise DataError(f"{source}: missing constant(s) {', '.join(absent)}")
    values: dict[str, float] = {}
    for name in _CONSTANT_NAMES:
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{source}: constant {name} must be a finite number, got {value!r}")
        if name != "node_exponent" and value <= 0:
            raise DataError(f"{source}: constant {name} must be > 0, got {value!r}")
        values[name] = float(value)
    provenance = payload.get("provenance", {})
    return MacroConstants(**values, provenance=provenance if isinstance(provenance, dict) else {})


# --------------------------------------------------------------------------------------------
# The model (vectorized: the fit and predict_macro evaluate the same arrays)
# --------------------------------------------------------------------------------------------

_CLASS_CODES = {"charge": 0, "current": 1, "current_nvm": 2, "digital": 3, "dimc": 4}


@dataclass(frozen=True)
class _Table:
    """Design parameters of many macros as arrays (SI units; NaN where unknown)."""

    kind: np.ndarray
    node_m: np.ndarray
    supply_v: np.ndarray
    b_x: np.ndarray
    b_w: np.ndarray
    b_adc: np.ndarray
    n_dot: np.ndarray
    n_adc: np.ndarray
    t_core_s: np.ndarray
    ops: np.ndarray
    cells: np.ndarray


def _table(designs: Sequence[MacroDesign]) -> _Table:
    def column(values: Iterable[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

    return _Table(
        kind=np.array([_CLASS_CODES[compute_class(d)] for d in designs], dtype=int),
        node_m=column(d.node_m for d in designs),
        supply_v=column(d.supply_v for d in designs),
        b_x=column(d.b_x for d in designs),
        b_w=column(d.b_w for d in designs),
        b_adc=column(d.b_adc for d in designs),
        n_dot=column(_dot_length(d) for d in designs),
        n_adc=column(d.n_adc for d in designs),
        t_core_s=column(d.t_core_s for d in designs),
        ops=column(_ops_per_invocation(d) for d in designs),
        cells=column(_cells(d) for d in designs),
    )


def _energy_per_op(table: _Table, theta: np.ndarray) -> np.ndarray:
    """Energy per 1-bit operation (J) for every row; ``theta`` = (gamma, ln of the other 6)."""
    gamma = theta[0]
    fom, e_array, k_current, g_static, e_digital, k_dimc = np.exp(theta[1:7])
    voltage_sq = (table.supply_v / REFERENCE_SUPPLY_V) ** 2
    scale = (table.node_m / REFERENCE_NODE_M) ** gamma * voltage_sq
    kind = table.kind
    analog = kind <= _CLASS_CODES["current_nvm"]
    with np.errstate(invalid="ignore", over="ignore"):
        adc = fom * scale * np.exp2(table.b_adc) / (2.0 * table.n_dot * table.b_x * table.b_w)
        array = e_array * scale * np.where(kind == _CLASS_CODES["current"], k_current, 1.0)
        paths = np.where(kind == _CLASS_CODES["current_nvm"], table.n_dot, 1.0)
        static = g_static * table.supply_v**2 * table.t_core_s * paths / (2.0 * table.n_dot * table.b_x * table.b_w)
        digital = e_digital * scale * np.where(kind == _CLASS_CODES["dimc"], k_dimc, 1.0)
    return np.where(analog, adc + array + static, digital)


def _core_area(table: _Table, phi: np.ndarray) -> np.ndarray:
    """Area of one core (m^2) for every row; ``phi`` = ln of the 4 area constants."""
    a_cell, a_adc, a_periphery, k_digital = np.exp(phi)
    analog = table.kind <= _CLASS_CODES["current_nvm"]
    feature = table.node_m**2
    with np.errstate(invalid="ignore", over="ignore"):
        cells = a_cell * table.cells * np.where(analog, 1.0, k_digital)
        adcs = np.where(analog, a_adc * table.n_adc * np.exp2(table.b_adc), 0.0)
    return feature * (cells + adcs + a_periphery)


def _tops_per_w(energy_j: np.ndarray) -> np.ndarray:
    return 1.0 / (energy_j * 1e12)


def _tops_per_mm2(table: _Table, area_m2: np.ndarray) -> np.ndarray:
    tops = table.ops / table.t_core_s / 1e12
    return tops / (area_m2 * 1e6)


def _theta(constants: MacroConstants) -> np.ndarray:
    return np.array(
        [constants.node_exponent]
        + [math.log(getattr(constants, name)) for name in _ENERGY_NAMES[1:]],
        dtype=float,
    )


def _phi(constants: MacroConstants) -> np.ndarray:
    return np.log(np.array([getattr(constants, name) for name in _AREA_NAMES], dtype=float))


def predict_macro(design: MacroDesign, constants: MacroConstants | None = None) -> tuple[float | None, float | None]:
    """Predicted (TOPS/W, TOPS/mm^2) of one macro, both normalized to 1-bit operations.

    Each is ``None`` when a design parameter its model needs is missing (see
    :func:`missing_for_tops_w` and :func:`missing_for_tops_mm2`). Uses the shipped constants
    unless others are given.
    """
    if not isinstance(design, MacroDesign):
        raise DataError(f"predict_macro needs a MacroDesign, got {type(design).__name__}")
    constants = constants if constants is not None else load_constants()
    table = _table([design])
    tops_w: float | None = None
    tops_mm2: float | None = None
    if not missing_for_tops_w(design):
        value = float(_tops_per_w(_energy_per_op(table, _theta(constants)))[0])
        tops_w = value if math.isfinite(value) and value > 0 else None
    if not missing_for_tops_mm2(design):
        value = float(_tops_per_mm2(table, _core_area(table, _phi(constants)))[0])
        tops_mm2 = value if math.isfinite(value) and value > 0 else None
    return tops_w, tops_mm2


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _relative_error(predicted: float | None, reported: float | None) -> float | None:
    if predicted is None or reported is None:
        return None
    return abs(predicted / reported - 1.0)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def _p90(values: Sequence[float]) -> float | None:
    return float(np.percentile(values, 90)) if len(values) else None


@dataclass
class MacroValidation:
    """Predicted vs reported metrics of every row of a file, with the error statistics.

    Errors are absolute relative errors ``|predicted / reported - 1|`` over the rows that have
    both a prediction and a reported value. ``n_skipped`` counts rows whose TOPS/W could not be
    predicted (a design parameter is missing); ``n_skipped_tops_mm2`` the same for TOPS/mm^2.
    """

    rows: list[dict]
    n_rows: int
    n_skipped: int
    median_abs_err_tops_w: float | None
    p90_abs_err_tops_w: float | None
    median_abs_err_tops_mm2: float | None
    p90_abs_err_tops_mm2: float | None
    n_scored_tops_w: int = 0
    n_scored_tops_mm2: int = 0
    n_skipped_tops_mm2: int = 0

    def to_json(self) -> dict:
        """A JSON-ready dict of the whole result."""
        return asdict(self)


def validate_macros(path: str | os.PathLike[str], constants: MacroConstants | None = None) -> MacroValidation:
    """Predict TOPS/W and TOPS/mm^2 of every row of a file from its design parameters alone,
    with the shipped constants (or ``constants``), and compare with the reported values."""
    constants = constants if constants is not None else load_constants()
    macro_rows = read_macro_csv(path)
    results: list[dict] = []
    errors_w: list[float] = []
    errors_mm2: list[float] = []
    skipped_mm2 = 0
    for row in macro_rows:
        parameters = row.design_parameters
        tops_w: float | None = None
        tops_mm2: float | None = None
        missing_mm2: list[str] = []
        if row.design is not None:
            tops_w, _ = predict_macro(row.design, constants)
        if parameters is not None:
            missing_mm2 = missing_for_tops_mm2(parameters)
            if not missing_mm2:
                _, tops_mm2 = predict_macro(parameters, constants)
        if tops_mm2 is None:
            skipped_mm2 += 1
        error_w = _relative_error(tops_w, row.reported_tops_w)
        error_mm2 = _relative_error(tops_mm2, row.reported_tops_mm2)
        if error_w is not None:
            errors_w.append(error_w)
        if error_mm2 is not None:
            errors_mm2.append(error_mm2)
        results.append(
            {
                "index": row.index,
                "title": row.title,
                "compute_class": compute_class(parameters) if parameters is not None else None,
                "predicted_tops_w": tops_w,
                "reported_tops_w": row.reported_tops_w,
                "abs_err_tops_w": error_w,
                "predicted_tops_mm2": tops_mm2,
                "reported_tops_mm2": row.reported_tops_mm2,
                "abs_err_tops_mm2": error_mm2,
                "missing": list(row.missing),
                "missing_tops_mm2": missing_mm2,
            }
        )
    return MacroValidation(
        rows=results,
        n_rows=len(macro_rows),
        n_skipped=sum(1 for row in macro_rows if row.design is None),
        median_abs_err_tops_w=_median(errors_w),
        p90_abs_err_tops_w=_p90(errors_w),
        median_abs_err_tops_mm2=_median(errors_mm2),
        p90_abs_err_tops_mm2=_p90(errors_mm2),
        n_scored_tops_w=len(errors_w),
        n_scored_tops_mm2=len(errors_mm2),
        n_skipped_tops_mm2=skipped_mm2,
    )


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------

#: Robust loss of the log-space fit: soft-L1 (pseudo-Huber) with this scale in ln units, so a
#: row off by more than ~1.6x weighs linearly, not quadratically (a few papers report under
#: conditions the design parameters cannot express).
FIT_LOSS = "soft_l1"
FIT_LOSS_SCALE = 0.5

#: Starting points of the fit (physically plausible orders of magnitude, not fitted values).
_THETA_START = np.array(
    [1.0, math.log(1e-15), math.log(1e-15), 0.0, math.log(1e-6), math.log(1e-14), 0.0], dtype=float
)
_PHI_START = np.log(np.array([500.0, 1e4, 1e6, 1.0], dtype=float))


def _least_squares(residuals, start: np.ndarray) -> np.ndarray:
    from scipy.optimize import least_squares  # scipy comes with scikit-learn, a core dependency

    result = least_squares(
        residuals,
        start,
        loss=FIT_LOSS,
        f_scale=FIT_LOSS_SCALE,
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=20000,
    )
    return result.x


def _fit_energy(table: _Table, reported: np.ndarray) -> np.ndarray:
    target = np.log(reported)
    return _least_squares(lambda theta: np.log(_tops_per_w(_energy_per_op(table, theta))) - target, _THETA_START)


def _fit_area(table: _Table, reported: np.ndarray) -> np.ndarray:
    target = np.log(reported)
    return _least_squares(lambda phi: np.log(_tops_per_mm2(table, _core_area(table, phi))) - target, _PHI_START)


def _constants_from(theta: np.ndarray, phi: np.ndarray, provenance: dict | None = None) -> MacroConstants:
    energy = [float(theta[0])] + [float(v) for v in np.exp(theta[1:7])]
    area = [float(v) for v in np.exp(phi)]
    values = dict(zip(_CONSTANT_NAMES, energy + area, strict=True))
    return MacroConstants(**values, provenance=provenance or {})


def _fold_of_groups(groups: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Assign whole groups (papers) to k folds: a seeded shuffle of the sorted groups, dealt round-robin."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[position]: fold % k for fold, position in enumerate(order)}


@dataclass
class CalibrationResult:
    """Constants fitted on a whole file and their k-fold cross-validated error.

    ``cv_*`` errors are measured on rows held out of each fit, folds grouped by paper (the
    file's Index), so repeated operating points of one paper never straddle train and test.
    ``fit_*`` errors are in-sample (the final constants on the rows they were fitted to).
    """

    constants: MacroConstants
    cv_median_abs_err_tops_w: float
    cv_p90_abs_err_tops_w: float
    cv_median_abs_err_tops_mm2: float
    fit_median_abs_err_tops_w: float
    k: int
    per_fold: list[dict]
    cv_p90_abs_err_tops_mm2: float = math.nan
    fit_median_abs_err_tops_mm2: float = math.nan
    fit_p90_abs_err_tops_w: float = math.nan
    n_rows_tops_w: int = 0
    n_rows_tops_mm2: int = 0
    seed: int = 0
    held_out_tops_w: list[dict] = field(default_factory=list)
    """Per TOPS/W row: ``index``, ``fold``, ``compute_class``, the held-out ``predicted`` and the
    ``reported`` TOPS/W (what the CV errors are computed from)."""

    def to_json(self) -> dict:
        """A JSON-ready dict of the whole result."""
        payload = asdict(self)
        payload["constants"] = {"constants": self.constants.values(), "provenance": self.constants.provenance}
        return payload


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibrate(path: str | os.PathLike[str], k: int = 5, seed: int = 0) -> CalibrationResult:
    """Fit the model's constants on a macro file and report k-fold cross-validated errors.

    Energy constants are fitted on rows with a reported TOPS/W and every parameter the TOPS/W
    model needs; area constants on rows with a reported TOPS/mm^2 and every parameter the area
    model needs. Folds hold whole papers (rows sharing an Index). Deterministic for a given
    file, ``k`` and ``seed``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise DataError(f"k must be an integer >= 2 (folds of the cross-validation), got {k!r}")
    file_path = Path(path)
    macro_rows = read_macro_csv(file_path)
    energy_rows = [r for r in macro_rows if r.design is not None and r.reported_tops_w is not None]
    area_rows = [
        r
        for r in macro_rows
        if r.design_parameters is not None
        and r.reported_tops_mm2 is not None
        and not missing_for_tops_mm2(r.design_parameters)
    ]
    if len(energy_rows) < 2 * len(_ENERGY_NAMES):
        raise DataError(
            f"{file_path}: only {len(energy_rows)} rows have a reported TOPS/W and every design parameter "
            f"the model needs; calibration needs at least {2 * len(_ENERGY_NAMES)}"
        )
    if len(area_rows) < 2 * len(_AREA_NAMES):
        raise DataError(
            f"{file_path}: only {len(area_rows)} rows have a reported TOPS/mm2 and every design parameter "
            f"the area model needs; calibration needs at least {2 * len(_AREA_NAMES)}"
        )
    groups = sorted({r.index for r in energy_rows} | {r.index for r in area_rows})
    if k > len(groups):
        raise DataError(f"k={k} folds but the file holds only {len(groups)} papers (distinct Index values)")
    fold_of = _fold_of_groups(groups, k, seed)

    energy_table = _table([r.design for r in energy_rows])  # type: ignore[misc]
    energy_reported = np.array([r.reported_tops_w for r in energy_rows], dtype=float)
    energy_fold = np.array([fold_of[r.index] for r in energy_rows])
    area_table = _table([r.design_parameters for r in area_rows])  # type: ignore[misc]
    area_reported = np.array([r.reported_tops_mm2 for r in area_rows], dtype=float)
    area_fold = np.array([fold_of[r.index] for r in area_rows])

    def subset(table: _Table, mask: np.ndarray) -> _Table:
        return _Table(**{name: getattr(table, name)[mask] for name in table.__dataclass_fields__})

    cv_errors_w = np.full(len(energy_rows), np.nan)
    cv_predicted_w = np.full(len(energy_rows), np.nan)
    cv_errors_mm2 = np.full(len(area_rows), np.nan)
    per_fold: list[dict] = []
    for fold in range(k):
        train_w, test_w = energy_fold != fold, energy_fold == fold
        train_a, test_a = area_fold != fold, area_fold == fold
        record: dict = {
            "fold": fold,
            "test_papers": sorted(g for g in groups if fold_of[g] == fold),
            "n_train_tops_w": int(train_w.sum()),
            "n_test_tops_w": int(test_w.sum()),
            "n_train_tops_mm2": int(train_a.sum()),
            "n_test_tops_mm2": int(test_a.sum()),
            "median_abs_err_tops_w": None,
            "median_abs_err_tops_mm2": None,
        }
        if test_w.any():
            theta = _fit_energy(subset(energy_table, train_w), energy_reported[train_w])
            predicted = _tops_per_w(_energy_per_op(subset(energy_table, test_w), theta))
            cv_predicted_w[test_w] = predicted
            cv_errors_w[test_w] = np.abs(predicted / energy_reported[test_w] - 1.0)
            record["median_abs_err_tops_w"] = float(np.median(cv_errors_w[test_w]))
        if test_a.any():
            phi = _fit_area(subset(area_table, train_a), area_reported[train_a])
            test_table = subset(area_table, test_a)
            predicted = _tops_per_mm2(test_table, _core_area(test_table, phi))
            cv_errors_mm2[test_a] = np.abs(predicted / area_reported[test_a] - 1.0)
            record["median_abs_err_tops_mm2"] = float(np.median(cv_errors_mm2[test_a]))
        per_fold.append(record)

    theta = _fit_energy(energy_table, energy_reported)
    phi = _fit_area(area_table, area_reported)
    fit_errors_w = np.abs(_tops_per_w(_energy_per_op(energy_table, theta)) / energy_reported - 1.0)
    fit_errors_mm2 = np.abs(_tops_per_mm2(area_table, _core_area(area_table, phi)) / area_reported - 1.0)
    provenance = {
        "fitted_on": file_path.name,
        "sha256": _file_digest(file_path),
        "command": f"cimflow validate calibrate {file_path.name} (k={k}, seed={seed})",
        "python": f"from cimflow.cost.macros import calibrate, save_constants; "
        f"save_constants(calibrate('{file_path.name}', k={k}, seed={seed}).constants, 'macro_constants.json')",
        "k": k,
        "seed": seed,
        "loss": f"{FIT_LOSS} (f_scale={FIT_LOSS_SCALE} in ln units), least squares on ln(TOPS/W) and ln(TOPS/mm2)",
        "n_rows_tops_w": len(energy_rows),
        "n_rows_tops_mm2": len(area_rows),
        "cv_median_abs_err_tops_w": float(np.median(cv_errors_w)),
        "cv_median_abs_err_tops_mm2": float(np.median(cv_errors_mm2)),
        "reference": "Shanbhag and Roy, CICC 2022; UIUC-IMC/UIUC-IMC-Benchmarking (MIT)",
    }
    return CalibrationResult(
        constants=_constants_from(theta, phi, provenance),
        cv_median_abs_err_tops_w=float(np.median(cv_errors_w)),
        cv_p90_abs_err_tops_w=float(np.percentile(cv_errors_w, 90)),
        cv_median_abs_err_tops_mm2=float(np.median(cv_errors_mm2)),
        fit_median_abs_err_tops_w=float(np.median(fit_errors_w)),
        k=k,
        per_fold=per_fold,
        cv_p90_abs_err_tops_mm2=float(np.percentile(cv_errors_mm2, 90)),
        fit_median_abs_err_tops_mm2=float(np.median(fit_errors_mm2)),
        fit_p90_abs_err_tops_w=float(np.percentile(fit_errors_w, 90)),
        n_rows_tops_w=len(energy_rows),
        n_rows_tops_mm2=len(area_rows),
        seed=seed,
        held_out_tops_w=[
            {
                "index": row.index,
                "fold": int(fold),
                "compute_class": compute_class(row.design),  # type: ignore[arg-type]
                "predicted": float(predicted),
                "reported": float(row.reported_tops_w),  # type: ignore[arg-type]
            }
            for row, fold, predicted in zip(energy_rows, energy_fold, cv_predicted_w, strict=True)
        ],
    )
