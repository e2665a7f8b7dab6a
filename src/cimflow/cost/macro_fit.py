"""Scoring and fitting the macro model against a macro file.

* :func:`validate_macros`: predict TOPS/W and TOPS/mm^2 of every row of a file from its design
  parameters alone (shipped or given constants) and compare with the reported values.
* :func:`calibrate`: fit the model's eleven constants by robust least squares in log space and
  report k-fold cross-validated error, folds grouped by paper. The shipped constants
  (``macro_constants.json``) are ``calibrate()`` of the shipped ``imc_macros.csv`` with k = 5,
  seed = 0; ``tests/cost/test_macros.py`` checks they are reproduced.

Both default to the shipped file, :data:`cimflow.cost.macro_data.SHIPPED_MACROS_CSV`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cimflow.cost.macro_data import SHIPPED_MACROS_CSV, compute_class, missing_for_tops_mm2, read_macro_csv
from cimflow.cost.macro_model import (
    _AREA_NAMES,
    _CONSTANT_NAMES,
    _ENERGY_NAMES,
    MacroConstants,
    _core_area,
    _energy_per_op,
    _Table,
    _table,
    _tops_per_mm2,
    _tops_per_w,
    load_constants,
    predict_macro,
)
from cimflow.errors import DataError

__all__ = ["FIT_LOSS", "FIT_LOSS_SCALE", "CalibrationResult", "MacroValidation", "calibrate", "validate_macros"]

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


def validate_macros(
    path: str | os.PathLike[str] | None = None, constants: MacroConstants | None = None
) -> MacroValidation:
    """Predict TOPS/W and TOPS/mm^2 of every row of a file (default: the shipped
    ``imc_macros.csv``) from its design parameters alone, with the shipped constants (or
    ``constants``), and compare with the reported values."""
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


def calibrate(path: str | os.PathLike[str] | None = None, k: int = 5, seed: int = 0) -> CalibrationResult:
    """Fit the model's constants on a macro file and report k-fold cross-validated errors.

    Energy constants are fitted on rows with a reported TOPS/W and every parameter the TOPS/W
    model needs; area constants on rows with a reported TOPS/mm^2 and every parameter the area
    model needs. Folds hold whole papers (rows sharing an Index). Deterministic for a given
    file, ``k`` and ``seed``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise DataError(f"k must be an integer >= 2 (folds of the cross-validation), got {k!r}")
    file_path = Path(path) if path is not None else SHIPPED_MACROS_CSV
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
