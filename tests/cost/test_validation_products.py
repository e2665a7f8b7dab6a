"""Product rows of issue 13's presets: every row a prediction (or marked derived), closed forms
for the PIM formulas, and the selection by name."""

from __future__ import annotations

import math

import pytest

from cimflow.chip import load_preset
from cimflow.cost.validation import TOLERANCE, summarize
from cimflow.cost.validation_products import (
    product_benchmarks,
    product_formulas,
    product_names,
    validate_all,
    validate_products,
)
from cimflow.errors import CimflowError


@pytest.fixture(scope="module")
def rows():
    return {(r.chip, r.metric): r for r in validate_products()}


def test_one_row_per_reported_figure_and_formula(rows):
    expected = {(b.name, f.metric) for b in product_benchmarks() for f in b.reported}
    expected |= {(f.name, f.metric) for f in product_formulas()}
    assert set(rows) == expected
    for row in rows.values():
        assert math.isfinite(row.predicted) and row.predicted > 0
        assert row.error == pytest.approx(row.predicted / row.reported - 1.0, rel=1e-12)
        assert row.within_tolerance == (abs(row.error) <= TOLERANCE)


def test_efficiency_rows_are_predictions_and_only_sized_figures_are_derived(rows):
    for (chip, metric), row in rows.items():
        if metric in ("tops_w", "tops_mm2", "peak_tflops", "bank_to_interface_bandwidth"):
            assert not row.derived, (chip, metric)
        if row.derived:
            assert metric == "tops" and row.derived_parameters  # array counts sized to the peak: says so
            assert abs(row.error) < 0.05  # sized to it, up to whole arrays


def test_pim_formulas_follow_the_preset_design_parameters(rows):
    pim = load_preset("hbm-pim-recsys").pim
    per_stack_units = pim.units // 4
    peak = rows["hbm-pim (Aquabolt-XL, per stack)", "peak_tflops"]
    assert peak.predicted == pytest.approx(2 * per_stack_units * pim.lanes * pim.clock_hz / 1e12)
    ratio = rows["hbm-pim (Aquabolt-XL, per stack)", "bank_to_interface_bandwidth"]
    assert ratio.predicted == pytest.approx(per_stack_units * pim.access_bytes * pim.clock_hz / (pim.bandwidth_bytes_per_s / 4))
    # 128 PCUs x 16 lanes x 2 x 300 MHz = 1.2288 TFLOPS against the published 1.2
    assert peak.predicted == pytest.approx(1.2288)


def test_summary_counts_product_predictions(rows):
    summary = summarize(rows.values())
    predicted = [abs(r.error) for r in rows.values() if not r.derived]
    assert summary["predicted"]["n"] == len(predicted)
    assert summary["predicted"]["max_abs_error"] == pytest.approx(max(predicted))


def test_selection_by_name_and_preset():
    assert {r.preset for r in validate_products(["hbm-pim-recsys"])} == {"hbm-pim-recsys"}
    names = product_names()
    assert {"encharge-en100", "digital-sram-cim-soc", "hbm-pim-recsys"} <= names
    mixed = validate_all(["hbm-pim-recsys", "validation/ibm-hermes"])
    assert {r.preset for r in mixed} == {"hbm-pim-recsys", "validation/ibm-hermes"}
    with pytest.raises(CimflowError, match="unknown chip benchmark"):
        validate_all(["no-such-chip"])
