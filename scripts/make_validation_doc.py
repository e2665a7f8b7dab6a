"""Generate docs/validation.md from the validation commands' results.

Runs, in one process:

* :func:`cimflow.cost.validation.validate_chips` (``cimflow validate chips``): published chips
  through the plan-level cost model (compile + estimate);
* :func:`cimflow.cost.macros.validate_macros` (``cimflow validate macros [CSV]``): the macro-level
  model with the shipped constants on every row of the macro file;
* :func:`cimflow.cost.macros.calibrate` (``cimflow validate calibrate [CSV]``): the macro model's
  k-fold cross-validated error (folds grouped by paper);
* :func:`cimflow.cost.adc_law.cross_validate_adc_law`: the ADC energy law's error on converters
  of the ADC survey held out of its fit;

and writes the tables and summary errors as Markdown. Usage (from the repository root)::

    .venv/bin/python scripts/make_validation_doc.py [CSV] [--out docs/validation.md] [--k 5] [--seed 0]

CSV defaults to the macro file shipped with cimflow (src/cimflow/cost/data/imc_macros.csv).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cimflow.cost.adc_law import ADC_LAW_QUANTILES, AdcLawValidation, cross_validate_adc_law, load_adc_law, read_adc_survey
from cimflow.cost.macros import (
    SHIPPED_MACROS_CSV,
    CalibrationResult,
    MacroValidation,
    calibrate,
    validate_macros,
)
from cimflow.cost.validation import (
    DERIVED,
    PREDICTED,
    TOLERANCE,
    ValidationRow,
    chip_benchmarks,
    summarize,
    validate_chips,
)
from cimflow.fileio import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = SHIPPED_MACROS_CSV
DEFAULT_OUT = REPO_ROOT / "docs" / "validation.md"


# ----------------------------------------------------------------------------- formatting

def number(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, '-' for None or non-finite."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def signed_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} %"


def percent(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


def cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """A Markdown table; ``align`` per column is 'l' or 'r'."""
    align = align or ["l"] * len(header)
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


# ----------------------------------------------------------------------------- sections

def chips_section(rows: list[ValidationRow]) -> list[str]:
    summary = summarize(rows)
    benchmarks = {b.name: b for b in chip_benchmarks()}
    out = [
        "## 1. Published chips through the plan-level model (`cimflow validate chips`)",
        "",
        "Each published chip has a validation preset "
        "(`src/cimflow/chip/presets/validation/*.yaml`, loaded as `validation/<name>`) whose numbers are paper "
        "facts, documented assumptions, or parameters derived from a reported figure (each preset's header and "
        "`assumptions` say which). The measurement is the paper's benchmark condition (for a macro: one full-array MVM "
        "per array at the stated precision, every row of a read driven, `nn.Linear(rows, weight columns, bias=False)`, "
        "two input vectors per array so the compiler replicates the layer into every array), compiled with "
        "`cimflow.compile.pipeline.compile_model` and estimated with `cimflow.cost.estimate.estimate` (fixed per-op "
        "activity). TOPS/W = 2 x MACs / energy and TOPS/mm^2 = 2 x MACs / latency / chip area, one MAC = two "
        "operations at the stated input and weight precision, as the papers count them. Operating points override only "
        "the fields named in `cimflow.cost.validation`. One row per operating point and metric "
        "(`cimflow validate chips --out FILE.json` writes the same rows).",
        "",
        "**basis**: `derived` = a preset parameter was computed from this very figure (agreement by construction: "
        "it checks the event counting and the normalization, not the energy or area model; shown, **not counted**); "
        "`predicted` = no parameter was derived from this figure. Errors are predicted / reported - 1.",
        "",
    ]
    out += table(
        ["chip", "metric", "basis", "reported", "predicted", "error", f"within {TOLERANCE:.0%}"],
        [[r.chip, f"{r.metric} [{r.unit}]", r.basis, number(r.reported), number(r.predicted), signed_percent(r.error),
          "(derived)" if r.derived else ("yes" if r.within_tolerance else "NO")] for r in rows],
        ["l", "l", "l", "r", "r", "r", "l"],
    )
    predicted, derived = summary["predicted"], summary["derived"]
    out += [
        "",
        f"**Summary.** {summary['rows']} figures of {summary['chips']} chips / operating points. *Predicted*: "
        f"{predicted['n']} rows, {predicted['within_tolerance']} within {TOLERANCE:.0%}, median |error| "
        f"{percent(predicted['median_abs_error'])}, max {percent(predicted['max_abs_error'])}. *Derived* (by "
        f"construction, not counted): {derived['n']} rows, max |error| {percent(derived['max_abs_error'])}.",
        "",
    ]
    out += table(
        ["metric", "predicted rows", "median |error|", "max |error|", "derived rows"],
        [[metric, s[PREDICTED]["n"], percent(s[PREDICTED]["median_abs_error"]), percent(s[PREDICTED]["max_abs_error"]),
          s[DERIVED]["n"]] for metric, s in summary["by_metric"].items()],
        ["l", "r", "r", "r", "r"],
    )
    out += ["", "### What was derived and what was predicted", ""]
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for name, benchmark in benchmarks.items():
        if any(r.chip == name for r in rows):
            groups.setdefault((benchmark.preset, benchmark.derived_parameters), []).append(name)
    for (preset, derived_parameters), members in groups.items():
        out.append(f"* **{', '.join(members)}** (`{preset}`; workload {benchmarks[members[0]].workload.describe()}).")
        out += [f"  * derived from a reported figure: {p}" for p in derived_parameters]
        for name in members:
            b = benchmarks[name]
            label = f"{name}: " if len(members) > 1 else ""
            bases = ", ".join(f"{f.metric} {f.basis}" for f in b.reported)
            out.append(f"  * {label}{bases}; reported: {b.reported_source}; {b.notes}")
    out.append("")
    return out


def macros_section(result: MacroValidation, csv: Path) -> list[str]:
    out = [
        f"## 2. Macro-level model on `{csv.name}` (`cimflow validate macros`)",
        "",
        "`cimflow.cost.macros.predict_macro` predicts the 1-bit-normalized TOPS/W and TOPS/mm^2 of a macro from its "
        "design parameters alone, with the 11 shipped constants (`src/cimflow/cost/macro_constants.json`, fitted on "
        "this file; see docs/cost_model.md). These are in-sample errors; section 3 gives the held-out ones.",
        "",
    ]
    out += table(
        ["metric", "rows scored", "rows skipped", "median |error|", "p90 |error|"],
        [["TOPS/W (1b)", result.n_scored_tops_w, result.n_skipped, percent(result.median_abs_err_tops_w),
          percent(result.p90_abs_err_tops_w)],
         ["TOPS/mm^2 (1b)", result.n_scored_tops_mm2, result.n_skipped_tops_mm2, percent(result.median_abs_err_tops_mm2),
          percent(result.p90_abs_err_tops_mm2)]],
        ["l", "r", "r", "r", "r"],
    )
    by_class: dict[str, list[float]] = defaultdict(list)
    for row in result.rows:
        if row["abs_err_tops_w"] is not None:
            by_class[row["compute_class"] or "?"].append(row["abs_err_tops_w"])
    out += ["", "By compute class (TOPS/W, in sample):", ""]
    out += table(["class", "rows", "median |error|"],
                 [[k, len(v), percent(statistics.median(v))] for k, v in sorted(by_class.items())], ["l", "r", "r"])
    out += ["", f"Every row of `{csv.name}` (1-bit-normalized values):", ""]
    out += table(
        ["index", "title", "class", "TOPS/W predicted", "reported", "|error|", "TOPS/mm^2 predicted", "reported", "|error|"],
        [[row["index"], str(row.get("title", ""))[:70], row["compute_class"] or "-", number(row["predicted_tops_w"]),
          number(row["reported_tops_w"]), percent(row["abs_err_tops_w"]), number(row["predicted_tops_mm2"]),
          number(row["reported_tops_mm2"]), percent(row["abs_err_tops_mm2"])] for row in result.rows],
        ["l", "l", "l", "r", "r", "r", "r", "r", "r"],
    )
    out.append("")
    return out


def calibration_section(result: CalibrationResult, csv: Path) -> list[str]:
    out = [
        f"## 3. Calibration of the macro model (`cimflow validate calibrate`, k = {result.k}, seed = {result.seed})",
        "",
        "Constants fitted on the whole file; errors of rows held out of each fit (folds grouped by paper), and in "
        "sample.",
        "",
    ]
    out += table(
        ["metric", "rows", "held-out median", "held-out p90", "in-sample median"],
        [["TOPS/W (1b)", result.n_rows_tops_w, percent(result.cv_median_abs_err_tops_w), percent(result.cv_p90_abs_err_tops_w),
          percent(result.fit_median_abs_err_tops_w)],
         ["TOPS/mm^2 (1b)", result.n_rows_tops_mm2, percent(result.cv_median_abs_err_tops_mm2), percent(result.cv_p90_abs_err_tops_mm2),
          percent(result.fit_median_abs_err_tops_mm2)]],
        ["l", "r", "r", "r", "r"],
    )
    out += ["", "Per fold:", ""]
    out += table(
        ["fold", "test papers", "TOPS/W train / test rows", "held-out median", "TOPS/mm^2 train / test rows", "held-out median"],
        [[f["fold"], len(f["test_papers"]), f"{f['n_train_tops_w']} / {f['n_test_tops_w']}", percent(f["median_abs_err_tops_w"]),
          f"{f['n_train_tops_mm2']} / {f['n_test_tops_mm2']}", percent(f["median_abs_err_tops_mm2"])] for f in result.per_fold],
        ["r", "r", "r", "r", "r", "r"],
    )
    out += ["", "Fitted constants:", ""]
    out += table(["constant", "value"], [[name, f"{value:.6g}"] for name, value in result.constants.values().items()], ["l", "r"])
    out.append("")
    return out


def adc_law_section(results: dict[str, AdcLawValidation]) -> list[str]:
    out = [
        "## 4. The ADC energy law on converters held out of its fit",
        "",
        "`cimflow.cost.adc_law`: energy per Nyquist conversion against effective bits, Nyquist rate, node, supply and "
        "design year, fitted by quantile regression to the Nyquist converters of B. Murmann's ADC Performance Survey "
        "1997-2025 (`src/cimflow/cost/data/adc_survey.csv`, BSD-3). Errors are |log10(predicted / reported)| (0.3 = a "
        "factor 2) on converters of the papers held out of each fold (5 folds grouped by paper, seed 0); a median law "
        "should leave half the held-out converters below it, a 0.1 frontier a tenth. See docs/estimate.md.",
        "",
    ]
    out += table(
        ["law", "quantile", "converters", "held-out median", "held-out p90", "held-out below", "in-sample median"],
        [[name, number(r.quantile, 2), r.n_rows, number(r.cv_median_abs_log10_error, 3), number(r.cv_p90_abs_log10_error, 3),
          percent(r.cv_fraction_below), number(r.fit_median_abs_log10_error, 3)] for name, r in results.items()],
        ["l", "r", "r", "r", "r", "r", "r"],
    )
    out += ["", "Shipped constants (`src/cimflow/cost/adc_law_constants.json`):", ""]
    names = ["log10_walden_j", "enob_exponent", "node_exponent", "supply_exponent", "log10_corner_hz", "year_slope_per_decade"]
    laws = {name: load_adc_law(name) for name in results}
    out += table(["law", *names], [[name, *(f"{getattr(law, n):.4g}" for n in names)] for name, law in laws.items()],
                 ["l"] + ["r"] * len(names))
    out.append("")
    return out


def render(chips: list[ValidationRow], macros: MacroValidation, calibration: CalibrationResult, csv: Path,
           adc: dict[str, AdcLawValidation] | None = None) -> str:
    lines = [
        "# Validation of cimflow's cost model",
        "",
        "<!-- GENERATED by scripts/make_validation_doc.py: do not edit by hand; re-run the script. -->",
        "",
        "Generated by `.venv/bin/python scripts/make_validation_doc.py` from `cimflow validate chips`, "
        f"`cimflow validate macros {csv.name}`, `cimflow validate calibrate {csv.name}` and the ADC law's "
        "cross-validation "
        f"(k = {calibration.k}, seed = {calibration.seed}).",
        "",
    ]
    lines += chips_section(chips)
    lines += macros_section(macros, csv)
    lines += calibration_section(calibration, csv)
    if adc:
        lines += adc_law_section(adc)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/validation.md from the validation commands.")
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV, help=f"macro file (default {DEFAULT_CSV})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown file to write (default {DEFAULT_OUT})")
    parser.add_argument("--k", type=int, default=5, help="folds of the calibration's cross-validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"macro file {args.csv} does not exist; give the path to imc_macros.csv")
    chips = validate_chips()
    macros = validate_macros(args.csv)
    calibration = calibrate(args.csv, k=args.k, seed=args.seed)
    survey = read_adc_survey()
    adc = {name: cross_validate_adc_law(survey, quantile, k=5, seed=0) for name, quantile in ADC_LAW_QUANTILES.items()}
    text = render(chips, macros, calibration, args.csv, adc)
    atomic_write_text(args.out, text, "validation document")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
