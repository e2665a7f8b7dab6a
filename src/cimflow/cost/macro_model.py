"""The macro-level cost model: its constants, its equations, and :func:`predict_macro`.

The model predicts a macro's energy efficiency (TOPS/W) and compute density (TOPS/mm^2), both
normalized to 1-bit operations (the reported figure x B_x x B_w), from the macro's *design
parameters alone* (a :class:`~cimflow.cost.macro_data.MacroDesign`): architecture, compute
model, node, supply, array geometry, bit widths, ADC count and invocation latency. Eleven
global constants (:class:`MacroConstants`), fitted once on the shipped ``imc_macros.csv`` by
:func:`cimflow.cost.macro_fit.calibrate`, ship in ``macro_constants.json``. The equations, the
fit and how to reproduce it are in ``docs/cost_model.md``.

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
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from cimflow.cost.macro_data import (
    MacroDesign,
    _cells,
    _dot_length,
    _ops_per_invocation,
    compute_class,
    missing_for_tops_mm2,
    missing_for_tops_w,
)
from cimflow.cost.technology import REFERENCE_NODE_M, REFERENCE_SUPPLY_V
from cimflow.errors import DataError
from cimflow.fileio import atomic_write_text, dumps_json

__all__ = ["SHIPPED_CONSTANTS_PATH", "MacroConstants", "load_constants", "predict_macro", "save_constants"]

#: Where the fitted constants ship.
SHIPPED_CONSTANTS_PATH = Path(__file__).with_name("macro_constants.json")

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
    """Write constants (and their provenance) to a JSON file, atomically (strict JSON)."""
    payload = {"constants": constants.values(), "provenance": constants.provenance}
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the folder of {target}: {exc.strerror or exc}") from exc
    atomic_write_text(target, dumps_json(payload, indent=2) + "\n", "macro constants")


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
