"""``cimflow validate ...``: the cost model against published silicon (macros, chips, the ADC
law, calibration of the macro model). Registered on the ``cimflow`` app by :mod:`cimflow.cli`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cimflow.cli_common import MAX_FOLDS, MAX_SEED, _check_outputs, _check_range, _write_json, console

validate_app = typer.Typer(help=(
    "Validate the cost model against published silicon.\n\nExample: cimflow validate chips; cimflow validate macros --out results.json"))


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f} %"


@validate_app.command("macros")
def validate_macros_cmd(
    csv: Path | None = typer.Argument(
        None, help="a CSV in the schema of imc_macros.csv (default: the published-macro file shipped with cimflow)"),
    out: Path | None = typer.Option(None, "--out", help="write the summary and per-row results as JSON"),
) -> None:
    """Predict TOPS/W and TOPS/mm2 (1-bit normalized) of every macro from its design parameters alone.

    Example: cimflow validate macros --out results.json; cimflow validate macros my_macros.csv
    """
    from cimflow.cost.macros import SHIPPED_MACROS_CSV, validate_macros

    csv = csv if csv is not None else SHIPPED_MACROS_CSV
    _check_outputs(out=out)
    result = validate_macros(csv)
    table = Table(title=f"macro validation: {csv.name} ({result.n_rows} rows, {result.n_skipped} skipped for TOPS/W)")
    for col in ("index", "title", "pred TOPS/W", "reported", "pred TOPS/mm2", "reported "):
        table.add_column(col, justify="left" if col in ("index", "title") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for row in result.rows:
        table.add_row(str(row["index"]), str(row.get("title", ""))[:48], fmt(row["predicted_tops_w"]), fmt(row["reported_tops_w"]),
                      fmt(row["predicted_tops_mm2"]), fmt(row["reported_tops_mm2"]))
    console.print(table)
    console.print(f"TOPS/W: median abs error {_pct(result.median_abs_err_tops_w)}, p90 {_pct(result.p90_abs_err_tops_w)} "
                  f"over {result.n_scored_tops_w} rows; "
                  f"TOPS/mm2: median {_pct(result.median_abs_err_tops_mm2)}, p90 {_pct(result.p90_abs_err_tops_mm2)} "
                  f"over {result.n_scored_tops_mm2} rows")
    if out is not None:
        _write_json(out, result.to_json())
        console.print(f"wrote {out}")


@validate_app.command("chips")
def validate_chips_cmd(
    chip: list[str] = typer.Option(
        [], "--chip", help="only this benchmark (e.g. neurram@4b/6b) or validation preset (e.g. validation/neurram); repeatable"),
    out: Path | None = typer.Option(None, "--out", help="write every row and the summary as JSON"),
) -> None:
    """Reproduce the published figures of CIM chips (TOPS/W, TOPS/mm2, ...) through compile + estimate.

    Each chip's validation preset runs its paper's benchmark; one row per operating point and
    metric. 'derived' marks a figure a preset parameter was computed from (shown, not counted
    towards the tolerance); 'predicted' one that no parameter was derived from. --out writes
    the rows (chip, metric, predicted, reported, derived, error, ...) and the summary as JSON.

    Example: cimflow validate chips --out chips.json; cimflow validate chips --chip validation/neurram
    """
    from cimflow.cost.validation import TOLERANCE, summarize
    from cimflow.cost.validation_products import validate_all

    _check_outputs(out=out)
    rows = validate_all(chip or None)  # the reference table's chips and the product presets (HBM-PIM, EN100, Metis class)
    table = Table(title=f"chip validation: {len(rows)} figures of {len({r.chip for r in rows})} chips / operating points "
                        f"(target for predictions: within {TOLERANCE:.0%})")
    for col in ("chip", "metric", "basis", "reported", "predicted", "error", "within"):
        table.add_column(col, justify="left" if col in ("chip", "metric", "basis") else "right")
    for row in rows:
        table.add_row(row.chip, f"{row.metric} [{row.unit}]", row.basis, f"{row.reported:.4g}", f"{row.predicted:.4g}",
                      f"{100 * row.error:+.1f} %", "(derived)" if row.derived else ("yes" if row.within_tolerance else "NO"))
    console.print(table)
    summary = summarize(rows)
    predicted, derived = summary["predicted"], summary["derived"]
    console.print(f"predicted: {predicted['within_tolerance']} of {predicted['n']} within {TOLERANCE:.0%}, median |error| "
                  f"{_pct(predicted['median_abs_error'])}, max {_pct(predicted['max_abs_error'])}; derived (by construction, "
                  f"not counted): {derived['n']} rows, max {_pct(derived['max_abs_error'])}")
    if out is not None:
        _write_json(out, {"summary": summary, "rows": [r.to_dict() for r in rows]})
        console.print(f"wrote {out}")


@validate_app.command("adc")
def validate_adc_cmd(
    k: int = typer.Option(5, "--k", help="folds of the cross-validation (grouped by paper), 2 to the number of papers"),
    seed: int = typer.Option(0, "--seed", help="seed of the fold assignment"),
    out: Path | None = typer.Option(None, "--out", help="write the held-out errors of both laws as JSON"),
) -> None:
    """Error of the ADC energy law on converters of the ADC survey held out of its fit.

    Fits the median and frontier laws of cimflow.cost.adc_law on all folds but one and scores
    the converters of the papers left out: |log10(predicted / reported)|, 0.3 = a factor 2.

    Example: cimflow validate adc; cimflow validate adc --k 10 --out adc.json
    """
    from cimflow.cost.adc_law import ADC_LAW_QUANTILES, cross_validate_adc_law, read_adc_survey

    _check_outputs(out=out)
    survey = read_adc_survey()
    results = {name: cross_validate_adc_law(survey, q, k=k, seed=seed) for name, q in ADC_LAW_QUANTILES.items()}
    table = Table(title=f"ADC law: {len(survey)} Nyquist converters, {k} folds by paper (|log10 error|; 0.3 = x2)")
    for col in ("law", "held-out median", "held-out p90", "held-out below the law", "in-sample median"):
        table.add_column(col, justify="left" if col == "law" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r.cv_median_abs_log10_error:.3f}", f"{r.cv_p90_abs_log10_error:.3f}", _pct(r.cv_fraction_below),
                      f"{r.fit_median_abs_log10_error:.3f}")
    console.print(table)
    if out is not None:
        _write_json(out, {name: r.to_dict() for name, r in results.items()})
        console.print(f"wrote {out}")


@validate_app.command("calibrate")
def validate_calibrate_cmd(
    csv: Path | None = typer.Argument(
        None, help="a CSV in the schema of imc_macros.csv (default: the published-macro file shipped with cimflow)"),
    k: int = typer.Option(5, "--k", help=f"folds (grouped by paper), 2 to {MAX_FOLDS}"),
    seed: int = typer.Option(0, "--seed"),
    save: Path | None = typer.Option(
        None, "--save", help="write the fitted constants (JSON) here; the shipped ones are src/cimflow/cost/macro_constants.json"),
    out: Path | None = typer.Option(None, "--out", help="write the calibration result as JSON"),
) -> None:
    """Fit the macro model's constants and report k-fold cross-validated error.

    Example: cimflow validate calibrate --k 5 --seed 0 --save my_constants.json; cimflow validate calibrate my_macros.csv
    """
    from cimflow.cost.macros import SHIPPED_MACROS_CSV, calibrate, save_constants

    csv = csv if csv is not None else SHIPPED_MACROS_CSV
    _check_range("--k", k, 2, MAX_FOLDS)
    _check_range("--seed", seed, 0, MAX_SEED)
    _check_outputs(save=save, out=out)
    result = calibrate(csv, k=k, seed=seed)
    table = Table(
        title=f"calibration on {csv.name}: {len(result.constants.values())} constants, {k}-fold CV grouped by paper (seed {seed})")
    table.add_column("metric")
    table.add_column("held-out median", justify="right")
    table.add_column("held-out p90", justify="right")
    table.add_column("in-sample median", justify="right")
    table.add_row("TOPS/W", _pct(result.cv_median_abs_err_tops_w), _pct(result.cv_p90_abs_err_tops_w),
                  _pct(result.fit_median_abs_err_tops_w))
    table.add_row("TOPS/mm2", _pct(result.cv_median_abs_err_tops_mm2), _pct(result.cv_p90_abs_err_tops_mm2),
                  _pct(result.fit_median_abs_err_tops_mm2))
    console.print(table)
    for name, value in result.constants.values().items():
        console.print(f"  {name} = {value:.6g}")
    if save is not None:
        save_constants(result.constants, save)
        console.print(f"wrote constants to {save}")
    if out is not None:
        _write_json(out, result.to_json())
        console.print(f"wrote {out}")
