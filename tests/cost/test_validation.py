"""Tests of the chip validation: the validation presets load and carry their provenance, and
the plan-level cost model reproduces every published chip of the reference table in docs/architecture.md
(TOPS/W within 20 %, TOPS/mm^2 within 20 % where reported) under its benchmark condition."""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from cimflow.chip import (
    Chip,
    chip_to_yaml,
    load_chip_yaml,
    load_preset,
    preset_names,
    resolve_chip,
)
from cimflow.chip.io import validation_preset_names
from cimflow.cost.components import add_energy_j, mean_cell_conductance
from cimflow.cost.validation import (
    DERIVED,
    METRICS,
    PREDICTED,
    TOLERANCE,
    ChipBenchmark,
    LinearMVM,
    ModelWorkload,
    Reported,
    _predictions_replacing_derived,
    _published_benchmarks,
    benchmark_chip,
    chip_benchmarks,
    compare,
    measure,
    operating_point,
    summarize,
    validate_chips,
)
from cimflow.errors import ChipSpecError, CimflowError

VALIDATION = validation_preset_names()
CITATION = re.compile(r"\[([a-z][a-z0-9_]*)\]")
TOP_LEVEL_FIELDS = ("technology.node_nm", "technology.supply_v", "clock_hz", "cores.count", "cores.arrays", "cores.buffer_bytes")

#: The reference table of docs/architecture.md: benchmark -> (TOPS/W, TOPS/mm^2 or None) as printed there.
DESIGN_TABLE = {
    "neurram@1b/3b": (43.1, None),
    "neurram@8b/10b": (6.4, None),
    "ibm-hermes": (9.76, 1.55),
    "ibm-speech": (12.4, None),
    "tsmc-dcim-22nm": (89.0, 16.3),
    "tsmc-dcim-5nm@0.5V": (254.0, None),
    "tsinghua-reram-2020": (78.4, None),
    "tsinghua-rram-576k": (35.6, 2.82),
}


@pytest.fixture(scope="module")
def rows():
    return {(row.chip, row.metric): row for row in validate_chips()}


def sourced_blocks(model: BaseModel, path: str = "") -> Iterator[tuple[str, BaseModel]]:
    if "source" in type(model).model_fields:
        yield path or "(chip)", model
    for name in type(model).model_fields:
        value = getattr(model, name)
        for key, child in (value.items() if isinstance(value, dict) else [(None, value)]):
            if isinstance(child, BaseModel):
                child_path = f"{path}.{name}" if path else name
                yield from sourced_blocks(child, f"{child_path}.{key}" if key is not None else child_path)


# ---------------------------------------------------------------- the presets
def test_validation_presets_are_separate_from_ordinary_presets():
    assert len(VALIDATION) >= 7
    assert all(name.startswith("validation/") for name in VALIDATION)
    assert not set(VALIDATION) & set(preset_names())
    assert not any("/" in name for name in preset_names())


@pytest.mark.parametrize("name", VALIDATION)
def test_validation_preset_loads_and_round_trips(name: str):
    chip = resolve_chip(name)
    assert isinstance(chip, Chip) and chip.name == name.split("/", 1)[1]
    assert load_preset(name) == chip
    again = load_chip_yaml(chip_to_yaml(chip), origin=f"round-trip:{name}")
    assert again == chip


def test_unknown_validation_preset_is_refused_with_the_list():
    with pytest.raises(ChipSpecError, match="validation/neurram"):
        resolve_chip("validation/no-such-chip")


@pytest.mark.parametrize("name", VALIDATION)
def test_validation_preset_provenance(name: str):
    chip = load_preset(name)
    texts = [chip.description, *chip.assumptions, *chip.sources.values()]
    for path, block in sourced_blocks(chip):
        if path != "(chip)" and (block.model_fields_set - {"source"}):
            assert (block.source or "").strip(), f"{name}: {path} sets numbers but has no source"
        if block.source:
            texts.append(block.source)
            assert CITATION.search(block.source) or block.source.lower().startswith(("assumption", "derived")), (
                f"{name}: {path}.source neither cites a [key] nor says assumption/derived: {block.source!r}")
    cited = {key for text in texts for key in CITATION.findall(text)}
    assert cited <= set(chip.sources), f"{name}: cites unknown keys {sorted(cited - set(chip.sources))}"
    for key, text in chip.sources.items():
        assert any(f"[{key}]" in other for other in texts if other != text), f"{name}: sources.{key} is never cited"
    for field in TOP_LEVEL_FIELDS:
        assert any(field in entry for entry in chip.assumptions), f"{name}: no assumptions entry names {field}"
    # every preset says what was derived from reported figures
    assert any(entry.startswith("Derived from") for entry in chip.assumptions), f"{name}: no 'Derived from ...' entry"


@pytest.mark.parametrize("name", VALIDATION)
def test_validation_presets_are_physically_plausible(name: str):
    chip = load_preset(name)
    assert chip.buffer is None  # published figures cover the arrays / cores, not an activation buffer
    for kind, spec in chip.arrays.items():
        assert spec.read.area_per_cell_um2 is not None and spec.read.area_per_cell_um2 > 0
        if spec.kind == "analog":
            conversion = spec.adc.conversion
            assert 0.1 <= conversion.energy_pj <= 100.0, f"{name}: {kind} conversion {conversion.energy_pj} pJ"
            assert 0 < spec.input_encoding.dac.energy_pj <= 5.0
            assert 1e-8 <= spec.device.g_max <= 1e-3 and 0 < spec.read.read_voltage <= 1.0
        else:
            # digital CIM: 0.1-10 fJ per 1b x 1b MAC, 5-22 nm macros
            assert 1e-4 <= spec.adder_tree.energy_per_bit_op_pj <= 1e-2
    assert 1e6 <= chip.clock_hz <= 5e9


# ---------------------------------------------------------------- the measurement
def test_every_chip_of_the_design_table_is_validated(rows):
    assert {r.chip for r in rows.values()} == {b.name for b in chip_benchmarks()}
    for name, (tops_w, tops_mm2) in DESIGN_TABLE.items():
        assert rows[name, "tops_w"].reported == pytest.approx(tops_w, rel=0.01), name
        if tops_mm2 is not None:
            assert rows[name, "tops_mm2"].reported == pytest.approx(tops_mm2, rel=0.01), name
    assert rows["tsmc-dcim-5nm@0.9V", "tops_mm2"].reported == 221.0
    assert sum(chip.startswith("neurram@") for chip, metric in rows if metric == "tops_w") >= 3


def test_every_benchmark_runs_on_a_validation_preset():
    for benchmark in chip_benchmarks():
        assert benchmark.preset in VALIDATION
        assert benchmark.reported and all(figure.metric in METRICS for figure in benchmark.reported)
        assert benchmark.derived_parameters, f"{benchmark.name}: say which parameters came from reported figures"


def test_one_row_per_benchmark_and_reported_figure(rows):
    expected = {(b.name, f.metric): f for b in chip_benchmarks() for f in b.reported}
    assert set(rows) == set(expected)
    for key, row in rows.items():
        assert row.reported == expected[key].value and row.derived == expected[key].derived
        assert row.error == pytest.approx(row.predicted / row.reported - 1.0, rel=1e-12)
        assert row.within_tolerance == (abs(row.error) <= TOLERANCE)
        assert row.unit == METRICS[row.metric].unit


REPLACING_DERIVED = {b.name for b in _predictions_replacing_derived(_published_benchmarks())}


@pytest.mark.parametrize("key", [(b.name, f.metric) for b in chip_benchmarks() for f in b.reported
                                 if f.metric in ("tops_w", "tops_mm2") and b.name not in REPLACING_DERIVED],
                         ids=lambda key: "-".join(key))
def test_efficiency_figures_within_20_percent(rows, key):
    row = rows[key]
    assert abs(row.error) <= TOLERANCE, f"{key}: predicted {row.predicted:.4g} vs reported {row.reported:.4g}"
    if row.derived:
        # derived from this figure: agreement by construction, up to the digitization of the source
        assert abs(row.error) < 0.02


def test_every_derived_chip_also_has_a_prediction(rows):
    """Each chip whose figures were derived from its reported numbers gets a row predicted from
    design parameters (bottom-up with the survey ADC law, or across nodes), never back-solved."""
    derived_chips = {chip.split("@")[0] for (chip, _), r in rows.items() if r.derived and not chip.startswith("neurram")}
    predicted_for = {name.split("@")[0] for name in REPLACING_DERIVED}
    assert derived_chips - {"tsmc-dcim-5nm"} <= predicted_for  # the 5 nm macro's reverse would repeat the 22 nm row
    for name in REPLACING_DERIVED:
        assert all(not rows[name, m].derived for (c, m) in rows if c == name)


def test_bottom_up_predictions_miss_in_the_direction_the_models_say(rows):
    """Bottom-up rows lack the periphery that the derived converter energy stood for, so they
    overpredict TOPS/W; C V^2 node scaling alone carries too little of 5 nm's efficiency to
    22 nm (so the 22 nm macro is underpredicted). Measured when written: +148 %, +170 %,
    +729 % and -69 %."""
    for chip in ("ibm-speech", "tsinghua-reram-2020", "tsinghua-rram-576k"):
        row = rows[f"{chip}@survey-adc", "tops_w"]
        assert row.predicted > row.reported and not row.within_tolerance
        # the survey converter is cheaper than the derived remainder it replaces
        assert row.predicted > rows[chip, "tops_w"].predicted
    assert rows["tsmc-dcim-22nm@from-5nm", "tops_w"].error < -0.5


def test_reported_figures_are_checked():
    with pytest.raises(CimflowError, match="unknown metric"):
        Reported("tops_per_banana", 1.0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(CimflowError, match="finite number > 0"):
            Reported("tops_w", bad)
    workload = LinearMVM(8, 8, batch=2)
    with pytest.raises(CimflowError, match="reported twice"):
        ChipBenchmark("x", "validation/neurram", workload, (Reported("tops_w", 1.0), Reported("tops_w", 2.0)), ("none",), "")
    with pytest.raises(CimflowError, match="at least one"):
        ChipBenchmark("x", "validation/neurram", workload, (), ("none",), "")


def test_a_model_workload_and_any_metric_make_rows():
    """A benchmark with a model of its own and metrics other than TOPS/W (power, energy per inference)."""
    import torch
    from torch import nn

    def factory():
        return nn.Sequential(nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False)), torch.zeros(4, 64)

    benchmark = ChipBenchmark(
        "toy", "validation/neurram", ModelWorkload("two-layer MLP x 4", 4, factory),
        (Reported("power_w", 1e-3), Reported("energy_per_inference_j", 1e-9, derived=True), Reported("area_mm2", 1.0)),
        ("nothing",), "test")
    report = measure(benchmark)
    got = {r.metric: r for r in compare(benchmark, report)}
    assert got["power_w"].predicted == pytest.approx(report.power_w, rel=1e-12)
    assert got["energy_per_inference_j"].predicted == pytest.approx(report.energy_j, rel=1e-12)
    assert got["energy_per_inference_j"].derived and not got["power_w"].derived
    assert got["area_mm2"].predicted == pytest.approx(report.area_mm2, rel=1e-12)
    assert got["power_w"].workload == "two-layer MLP x 4"


def test_neurram_energy_matches_the_closed_form_from_the_preset(rows):
    """Energy per core MVM = pulses x (rows E_row + cells G V^2 t + columns (E_conv + E_add))."""
    for bits in (1, 4, 8):
        chip = benchmark_chip(next(b for b in chip_benchmarks() if b.name == f"neurram@{bits}b/{bits + 2}b"))
        spec = chip.arrays["rram"]
        pulses = max(bits - 1, 1)
        acc_bits = min(max(spec.adc.bits + spec.input_encoding.bits, 8), 32)
        e_cell = mean_cell_conductance(spec, 0.5) * spec.read.read_voltage**2 * spec.read.read_pulse_s
        e_pulse = (256 * spec.input_encoding.dac.energy_pj * 1e-12 + 256 * 256 * e_cell
                   + 128 * (spec.adc.conversion.energy_pj * 1e-12 + add_energy_j(acc_bits, 130e-9, chip.technology.supply_v)))
        expected = 2 * 256 * 128 / (pulses * e_pulse) / 1e12
        assert rows[f"neurram@{bits}b/{bits + 2}b", "tops_w"].predicted == pytest.approx(expected, rel=1e-9)


def test_neurram_sweep_falls_with_input_pulses(rows):
    sweep = [rows[f"neurram@{b}b/{b + 2}b", "tops_w"].predicted for b in range(2, 9)]
    assert all(a > b for a, b in itertools.pairwise(sweep))
    # only one of the eight points was used to derive parameters
    assert [r.basis for (n, m), r in rows.items() if n.startswith("neurram@") and m == "tops_w"].count(DERIVED) == 1


def test_hermes_throughput_is_64_cores_over_one_integration_window(rows):
    chip = resolve_chip("validation/ibm-hermes")
    spec = chip.arrays["pcm"]
    step = spec.read.read_pulse_s + spec.adc.columns_per_adc * spec.adc.conversion.latency_s
    tops = 64 * 2 * 256 * 256 / step / 1e12
    assert rows["ibm-hermes", "tops"].predicted == pytest.approx(tops, rel=1e-9)
    assert abs(rows["ibm-hermes", "tops"].error) <= TOLERANCE  # 63.1 TOPS reported


def test_dcim_5nm_at_09v_is_the_05v_preset_scaled_by_v_squared(rows):
    benchmarks = {b.name: b for b in chip_benchmarks()}
    low, high = (measure(benchmarks[f"tsmc-dcim-5nm@{v}"]) for v in ("0.5V", "0.9V"))
    dynamic = [r.energy_j - r.by_component["leakage"] for r in (low, high)]  # the SRAM cells' leakage is not C V^2
    assert dynamic[1] / dynamic[0] == pytest.approx((0.9 / 0.5) ** 2, rel=1e-9)
    assert rows["tsmc-dcim-5nm@0.5V", "tops_w"].predicted / rows["tsmc-dcim-5nm@0.9V", "tops_w"].predicted == pytest.approx(
        (0.9 / 0.5) ** 2, rel=1e-3)


def test_operating_point_overrides_and_refuses_unknown_fields():
    chip = resolve_chip("validation/neurram")
    point = operating_point(chip, {"arrays.rram.adc.bits": 5})
    assert point.arrays["rram"].adc.bits == 5 and chip.arrays["rram"].adc.bits == 10
    with pytest.raises(CimflowError, match="no_such_field"):
        operating_point(chip, {"arrays.rram.no_such_field.bits": 5})
    with pytest.raises(ChipSpecError):
        operating_point(chip, {"arrays.rram.adc.bits": 0})


def test_validate_chips_selects_by_name_or_preset_and_refuses_unknown():
    selected = validate_chips(["validation/tsmc-dcim-5nm"])
    assert {r.chip for r in selected} == {"tsmc-dcim-5nm@0.5V", "tsmc-dcim-5nm@0.9V"}
    with pytest.raises(CimflowError, match="unknown chip benchmark"):
        validate_chips(["not-a-chip"])


def test_summary_separates_predicted_from_derived(rows):
    summary = summarize(rows.values())
    assert summary["rows"] == len(rows) and summary["chips"] == len(chip_benchmarks())
    predicted = sorted(abs(r.error) for r in rows.values() if r.basis == PREDICTED)
    assert summary["predicted"]["n"] == len(predicted)
    assert summary["predicted"]["max_abs_error"] == pytest.approx(max(predicted))
    assert summary["predicted"]["median_abs_error"] == pytest.approx(statistics.median(predicted))
    assert summary["predicted"]["within_tolerance"] == sum(e <= TOLERANCE for e in predicted)
    assert summary["all_predicted_within_tolerance"] == all(e <= TOLERANCE for e in predicted)
    # derived rows are shown but never counted in the verdict
    assert summary["derived"]["n"] == sum(r.derived for r in rows.values())
    tops_w = summary["by_metric"]["tops_w"]
    assert tops_w[PREDICTED]["n"] + tops_w[DERIVED]["n"] == sum(m == "tops_w" for _, m in rows)


def test_rows_serialize_to_json(rows):
    payload = json.loads(json.dumps([r.to_dict() for r in rows.values()]))
    assert all(math.isfinite(p["predicted"]) and p["predicted"] > 0 for p in payload)
    assert all({"chip", "metric", "predicted", "reported", "derived", "error"} <= set(p) for p in payload)


def test_cli_validate_chips_writes_json(tmp_path):
    from typer.testing import CliRunner

    from cimflow.cli import app

    out = tmp_path / "chips.json"
    result = CliRunner().invoke(app, ["validate", "chips", "--chip", "ibm-hermes", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(r["chip"], r["metric"]) for r in data["rows"]] == [("ibm-hermes", "tops_w"), ("ibm-hermes", "tops_mm2"),
                                                                ("ibm-hermes", "tops")]
    assert data["summary"]["rows"] == 3 and data["summary"]["chips"] == 1
    for r in data["rows"]:
        assert r["derived"] is False and r["error"] == pytest.approx(r["predicted"] / r["reported"] - 1, rel=1e-12)
