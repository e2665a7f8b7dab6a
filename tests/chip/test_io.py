"""Tests of cimflow.chip.io: YAML files, presets, resolution, and error messages.

A file error must name the file and, where the YAML gives one, the line of the
offending value; the tests write small files with known line numbers to tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cimflow.chip import Chip, chip_to_yaml, load_chip_file, load_chip_yaml, load_preset, preset_names, resolve_chip
from cimflow.errors import ChipSpecError

# A valid description; each line is numbered in the comments the tests rely on.
VALID_LINES = [
    "schema_version: 1",                       # 1
    "name: tiny",                              # 2
    "technology: {node_nm: 28, supply_v: 0.9}",  # 3
    "clock_hz: 1.0e9",                         # 4
    "arrays:",                                 # 5
    "  a:",                                    # 6
    "    kind: analog",                        # 7
    "    device:",                             # 8
    "      technology: rram",                  # 9
    "      g_min: 1.0e-6",                     # 10
    "      g_max: 4.0e-5",                     # 11
    "      levels: 8",                         # 12
    "    rows: 64",                            # 13
    "    cols: 64",                            # 14
    "    adc:",                                # 15
    "      bits: 8",                           # 16
    "roles: {mvm: a}",                         # 17
    "cores: {count: 2, arrays: {a: 4}}",       # 18
]


def yaml_text(replace: dict[int, str] | None = None) -> str:
    """VALID_LINES with 1-based line numbers replaced."""
    lines = list(VALID_LINES)
    for number, text in (replace or {}).items():
        lines[number - 1] = text
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str, name: str = "chip.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def file_refusal(path: Path) -> str:
    with pytest.raises(ChipSpecError) as info:
        load_chip_file(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_valid_file_loads(tmp_path: Path):
    chip = load_chip_file(write(tmp_path, yaml_text()))
    assert chip.name == "tiny"
    assert chip.arrays["a"].device.g_max == pytest.approx(4.0e-5)
    assert chip.arrays_on_chip("a") == 8


@pytest.mark.parametrize(
    ("line", "text", "field"),
    [
        (10, "      g_min: -1.0e-6", "arrays.a.device.g_min"),
        (16, "      bits: 0", "arrays.a.adc.bits"),
        (13, "    rows: 0", "arrays.a.rows"),
        (4, "clock_hz: -5", "clock_hz"),
        (12, "      levels: 1", "arrays.a.device.levels"),
    ],
)
def test_bad_value_names_file_line_and_field(tmp_path: Path, line: int, text: str, field: str):
    path = write(tmp_path, yaml_text({line: text}))
    message = file_refusal(path)
    assert f"{path}:{line}: {field}:" in message


def test_unknown_key_names_file_line_and_key(tmp_path: Path):
    path = write(tmp_path, yaml_text({12: "      levles: 8"}))
    message = file_refusal(path)
    assert f"{path}:12: arrays.a.device.levles: unknown key" in message


def test_g_max_not_above_g_min_points_at_the_device(tmp_path: Path):
    path = write(tmp_path, yaml_text({11: "      g_max: 1.0e-6"}))
    message = file_refusal(path)
    # the device block's value starts on the line after "device:"
    assert f"{path}:9: arrays.a.device: g_max" in message
    assert "must be greater than g_min" in message


def test_analog_array_without_adc_in_file(tmp_path: Path):
    text = "\n".join(VALID_LINES[:14] + VALID_LINES[16:]) + "\n"  # drop lines 15-16
    message = file_refusal(write(tmp_path, text))
    assert "arrays.a: an analog array needs an 'adc' block" in message


def test_digital_array_with_adc_in_file(tmp_path: Path):
    path = write(tmp_path, yaml_text({7: "    kind: digital\n    weight_bits: 4"}))
    message = file_refusal(path)
    assert "arrays.a: a digital array has no ADC" in message


def test_role_naming_a_missing_kind_in_file(tmp_path: Path):
    message = file_refusal(write(tmp_path, yaml_text({17: "roles: {mvm: b}"})))
    assert "roles.mvm names array kind 'b', but the chip has only ['a']" in message


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    path = write(tmp_path, yaml_text({13: "    rows: [64"}))  # unclosed flow sequence
    message = file_refusal(path)
    assert "malformed YAML" in message
    line = int(message.split(f"{path}:")[1].split(":")[0])
    assert 13 <= line <= 15  # the parser reports where it noticed, at or just after line 13


def test_bad_indentation_names_file_and_line(tmp_path: Path):
    path = write(tmp_path, yaml_text({14: "   cols: 64"}))  # 3 spaces inside a 4-space block
    message = file_refusal(path)
    assert "malformed YAML" in message
    assert f"{path}:14" in message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_non_mapping_file_is_refused(tmp_path: Path, text: str, kind: str):
    message = file_refusal(write(tmp_path, text))
    assert "must be a mapping" in message and kind in message


def test_empty_file_is_refused(tmp_path: Path):
    message = file_refusal(write(tmp_path, ""))
    assert "is empty" in message


def test_unsafe_yaml_tag_is_refused(tmp_path: Path):
    text = yaml_text({2: "name: !!python/object/apply:os.getcwd []"})
    message = file_refusal(write(tmp_path, text))
    assert "malformed YAML" in message
    assert ":2" in message


def test_missing_file_names_the_path_and_the_presets(tmp_path: Path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ChipSpecError) as info:
        load_chip_file(path)
    message = str(info.value)
    assert str(path) in message and "does not exist" in message
    for name in preset_names():
        assert name in message


def test_undecodable_file_is_refused(tmp_path: Path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00bad\n")
    message = file_refusal(path)
    assert "cannot read chip file" in message


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ChipSpecError) as info:
        load_preset("no-such-chip")
    message = str(info.value)
    assert "'no-such-chip'" in message
    for name in preset_names():
        assert name in message


def test_string_errors_name_the_origin():
    with pytest.raises(ChipSpecError) as info:
        load_chip_yaml(yaml_text({16: "      bits: 0"}), origin="my-spec")
    assert "my-spec:16: arrays.a.adc.bits" in str(info.value)
    with pytest.raises(ChipSpecError) as info:
        load_chip_yaml(yaml_text({16: "      bits: 0"}))
    assert "<string>:16" in str(info.value)


# ---------------------------------------------------------------- resolution
def test_resolve_accepts_name_path_string_and_chip(tmp_path: Path):
    path = write(tmp_path, yaml_text())
    from_path = resolve_chip(path)
    assert resolve_chip(str(path)) == from_path
    assert resolve_chip("ideal") == load_preset("ideal")
    copy = resolve_chip(from_path)
    assert copy == from_path and copy is not from_path
    copy.arrays["a"].rows = 32  # a deep copy: the original is untouched
    assert from_path.arrays["a"].rows == 64


def test_resolve_treats_yaml_names_as_paths(tmp_path: Path):
    with pytest.raises(ChipSpecError) as info:
        resolve_chip("ideal.yaml")  # a file name, not the preset
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("value", [42, None, 3.5, ["ideal"]])
def test_resolve_refuses_other_types(value):
    with pytest.raises(ChipSpecError) as info:
        resolve_chip(value)
    assert type(value).__name__ in str(info.value)


# ---------------------------------------------------------------- writing
def test_yaml_round_trip_through_a_file(tmp_path: Path):
    chip = load_chip_file(write(tmp_path, yaml_text()))
    again = load_chip_file(write(tmp_path, chip_to_yaml(chip), name="again.yaml"))
    assert again == chip
    assert chip_to_yaml(again) == chip_to_yaml(chip)


def test_written_yaml_is_plain_and_loadable():
    text = chip_to_yaml(load_preset("ideal"))
    assert "!!" not in text  # no python tags: safe_load can read it
    assert isinstance(load_chip_yaml(text), Chip)


# ---------------------------------------------------------------- duplicate keys and infinities
def test_duplicate_key_is_refused(tmp_path: Path):
    path = write(tmp_path, yaml_text({14: "    cols: 64\n    cols: 128"}))
    message = file_refusal(path)
    assert "cols" in message


def test_infinite_number_is_refused(tmp_path: Path):
    path = write(tmp_path, yaml_text({11: "      g_max: .inf"}))
    message = file_refusal(path)
    assert "arrays.a.device.g_max" in message
