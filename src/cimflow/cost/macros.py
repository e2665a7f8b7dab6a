"""Macro-level cost model of published in-memory-computing (IMC) macros, and its validation.

This module is the front door: it re-exports the public names of three modules, each
findable by what it holds.

* :mod:`cimflow.cost.macro_data` — the macro-file schema (``imc_macros.csv``, shipped in
  ``cost/data/`` with its licence and citation), :class:`MacroDesign`, :class:`MacroRow`, the
  bounded :func:`read_macro_csv`, and which parameters each prediction needs.
* :mod:`cimflow.cost.macro_model` — the eleven :class:`MacroConstants`, the equations and
  :func:`predict_macro` (1-bit-normalized TOPS/W and TOPS/mm^2 from design parameters alone).
* :mod:`cimflow.cost.macro_fit` — :func:`validate_macros` (predicted vs reported, per row) and
  :func:`calibrate` (robust log-space fit with k-fold cross-validation grouped by paper).

Source of the data: the UIUC IMC benchmarking database (Shanbhag and Roy, "Comprehending
In-memory Computing Trends via Proper Benchmarking", CICC 2022; repository
UIUC-IMC/UIUC-IMC-Benchmarking, MIT licence). The equations, the fit and how to reproduce the
shipped constants are in ``docs/cost_model.md``.
"""

from __future__ import annotations

from cimflow.cost.macro_data import (
    DESIGN_COLUMNS,
    MAX_MACRO_FILE_BYTES,
    MAX_MACRO_ROWS,
    REPORTED_METRIC_COLUMNS,
    REQUIRED_COLUMNS,
    SHIPPED_MACROS_CSV,
    MacroDesign,
    MacroRow,
    compute_class,
    missing_for_tops_mm2,
    missing_for_tops_w,
    read_macro_csv,
)
from cimflow.cost.macro_fit import FIT_LOSS, FIT_LOSS_SCALE, CalibrationResult, MacroValidation, calibrate, validate_macros
from cimflow.cost.macro_model import (
    SHIPPED_CONSTANTS_PATH,
    MacroConstants,
    load_constants,
    predict_macro,
    save_constants,
)

__all__ = [
    "DESIGN_COLUMNS",
    "FIT_LOSS",
    "FIT_LOSS_SCALE",
    "MAX_MACRO_FILE_BYTES",
    "MAX_MACRO_ROWS",
    "REPORTED_METRIC_COLUMNS",
    "REQUIRED_COLUMNS",
    "SHIPPED_CONSTANTS_PATH",
    "SHIPPED_MACROS_CSV",
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
