"""cimflow.cost.adc_law: the ADC energy law fitted to the ADC survey, its held-out error, the
shipped constants, and the reader of survey files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimflow.cost.adc_law import (
    ADC_LAW_QUANTILES,
    ADC_SCHREIER_FOM_DB,
    SHIPPED_ADC_CSV,
    AdcLaw,
    AdcSurvey,
    cross_validate_adc_law,
    fit_adc_law,
    load_adc_law,
    read_adc_survey,
)
from cimflow.errors import CimflowError, DataError

HEADER = "venue,year,id,type,architecture,technology,vsup1_V,sndr_plot_dB,p_W,fsnyq_Hz"


@pytest.fixture(scope="module")
def survey() -> AdcSurvey:
    return read_adc_survey()


def by_hand(law: AdcLaw, enob: float, fs: float, node: float, supply: float | None, year: int) -> float:
    """The module docstring's formula, written out."""
    v_typ = 10 ** (law.supply_intercept + law.supply_slope * math.log10(node / 28e-9))
    supply_ratio = 1.0 if supply is None else supply / v_typ
    walden = (10**law.log10_walden_j * 2 ** (law.enob_exponent * enob) * (node / 28e-9) ** law.node_exponent
              * supply_ratio**law.supply_exponent * (1 + fs / 10**law.log10_corner_hz)
              * 10 ** (law.year_slope_per_decade * (year - 2020) / 10))
    return walden + 0.5 * 10 ** ((6.02 * enob + 1.76 - ADC_SCHREIER_FOM_DB) / 10)


# ---------------------------------------------------------------- the data
def test_shipped_survey_is_read_with_its_licence(survey: AdcSurvey):
    assert len(survey) == 421  # the Nyquist converters of 725 with a node in um, SNDR, power and rate
    assert survey.skipped == {"not a Nyquist converter": 300, "no node in um, SNDR, power, rate or year": 4}
    assert np.all(survey.energy_j > 0) and np.all(np.isfinite(survey.energy_j))
    assert np.all((survey.year >= 1997) & (survey.year <= 2025))
    assert 0.4 < np.isfinite(survey.supply_v).mean() < 0.7  # about half the rows give no supply
    licence = SHIPPED_ADC_CSV.with_name("adc_survey.LICENSE").read_text()
    assert "BSD" in licence and "Murmann" in licence
    everything = read_adc_survey(nyquist_only=False)
    assert len(everything) == 725 - 4 - 3  # 4 without a node in um, 3 more among the oversampled ones


def test_survey_file_errors_are_one_clear_line(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        read_adc_survey(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("venue,year\nISSCC,2020\n")
    with pytest.raises(DataError, match="missing column"):
        read_adc_survey(bad)
    few = tmp_path / "few.csv"
    few.write_text(HEADER + "\n" + "ISSCC,2020,1.1,NQ,SAR,0.028,0.9,50,1e-3,1e8\n" * 5)
    with pytest.raises(DataError, match="only 5 usable"):
        read_adc_survey(few)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.lists(st.one_of(st.text(max_size=6), st.floats(allow_nan=True, allow_infinity=True).map(str),
                                         st.sampled_from(["NQ", "0.028", "-1", "0", "1e400", "BiCMOS"])),
                               min_size=10, max_size=10), min_size=0, max_size=30))
def test_any_survey_text_is_read_or_refused(tmp_path: Path, cells: list[list[str]]):
    path = tmp_path / "fuzz.csv"
    path.write_text(HEADER + "\n" + "\n".join(",".join(c.replace(",", ";").replace("\n", " ").replace("\r", " ")
                                                         .replace('"', "'") for c in row) for row in cells) + "\n")
    try:
        data = read_adc_survey(path, nyquist_only=False)
    except DataError:
        return
    for values in (data.enob, data.sample_rate_hz, data.node_m, data.energy_j):
        assert np.all(np.isfinite(values))
    assert np.all(data.energy_j > 0) and np.all(data.node_m > 0)


# ---------------------------------------------------------------- the law
def test_law_is_the_documented_closed_form():
    law = load_adc_law("median")
    for enob, fs, node, supply, year in [(4, 1e6, 28e-9, 0.9, 2020), (7.5, 2e9, 14e-9, None, 2015), (12, 1e5, 130e-9, 1.8, 2005),
                                         (20, 1e3, 65e-9, 1.2, 2024)]:
        assert law.energy_j(enob, fs, node, supply, year) == pytest.approx(by_hand(law, enob, fs, node, supply, year), rel=1e-9)


def test_law_moves_with_each_parameter_as_physics_says():
    law = load_adc_law("median")
    base = law.energy_j(6, 1e7, 28e-9, 0.9)
    assert law.energy_j(7, 1e7, 28e-9, 0.9) > base  # more effective bits cost more
    assert law.energy_j(6, 1e7, 65e-9, 0.9) > base  # a bigger node costs more
    assert law.energy_j(6, 1e7, 28e-9, 1.2) > base  # a higher supply costs more
    assert law.energy_j(6, 1e10, 28e-9, 0.9) > 2 * base  # far above the speed corner: energy grows with the rate
    assert law.energy_j(6, 1e7, 28e-9, 0.9, year=2005) > base  # older designs spent more
    # the thermal floor: at high resolution each bit costs 4x
    assert law.energy_j(25, 1e3, 28e-9, 0.9) / law.energy_j(24, 1e3, 28e-9, 0.9) == pytest.approx(4.0, rel=0.05)
    # the fitted exponents are physical: ~2x per bit (Walden), supply ~V^2 (C V^2), progress over the years
    assert 0.8 <= law.enob_exponent <= 1.5
    assert 1.0 <= law.supply_exponent <= 3.0
    assert law.year_slope_per_decade < 0 and law.node_exponent > 0
    frontier = load_adc_law("frontier")
    assert frontier.energy_j(6, 1e7, 28e-9, 0.9) < base


@pytest.mark.parametrize("args", [(-1, 1e6, 28e-9), (40, 1e6, 28e-9), (6, 0.0, 28e-9), (6, 1e6, -1.0), (6, 1e6, math.nan)])
def test_law_refuses_unphysical_inputs(args):
    with pytest.raises(CimflowError, match="ADC law"):
        load_adc_law().energy_j(*args)
    with pytest.raises(CimflowError, match="year"):
        load_adc_law().energy_j(6, 1e6, 28e-9, 0.9, year=2040)
    with pytest.raises(CimflowError, match="unknown ADC law"):
        load_adc_law("best")


def test_fit_recovers_a_known_law():
    """Converters drawn from a known law with lognormal scatter (0.3 dex): the median fit gives the
    law back within the precision 400 rows allow."""
    rng = np.random.default_rng(1)
    n = 400
    truth = AdcLaw(quantile=0.5, log10_walden_j=-14.5, enob_exponent=1.0, node_exponent=0.8, supply_exponent=2.0,
                   log10_corner_hz=8.5, year_slope_per_decade=-1.0, supply_intercept=0.0, supply_slope=0.25)
    enob = rng.uniform(4, 14, n)
    fs = 10 ** rng.uniform(4, 10, n)
    node = 10 ** rng.uniform(math.log10(7e-9), math.log10(350e-9), n)
    supply = np.where(rng.random(n) < 0.5, math.nan, 10 ** (0.25 * np.log10(node / 28e-9) + rng.normal(0, 0.08, n)))
    year = rng.integers(1997, 2026, n).astype(float)
    energy = 10 ** (truth.log10_energy_j(enob, fs, node, supply, year) + rng.normal(0, 0.3, n))
    data = AdcSurvey(enob=enob, sample_rate_hz=fs, node_m=node, supply_v=supply, energy_j=energy, year=year,
                     paper=tuple(str(i) for i in range(n)), skipped={}, sha256="synthetic")
    law = fit_adc_law(data, 0.5)
    assert law.enob_exponent == pytest.approx(1.0, abs=0.08)
    assert law.node_exponent == pytest.approx(0.8, abs=0.15)
    assert law.supply_exponent == pytest.approx(2.0, abs=0.8)
    assert law.year_slope_per_decade == pytest.approx(-1.0, abs=0.2)
    grid = (np.array([5.0, 8, 11]), np.array([1e5, 1e7, 1e9]), np.array([28e-9, 65e-9, 14e-9]), None, np.array([2010.0, 2020, 2015]))
    assert np.max(np.abs(law.log10_energy_j(*grid) - truth.log10_energy_j(*grid))) < 0.12


# ---------------------------------------------------------------- held out and shipped
@pytest.fixture(scope="module")
def median_cv(survey: AdcSurvey):
    return cross_validate_adc_law(survey, 0.5, k=5, seed=0)


def test_held_out_error_of_the_median_law(median_cv):
    """Converters held out of the fit (5 folds by paper): median |log10 error| 0.31 (a factor 2.0),
    90th percentile 0.88 (a factor 7.6) when this was written; a median law leaves half below."""
    assert median_cv.n_rows == 421 and median_cv.k == 5
    assert median_cv.cv_median_abs_log10_error <= 0.36
    assert median_cv.cv_p90_abs_log10_error <= 1.0
    # 421 rows: the fraction below a true median has a standard deviation of 0.024
    assert abs(median_cv.cv_fraction_below - 0.5) <= 0.075
    assert median_cv.fit_median_abs_log10_error <= median_cv.cv_median_abs_log10_error + 0.02


@pytest.mark.slow
def test_frontier_law_leaves_a_tenth_of_held_out_converters_below(survey: AdcSurvey):
    cv = cross_validate_adc_law(survey, ADC_LAW_QUANTILES["frontier"], k=5, seed=0)
    assert abs(cv.cv_fraction_below - 0.1) <= 0.05  # sd of a 0.1 fraction over 421 rows: 0.015


def test_shipped_constants_are_the_fit_of_the_shipped_survey(survey: AdcSurvey, median_cv):
    shipped = load_adc_law("median")
    assert shipped.provenance["sha256"] == hashlib.sha256(SHIPPED_ADC_CSV.read_bytes()).hexdigest()
    refit = fit_adc_law(survey, 0.5)
    grid = (survey.enob, survey.sample_rate_hz, survey.node_m, survey.supply_v, survey.year)
    assert np.max(np.abs(refit.log10_energy_j(*grid) - shipped.log10_energy_j(*grid))) < 1e-3
    recorded = shipped.provenance["cross_validation"]
    assert recorded["cv_median_abs_log10_error"] == pytest.approx(median_cv.cv_median_abs_log10_error, abs=1e-3)
    assert recorded["cv_p90_abs_log10_error"] == pytest.approx(median_cv.cv_p90_abs_log10_error, abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(law=st.one_of(st.sampled_from(["median", "frontier", "Median", "", "best"]), st.integers(), st.none(), st.just(["median"])),
       year=st.one_of(st.integers(1900, 2100), st.floats(), st.booleans(), st.text(max_size=4)))
def test_cost_options_adc_fields_are_accepted_or_refused_in_one_line(law, year):
    from cimflow.cost.estimate import CostOptions

    try:
        options = CostOptions(adc_law=law, adc_year=year)
    except CimflowError as err:
        assert "CostOptions.adc_" in str(err) and "\n" not in str(err)
        return
    assert options.adc_law in ADC_LAW_QUANTILES and isinstance(options.adc_year, int) and 1997 <= options.adc_year <= 2025
    energy = load_adc_law(options.adc_law).energy_j(6.0, 1e7, 28e-9, 0.9, options.adc_year)
    assert math.isfinite(energy) and energy > 0


def test_cli_validate_adc(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import json

    from typer.testing import CliRunner

    from cimflow.cli import app, main

    out = tmp_path / "adc.json"
    result = CliRunner().invoke(app, ["validate", "adc", "--k", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) == set(ADC_LAW_QUANTILES) and data["median"]["k"] == 2
    assert 0 < data["median"]["cv_median_abs_log10_error"] < data["median"]["cv_p90_abs_log10_error"]
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "adc", "--k", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "k must be an integer" in err[0]
