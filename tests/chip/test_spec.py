"""Tests of cimflow.chip.spec: validation of chip descriptions and derived properties.

Every refusal must be a ChipSpecError (a CimflowError) whose message names the field
path and what is allowed; the derived properties are checked against closed forms.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from cimflow.chip import ADC, ArraySpec, Chip, Cost, Device, Drift, InputEncoding, ProgrammingNoise, chip_from_dict
from cimflow.errors import ChipSpecError, CimflowError


def minimal_chip() -> dict[str, Any]:
    """The smallest valid description: one analog kind 'a' and one digital kind 'd'."""
    return {
        "name": "tiny",
        "technology": {"node_nm": 28, "supply_v": 0.9},
        "clock_hz": 1.0e9,
        "arrays": {
            "a": {
                "kind": "analog",
                "device": {"technology": "rram", "g_min": 1.0e-6, "g_max": 40.0e-6, "levels": 8},
                "rows": 64,
                "cols": 64,
                "adc": {"bits": 8},
            },
            "d": {
                "kind": "digital",
                "device": {"technology": "sram", "g_min": 0.0, "g_max": 1.0e-6, "levels": 2},
                "rows": 64,
                "cols": 64,
                "weight_bits": 4,
                "input_encoding": {"scheme": "bit_serial", "bits": 4},
            },
        },
        "roles": {"mvm": "a", "digital": "d"},
        "cores": {"count": 2, "arrays": {"a": 3, "d": 1}},
    }


def changed(path: str, value: Any) -> dict[str, Any]:
    """``minimal_chip()`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(minimal_chip())
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


def refusal(data: Any) -> str:
    """The message of the ChipSpecError that validating ``data`` must raise."""
    with pytest.raises(ChipSpecError) as info:
        chip_from_dict(data, origin="test.yaml")
    assert isinstance(info.value, CimflowError)
    return str(info.value)


def test_minimal_description_is_valid():
    chip = chip_from_dict(minimal_chip())
    assert chip.name == "tiny"
    assert chip.schema_version == 1


# ---------------------------------------------------------------- refusals, by field
@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("arrays.a.device.g_min", -1.0e-6, ["arrays.a.device.g_min", "greater than or equal to 0"]),
        ("arrays.a.device.g_max", 0.0, ["arrays.a.device.g_max", "greater than or equal to 1e-12"]),
        ("arrays.a.adc.bits", 0, ["arrays.a.adc.bits", "greater than or equal to 1"]),
        ("arrays.a.rows", 0, ["arrays.a.rows", "greater than or equal to 1"]),
        ("arrays.a.cols", -4, ["arrays.a.cols"]),
        ("arrays.a.device.read_noise", 1.5, ["arrays.a.device.read_noise", "less than or equal to 1"]),
        ("arrays.a.device.levels", 1, ["arrays.a.device.levels", "greater than or equal to 2"]),
        ("arrays.a.device.technology", "dram", ["arrays.a.device.technology", "'dram'"]),
        ("arrays.a.weight_encoding", {"scheme": "ternary"}, ["arrays.a.weight_encoding.scheme", "'ternary'"]),
        ("arrays.a.adc.range", "auto", ["arrays.a.adc.range", "'auto'"]),
        ("arrays.a.adc.full_scale", 0.0, ["arrays.a.adc.full_scale", "greater than 0"]),
        ("clock_hz", 0, ["clock_hz", "greater than or equal to 1000"]),
        ("technology.supply_v", 12.0, ["technology.supply_v", "less than or equal to 5"]),
        ("cores.count", 0, ["cores.count", "greater than or equal to 1"]),
        ("schema_version", 2, ["schema_version"]),
        ("name", "", ["name"]),
    ],
)
def test_out_of_range_value_names_its_field(path: str, value: Any, expected: list[str]):
    message = refusal(changed(path, value))
    assert message.startswith("invalid chip description")
    assert "test.yaml" in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("path", ["arrays.a.rows", "arrays.a.device", "roles", "clock_hz", "technology.node_nm"])
def test_missing_required_field_is_named(path: str):
    message = refusal(changed(path, ...))
    assert path in message
    assert "required field is missing" in message


def test_g_max_not_above_g_min_is_refused():
    message = refusal(changed("arrays.a.device.g_max", 1.0e-6))
    assert "arrays.a.device" in message
    assert "g_max" in message and "must be greater than g_min" in message


def test_unknown_key_is_named():
    data = changed("arrays.a.device.g_maxx", 3.0e-5)
    message = refusal(data)
    assert "arrays.a.device.g_maxx" in message
    assert "unknown key" in message


def test_unknown_top_level_key_is_named():
    message = refusal(changed("clock", 1.0e9))
    assert "clock:" in message and "unknown key" in message


def test_analog_array_without_adc_is_refused():
    message = refusal(changed("arrays.a.adc", ...))
    assert "arrays.a" in message
    assert "analog array needs an 'adc' block" in message


def test_digital_array_with_adc_is_refused():
    message = refusal(changed("arrays.d.adc", {"bits": 8}))
    assert "arrays.d" in message
    assert "digital array has no ADC" in message


def test_digital_array_without_weight_bits_is_refused():
    message = refusal(changed("arrays.d.weight_bits", ...))
    assert "arrays.d" in message and "weight_bits" in message


@pytest.mark.parametrize("role", ["mvm", "embedding", "digital"])
def test_role_naming_a_missing_array_kind_is_refused(role: str):
    message = refusal(changed(f"roles.{role}", "nope"))
    assert f"roles.{role} names array kind 'nope'" in message
    assert "['a', 'd']" in message  # the kinds that exist


def test_digital_role_must_name_a_digital_kind():
    message = refusal(changed("roles.digital", "a"))
    assert "roles.digital must name a digital array kind" in message
    assert "'a' is analog" in message


def test_core_naming_a_missing_array_kind_is_refused():
    message = refusal(changed("cores.arrays", {"a": 1, "zz": 2}))
    assert "cores.arrays names array kind 'zz'" in message


def test_core_with_zero_arrays_of_a_kind_is_refused():
    message = refusal(changed("cores.arrays", {"a": 0}))
    assert "cores" in message and "arrays['a'] must be within [1, 100000], got 0" in message


def test_empty_array_table_is_refused():
    data = changed("arrays", {})
    data["roles"] = {"mvm": "a"}
    data["cores"] = {"count": 1, "arrays": {}}
    message = refusal(data)
    assert "at least one array kind" in message


@pytest.mark.parametrize("data", [[1, 2], "name: x", 42])
def test_non_mapping_is_refused(data: Any):
    message = refusal(data)
    assert "test.yaml" in message
    assert "must be a mapping" in message
    assert type(data).__name__ in message


def test_slices_need_bit_sliced_scheme():
    message = refusal(changed("arrays.a.weight_encoding", {"scheme": "differential", "slices": 2}))
    assert "arrays.a.weight_encoding" in message and "slices=2 needs scheme 'bit_sliced'" in message


def test_pulse_wider_than_the_magnitude_bits_is_refused():
    message = refusal(changed("arrays.a.input_encoding", {"scheme": "bit_serial", "bits": 4, "bits_per_pulse": 4}))
    assert "arrays.a.input_encoding" in message and "bits_per_pulse (4)" in message


def test_max_active_rows_above_rows_is_refused():
    message = refusal(changed("arrays.a.max_active_rows", 65))
    assert "max_active_rows (65) cannot exceed rows (64)" in message


def test_inconsistent_levels_and_bits_per_cell_are_refused():
    data = changed("arrays.a.device.bits_per_cell", 2)  # levels is 8 = 2**3
    message = refusal(data)
    assert "arrays.a.device" in message and "levels=8" in message and "bits_per_cell=2" in message


def test_stuck_rates_above_one_in_total_are_refused():
    data = changed("arrays.a.device.stuck_on_rate", 0.6)
    data["arrays"]["a"]["device"]["stuck_off_rate"] = 0.5
    assert "stuck_on_rate + stuck_off_rate must be at most 1" in refusal(data)


def test_empty_noise_polynomial_is_refused():
    message = refusal(changed("arrays.a.device.programming_noise", {"coefficients": []}))
    assert "arrays.a.device.programming_noise" in message and "at least one number" in message


def test_differential_pair_needs_two_columns():
    message = refusal(changed("arrays.a.cols", 1))
    assert "at least 2 columns" in message


def test_every_error_is_reported_at_once():
    data = changed("arrays.a.device.g_min", -1.0)
    data["arrays"]["a"]["rows"] = 0
    message = refusal(data)
    assert "arrays.a.device.g_min" in message and "arrays.a.rows" in message


# ---------------------------------------------------------------- derived properties
def _array(**fields: Any) -> ArraySpec:
    base = minimal_chip()["arrays"]["a"] | {"rows": 256, "cols": 256}
    return ArraySpec.model_validate(base | fields)


@pytest.mark.parametrize(
    ("encoding", "cells_per_weight", "weight_columns"),
    [
        ({"scheme": "differential"}, 2, 128),
        ({"scheme": "offset"}, 1, 255),  # one reference column
        ({"scheme": "bit_sliced", "slices": 2}, 4, 64),
        ({"scheme": "bit_sliced", "slices": 3}, 6, 42),
    ],
)
def test_cells_per_weight_and_weight_columns(encoding: dict, cells_per_weight: int, weight_columns: int):
    spec = _array(weight_encoding=encoding)
    assert spec.cells_per_weight == cells_per_weight
    assert spec.weight_columns == weight_columns
    assert spec.weight_columns * spec.cells_per_weight <= spec.cols


@pytest.mark.parametrize("weight_bits", [1, 4, 8, 16])
def test_digital_weight_columns_are_bit_columns(weight_bits: int):
    chip = chip_from_dict(changed("arrays.d.weight_bits", weight_bits))
    spec = chip.arrays["d"]
    assert spec.cells_per_weight == weight_bits
    assert spec.weight_columns == 64 // weight_bits


@pytest.mark.parametrize(
    ("scheme", "bits", "bits_per_pulse", "pulses"),
    [("dac", 8, 1, 1), ("bit_serial", 8, 1, 7), ("bit_serial", 8, 3, 3), ("bit_serial", 2, 1, 1), ("bit_serial", 1, 1, 1)],
)
def test_input_pulses(scheme: str, bits: int, bits_per_pulse: int, pulses: int):
    enc = InputEncoding(scheme=scheme, bits=bits, bits_per_pulse=bits_per_pulse)
    assert enc.pulses == pulses
    if scheme == "bit_serial":
        assert enc.pulses == math.ceil(max(bits - 1, 1) / bits_per_pulse)


def test_levels_from_either_field():
    assert Device(technology="rram", g_min=0, g_max=1e-5, levels=8).n_levels == 8
    assert Device(technology="rram", g_min=0, g_max=1e-5, bits_per_cell=3).n_levels == 8
    assert Device(technology="rram", g_min=0, g_max=1e-5, levels=8, bits_per_cell=3).n_levels == 8
    assert Device(technology="rram", g_min=0, g_max=1e-5).n_levels == 2


def test_ideal_device_and_noise_flags():
    device = Device(technology="pcm", g_min=0, g_max=2e-5)
    assert device.is_ideal and device.programming_noise.is_zero and device.drift.is_zero
    assert not Device(technology="pcm", g_min=0, g_max=2e-5, read_noise=0.01).is_ideal
    assert not Device(technology="pcm", g_min=0, g_max=2e-5, stuck_off_rate=1e-3).is_ideal
    assert not ProgrammingNoise(coefficients=[0.0, 0.02]).is_zero
    assert not Drift(nu_mean=0.0, nu_std=0.01).is_zero


def test_cost_si_properties():
    cost = Cost(energy_pj=2.5, area_um2=1000.0, latency_ns=10.0)
    assert cost.energy_j == pytest.approx(2.5e-12, rel=1e-12)
    assert cost.area_m2 == pytest.approx(1000.0e-12, rel=1e-12)
    assert cost.latency_s == pytest.approx(10.0e-9, rel=1e-12)
    empty = Cost()
    assert (empty.energy_j, empty.area_m2, empty.latency_s) == (0.0, 0.0, 0.0)


def test_adc_defaults():
    adc = ADC(bits=6)
    assert (adc.columns_per_adc, adc.range, adc.full_scale, adc.sigmas) == (1, "expected", 1.0, 4.0)


def test_chip_counts_and_role_defaults():
    chip = chip_from_dict(minimal_chip())
    assert chip.arrays_on_chip("a") == 6  # 2 cores x 3
    assert chip.arrays_on_chip("d") == 2
    assert chip.arrays_on_chip("missing") == 0
    assert chip.embedding_kind == "a"  # defaults to roles.mvm
    data = minimal_chip()
    data["roles"]["embedding"] = "d"
    assert chip_from_dict(data).embedding_kind == "d"


def test_array_lookup_names_the_kinds():
    chip = chip_from_dict(minimal_chip())
    assert chip.array("a") is chip.arrays["a"]
    with pytest.raises(ChipSpecError) as info:
        chip.array("zz")
    assert "'zz'" in str(info.value) and "['a', 'd']" in str(info.value)


def test_model_round_trips_through_a_plain_dict():
    chip = chip_from_dict(minimal_chip())
    again = Chip.model_validate(chip.model_dump(mode="json"))
    assert again == chip


def test_analog_adc_is_the_adc_of_an_analog_array_and_a_chip_spec_error_elsewhere():
    from cimflow.chip import load_preset

    chip = load_preset("hybrid-rram-sram-28nm")
    kinds = {spec.kind: spec for spec in chip.arrays.values()}
    assert kinds["analog"].analog_adc() is kinds["analog"].adc is not None
    with pytest.raises(ChipSpecError, match="digital array has no ADC"):
        kinds["digital"].analog_adc()
