"""The ADC energy law fitted to B. Murmann's ADC Performance Survey (``data/adc_survey.csv``).

Energy per Nyquist conversion of a converter with ``enob`` effective bits, Nyquist rate ``fs``,
feature size ``L`` and supply ``V`` (all SI)::

    E = E_walden + E_thermal
    E_walden  = 10**a * 2**(b * enob) * (L / 28 nm)**g * (V / V_typ(L))**v * (1 + fs / f_c)
                * 10**(y * (year - 2020) / 10)
    E_thermal = 0.5 * 10**((6.02 enob + 1.76 - FOM_S) / 10)      (4x per bit, kT/C)

* the *Walden* term is the technology part: a switched-capacitor energy growing ``2**b`` per
  effective bit, with the node, with the supply relative to the node's typical supply, and
  linearly in ``fs`` above the speed corner ``f_c`` (a converter pushed past its technology's
  comfortable rate spends energy per conversion in proportion to the rate), and with the
  design year (``y`` decades of energy per decade of design progress at a fixed node: the
  survey's converters at a given node got more efficient over time, so without it an old
  node reads as the energy of old designs; a chip is costed at :data:`ADC_REFERENCE_YEAR`
  unless told otherwise);
* the *thermal* term is the survey's state-of-the-art Schreier envelope, 186.7 dB
  (:data:`ADC_SCHREIER_FOM_DB`): a physical floor no converter beats, node- and
  supply-independent. Left free, the median fit pushes it below every row, i.e. to the floor,
  so it is fixed there and only the Walden term is fitted;
* ``V_typ(L) = 10**(c0 + c1 log10(L / 28 nm))`` is a log-log fit of supply on node over the
  rows that report a supply (half of them do not; for those ``V = V_typ(L)``, so only rows with
  a reported supply inform ``v``).

Six constants (``a, b, g, v, log10 f_c, y``) are fitted in log10 space by quantile regression
(smoothed pinball loss) on the Nyquist-rate converters (``type == NQ``; an oversampled
converter's energy per Nyquist sample includes its oversampling, and a CIM column ADC is a
Nyquist converter). Two laws are shipped (``adc_law_constants.json``):

* ``median`` (quantile 0.5, the default of :class:`cimflow.cost.estimate.CostOptions`): the
  energy of a typical published converter with that resolution, rate, node and supply. It is
  the default because a chip that quotes no ADC energy gives no reason to assume a record
  converter, and the median is the unbiased central estimate (its held-out error is the
  scatter of the field);
* ``frontier`` (quantile 0.1): what the best tenth of published designs reach, for a designer
  who assumes a state-of-the-art converter.

:func:`cross_validate_adc_law` reports the error on converters held out of the fit (k folds,
grouped by paper). The data: 725 converters (ISSCC 1997-2025, VLSI), B. Murmann, "ADC
Performance Survey 1997-2025", https://github.com/bmurmann/ADC-survey, BSD 3-clause
(``data/adc_survey.LICENSE``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cimflow.errors import CimflowError, DataError
from cimflow.readers import read_text_bounded

#: The survey shipped with cimflow (BSD 3-clause; licence in ``adc_survey.LICENSE``).
SHIPPED_ADC_CSV = Path(__file__).with_name("data") / "adc_survey.csv"
#: The fitted laws shipped with cimflow: ``fit_adc_law`` of the shipped survey (see ``save_adc_laws``).
ADC_LAW_CONSTANTS = Path(__file__).with_name("adc_law_constants.json")
MAX_ADC_FILE_BYTES = 16 * 1024 * 1024

#: Schreier figure of merit of the survey's state-of-the-art envelope at low sampling rates,
#: dB: 186.7 dB (``foms_db_asymp`` = 186.72 of B. Murmann, ADC Performance Survey, rev.
#: 2026-08, plots/foms_plot.json; the envelope holds below its 46.7 MHz corner). It bounds
#: the thermal-noise-limited regime, where each extra bit costs 4x:
#: ``E = 0.5 * 10 ** ((6.02 bits + 1.76 - FOM_S) / 10)`` joules per Nyquist conversion.
ADC_SCHREIER_FOM_DB = 186.7
#: Reference node and the columns of the survey the law reads.
REFERENCE_NODE_M = 28e-9
#: Nominal bits of a chip's converter minus its effective bits. Assumption: 0.5 bit (a well
#: designed low-resolution SAR or flash reaches ENOB within about half a bit of its resolution).
ADC_ENOB_LOSS_BITS = 0.5
#: Design year at which a chip's converter is costed when none is given. Assumption: 2020, the
#: generation of the CIM chips cimflow validates against (2020-2023); the law moves about
#: ``y`` decades per decade of year, so this is a stated choice, not a neutral one.
ADC_REFERENCE_YEAR = 2020
#: Quantiles of the shipped laws.
ADC_LAW_QUANTILES = {"median": 0.5, "frontier": 0.1}

_REQUIRED = ("type", "year", "technology", "sndr_plot_dB", "p_W", "fsnyq_Hz")
_NODE_RE = re.compile(r"^\s*(\d*\.?\d+)")
_LOG10_2 = math.log10(2.0)
_LN10 = math.log(10.0)
_START = np.array([-14.5, 1.0, 0.5, 2.0, 9.0, -1.0])
_SMOOTHING_DEX = 0.01


def adc_thermal_energy_j(enob: float, fom_db: float = ADC_SCHREIER_FOM_DB) -> float:
    """Energy floor of one Nyquist conversion set by thermal noise (joules), from the survey's
    Schreier-FOM envelope at an SNDR of ``6.02 enob + 1.76`` dB. Independent of node and
    supply (kT/C, not C V^2)."""
    return 0.5 * 10.0 ** ((6.02 * enob + 1.76 - fom_db) / 10.0)


# ----------------------------------------------------------------------------- the survey

@dataclass(frozen=True)
class AdcSurvey:
    """The converters of a survey file usable for the fit (SI units; ``supply_v`` NaN where
    the survey gives none), and how many rows were skipped and why."""

    enob: np.ndarray
    sample_rate_hz: np.ndarray
    node_m: np.ndarray
    supply_v: np.ndarray
    energy_j: np.ndarray
    year: np.ndarray
    paper: tuple[str, ...]
    skipped: dict[str, int]
    sha256: str

    def __len__(self) -> int:
        return len(self.paper)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_adc_survey(path: str | os.PathLike[str] | None = None, *, nyquist_only: bool = True) -> AdcSurvey:
    """Read a survey CSV (the columns of ``data/adc_survey.csv``): every row with a node in
    micrometres (rows naming only a process, e.g. ``Bipolar``, are skipped), an SNDR, a power
    and a Nyquist rate; ``nyquist_only`` keeps the ``NQ`` converters."""
    file_path = Path(SHIPPED_ADC_CSV if path is None else path)
    if not file_path.is_file():
        raise DataError(f"ADC survey file not found: {file_path} (give a CSV with the columns of adc_survey.csv)")
    text = read_text_bounded(file_path, MAX_ADC_FILE_BYTES, "ADC survey file", encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{file_path}: missing column(s) {missing}; an ADC survey file needs {list(_REQUIRED)} "
                        "(and vsup1_V, venue, year, id where known)")
    columns: dict[str, list[float]] = {"enob": [], "fs": [], "node": [], "supply": [], "energy": [], "year": []}
    papers: list[str] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for row in reader:
        if nyquist_only and (row.get("type") or "").strip() != "NQ":
            skip("not a Nyquist converter")
            continue
        node = _NODE_RE.match(row.get("technology") or "")
        sndr, power, fs, year = (_number(row.get(c) or "") for c in ("sndr_plot_dB", "p_W", "fsnyq_Hz", "year"))
        if (node is None or sndr is None or power is None or fs is None or year is None or power <= 0 or fs <= 0
                or float(node.group(1)) <= 0):
            skip("no node in um, SNDR, power, rate or year")
            continue
        supply = _number(row.get("vsup1_V") or "")
        columns["enob"].append((sndr - 1.76) / 6.02)
        columns["fs"].append(fs)
        columns["node"].append(float(node.group(1)) * 1e-6)
        columns["supply"].append(supply if supply is not None and supply > 0 else math.nan)
        columns["energy"].append(power / fs)
        columns["year"].append(year)
        papers.append(f"{row.get('venue', '')} {row.get('year', '')} {row.get('id', '')}")
    if len(papers) < 20:
        raise DataError(f"{file_path}: only {len(papers)} usable converters (skipped: {skipped}); the fit needs at least 20")
    return AdcSurvey(
        enob=np.array(columns["enob"]), sample_rate_hz=np.array(columns["fs"]), node_m=np.array(columns["node"]),
        supply_v=np.array(columns["supply"]), energy_j=np.array(columns["energy"]), year=np.array(columns["year"]),
        paper=tuple(papers), skipped=skipped,
        sha256=hashlib.sha256(file_path.read_bytes()).hexdigest(),  # what sha256sum prints; the size is bounded above
    )


# ----------------------------------------------------------------------------- the law

@dataclass(frozen=True)
class AdcLaw:
    """One fitted ADC energy law (see the module docstring for the form)."""

    quantile: float
    log10_walden_j: float
    enob_exponent: float
    node_exponent: float
    supply_exponent: float
    log10_corner_hz: float
    year_slope_per_decade: float
    supply_intercept: float
    supply_slope: float
    thermal_fom_db: float = ADC_SCHREIER_FOM_DB
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def typical_supply_v(self, node_m: float) -> float:
        """The survey's typical supply at this node (volts)."""
        return float(10.0 ** (self.supply_intercept + self.supply_slope * math.log10(node_m / REFERENCE_NODE_M)))

    def log10_energy_j(self, enob: Any, sample_rate_hz: Any, node_m: Any, supply_v: Any = None,
                       year: Any = ADC_REFERENCE_YEAR) -> np.ndarray:
        """log10 of the energy per conversion (vectorized; ``supply_v`` None or NaN: the node's
        typical supply)."""
        enob, fs, node, when = (np.asarray(x, dtype=float) for x in (enob, sample_rate_hz, node_m, year))
        log_node = np.log10(node / REFERENCE_NODE_M)
        log_supply = np.zeros_like(log_node) if supply_v is None else np.nan_to_num(
            np.log10(np.asarray(supply_v, dtype=float)) - (self.supply_intercept + self.supply_slope * log_node))
        walden = (self.log10_walden_j + self.enob_exponent * _LOG10_2 * enob + self.node_exponent * log_node
                  + self.supply_exponent * log_supply + np.log10(1.0 + fs / 10.0**self.log10_corner_hz)
                  + self.year_slope_per_decade * (when - ADC_REFERENCE_YEAR) / 10.0)
        thermal = math.log10(0.5) + (6.02 * enob + 1.76 - self.thermal_fom_db) / 10.0
        return np.logaddexp(walden * _LN10, thermal * _LN10) / _LN10

    def energy_j(self, enob: float, sample_rate_hz: float, node_m: float, supply_v: float | None = None,
                 year: int = ADC_REFERENCE_YEAR) -> float:
        """Energy of one conversion (joules) at ``enob`` effective bits, ``sample_rate_hz``
        conversions per second, node ``node_m`` (metres), supply ``supply_v`` (volts) and design
        ``year`` (within the survey's 1997-2025; the law is not extrapolated in time)."""
        for name, value in (("sample_rate_hz", sample_rate_hz), ("node_m", node_m)) + (
                (("supply_v", supply_v),) if supply_v is not None else ()):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CimflowError(f"ADC law: {name} must be a finite number > 0, got {value!r}")
        if not (isinstance(enob, (int, float)) and math.isfinite(enob) and 0 <= enob <= 32):
            raise CimflowError(f"ADC law: enob must be within [0, 32] effective bits, got {enob!r}")
        if not (isinstance(year, int) and not isinstance(year, bool) and 1997 <= year <= 2025):
            raise CimflowError(f"ADC law: year must be an integer within [1997, 2025] (the survey's years), got {year!r}")
        return float(10.0 ** self.log10_energy_j(enob, sample_rate_hz, node_m, supply_v, year))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _supply_fit(survey: AdcSurvey) -> tuple[float, float]:
    known = np.isfinite(survey.supply_v)
    if known.sum() < 3:
        return 0.0, 0.0
    slope, intercept = np.polyfit(np.log10(survey.node_m[known] / REFERENCE_NODE_M), np.log10(survey.supply_v[known]), 1)
    return float(intercept), float(slope)


def _pinball(residual: np.ndarray, quantile: float) -> float:
    """Smoothed pinball (quantile) loss: minimized where a fraction ``quantile`` of the
    residuals is negative; the kink is rounded over :data:`_SMOOTHING_DEX`."""
    s = _SMOOTHING_DEX
    return float(np.sum((quantile - 1.0) * residual + s * np.logaddexp(0.0, residual / s)))


def fit_adc_law(survey: AdcSurvey, quantile: float = 0.5, rows: np.ndarray | None = None) -> AdcLaw:
    """Fit the law's six constants at ``quantile`` (0.5: median, 0.1: frontier) on the rows
    ``rows`` of the survey (a boolean mask; default all), in log10 space."""
    from scipy.optimize import minimize  # scipy comes with scikit-learn, a core dependency

    if not 0.0 < quantile < 1.0:
        raise CimflowError(f"ADC law quantile must be within (0, 1), got {quantile!r}")
    mask = np.ones(len(survey), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    intercept, slope = _supply_fit(survey)
    target = np.log10(survey.energy_j[mask])
    args = (survey.enob[mask], survey.sample_rate_hz[mask], survey.node_m[mask], survey.supply_v[mask], survey.year[mask])

    def law(theta: Sequence[float] | np.ndarray) -> AdcLaw:
        walden, enob, node, supply, corner, year = (float(t) for t in theta)
        return AdcLaw(quantile=quantile, log10_walden_j=walden, enob_exponent=enob, node_exponent=node, supply_exponent=supply,
                      log10_corner_hz=corner, year_slope_per_decade=year, supply_intercept=intercept, supply_slope=slope)

    def loss(theta: np.ndarray) -> float:
        return _pinball(target - law(theta).log10_energy_j(*args), quantile)

    best = minimize(loss, _START, method="Powell", options={"maxiter": 50000, "xtol": 1e-6, "ftol": 1e-10})
    for method in ("Nelder-Mead", "Powell"):  # polish: Powell and Nelder-Mead in turn leave no direction unexplored
        again = minimize(loss, best.x, method=method, options={"maxiter": 50000})
        if again.fun < best.fun:
            best = again
    return law(best.x)


# ----------------------------------------------------------------------------- held-out error

def _fold_of_papers(papers: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold of each row: whole papers dealt to k folds after a seeded shuffle of the sorted papers."""
    unique = sorted(set(papers))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold = {unique[position]: i % k for i, position in enumerate(order)}
    return np.array([fold[p] for p in papers])


@dataclass
class AdcLawValidation:
    """Errors of a law on converters held out of its fit: ``|log10(predicted / reported)|``
    (0.3 = a factor 2), and the fraction of held-out converters below the law (a median law
    should leave half below, a 0.1 frontier a tenth)."""

    quantile: float
    k: int
    seed: int
    n_rows: int
    n_papers: int
    cv_median_abs_log10_error: float
    cv_p90_abs_log10_error: float
    cv_fraction_below: float
    fit_median_abs_log10_error: float
    per_fold: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_validate_adc_law(survey: AdcSurvey, quantile: float = 0.5, k: int = 5, seed: int = 0) -> AdcLawValidation:
    """k-fold cross-validation of :func:`fit_adc_law`, folds grouped by paper."""
    if not (isinstance(k, int) and 2 <= k <= len(set(survey.paper))):
        raise CimflowError(f"k must be an integer within [2, {len(set(survey.paper))}] (the papers), got {k!r}")
    folds = _fold_of_papers(survey.paper, k, seed)
    residual = np.empty(len(survey))
    per_fold = []
    for fold in range(k):
        test = folds == fold
        law = fit_adc_law(survey, quantile, rows=~test)
        residual[test] = np.log10(survey.energy_j[test]) - law.log10_energy_j(
            survey.enob[test], survey.sample_rate_hz[test], survey.node_m[test], survey.supply_v[test], survey.year[test])
        per_fold.append({"fold": fold, "n_test": int(test.sum()), "median_abs_log10_error": float(np.median(np.abs(residual[test])))})
    full = fit_adc_law(survey, quantile)
    in_sample = np.log10(survey.energy_j) - full.log10_energy_j(
        survey.enob, survey.sample_rate_hz, survey.node_m, survey.supply_v, survey.year)
    return AdcLawValidation(
        quantile=quantile, k=k, seed=seed, n_rows=len(survey), n_papers=len(set(survey.paper)),
        cv_median_abs_log10_error=float(np.median(np.abs(residual))),
        cv_p90_abs_log10_error=float(np.quantile(np.abs(residual), 0.9)),
        cv_fraction_below=float(np.mean(residual < 0)),
        fit_median_abs_log10_error=float(np.median(np.abs(in_sample))), per_fold=per_fold,
    )


# ----------------------------------------------------------------------------- shipped laws

def save_adc_laws(path: str | os.PathLike[str], survey: AdcSurvey | None = None, k: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit the ``median`` and ``frontier`` laws on ``survey`` (default: the shipped file), with
    their cross-validated errors, and write them as JSON (how ``adc_law_constants.json`` is made)."""
    from cimflow.fileio import write_json

    survey = survey or read_adc_survey()
    payload: dict[str, Any] = {"laws": {}, "provenance": {
        "fitted_on": "adc_survey.csv (Nyquist converters)", "sha256": survey.sha256, "n_rows": len(survey),
        "python": "from cimflow.cost.adc_law import save_adc_laws; save_adc_laws('adc_law_constants.json')",
        "reference": "B. Murmann, ADC Performance Survey 1997-2025, github.com/bmurmann/ADC-survey (BSD 3-clause)",
    }}
    for name, quantile in ADC_LAW_QUANTILES.items():
        law = fit_adc_law(survey, quantile)
        entry = {key: value for key, value in law.to_dict().items() if key != "provenance"}
        entry["cross_validation"] = cross_validate_adc_law(survey, quantile, k, seed).to_dict()
        payload["laws"][name] = entry
    write_json(path, payload, "ADC law constants")
    return payload


@functools.cache
def _shipped_payload() -> dict[str, Any]:
    text = read_text_bounded(ADC_LAW_CONSTANTS, 1 << 20, "ADC law constants")
    data: dict[str, Any] = json.loads(text)
    return data


def load_adc_law(name: str = "median") -> AdcLaw:
    """A shipped law: ``"median"`` or ``"frontier"``."""
    laws = _shipped_payload()["laws"]
    if name not in laws:
        raise CimflowError(f"unknown ADC law {name!r}; known: {', '.join(laws)}")
    entry = dict(laws[name])
    validation = entry.pop("cross_validation", {})
    return AdcLaw(**entry, provenance={"cross_validation": validation, **_shipped_payload()["provenance"]})


__all__ = [
    "ADC_ENOB_LOSS_BITS", "ADC_LAW_CONSTANTS", "ADC_LAW_QUANTILES", "ADC_REFERENCE_YEAR", "ADC_SCHREIER_FOM_DB", "SHIPPED_ADC_CSV",
    "AdcLaw",
    "AdcLawValidation", "AdcSurvey", "adc_thermal_energy_j", "cross_validate_adc_law", "fit_adc_law", "load_adc_law",
    "read_adc_survey", "save_adc_laws",
]
