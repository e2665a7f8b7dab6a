"""Tests of cimflow.chip.io: YAML files, presets, resolution, and error messages.

A file error must name the file and, where the YAML gives one, the line of the
offending value; the tests write small files with known line numbers to tmp_path.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.chip import Chip, chip_to_yaml, load_chip_file, load_chip_yaml, load_preset, preset_names, resolve_chip
from cimflow.chip.io import MAX_YAML_ALIASES, MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_EXPANDED_NODES, MAX_YAML_NODES
from cimflow.errors import ChipSpecError, CimflowError

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
    assert "chip file is not utf-8 text" in message


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


# ---------------------------------------------------------------- bounded YAML (hostile files)
def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level is a list of `width` aliases of the level below."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_in_under_a_second(tmp_path: Path):
    path = write(tmp_path, _alias_bomb())  # 9**9 = 387 M strings once expanded
    start = time.perf_counter()
    message = file_refusal(path)
    assert time.perf_counter() - start < 1.0
    assert "aliases" in message and str(MAX_YAML_ALIASES) in message


def test_alias_bomb_within_the_alias_count_is_refused_by_its_expanded_size(tmp_path: Path):
    path = write(tmp_path, _alias_bomb(levels=16, width=2))  # 30 aliases, 2**17 nodes expanded
    start = time.perf_counter()
    message = file_refusal(path)
    assert time.perf_counter() - start < 1.0
    assert "expand to" in message and f"{MAX_YAML_EXPANDED_NODES:,}" in message


@pytest.mark.parametrize("text", ["&a [*a]", "a: &a {b: [1, *a]}", "cores: &c\n  count: 1\n  arrays: {a: *c}\n"])
def test_recursive_alias_is_refused(tmp_path: Path, text: str):
    message = file_refusal(write(tmp_path, text))
    assert "recursive alias" in message


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, "- " * 10_000 + "x\n", "{a: " * 10_000 + "1" + "}" * 10_000])
def test_ten_thousand_deep_nesting_is_refused(tmp_path: Path, text: str):
    start = time.perf_counter()
    with pytest.raises(CimflowError) as info:
        load_chip_file(write(tmp_path, text))
    assert time.perf_counter() - start < 1.0
    assert f"more than {MAX_YAML_DEPTH} levels" in str(info.value)


def test_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path):
    path = write(tmp_path, yaml_text() + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    message = file_refusal(path)
    assert f"{MAX_YAML_BYTES:,} bytes" in message


def test_too_many_nodes_are_refused():
    text = "[" + ", ".join(["1"] * (MAX_YAML_NODES + 10)) + "]"
    with pytest.raises(ChipSpecError, match="YAML nodes"):
        load_chip_yaml(text)


def test_huge_integer_is_one_error_not_a_traceback():
    with pytest.raises(ChipSpecError, match="cannot be read"):
        load_chip_yaml(yaml_text({13: "    rows: 1" + "0" * 5000}))


def test_a_few_aliases_still_load():
    chip = load_chip_yaml(yaml_text({13: "    rows: &n 64", 14: "    cols: *n"}))
    assert chip.arrays["a"].rows == chip.arrays["a"].cols == 64


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab:-[]{}&*!,# \n\t'\"|>?.0123456789e", max_size=120))
def test_any_text_loads_or_is_one_chip_spec_error(text: str):
    try:
        chip = load_chip_yaml(text)
    except ChipSpecError as error:
        assert str(error) and "\n" not in str(error).strip()
    else:
        assert isinstance(chip, Chip)


def test_a_list_as_a_mapping_key_is_one_clear_error():
    # found by the hypothesis test above: the duplicate-key check hashed a list and raised TypeError
    from cimflow.chip.io import load_chip_yaml

    with pytest.raises(ChipSpecError, match="a key must be a plain name or number"):
        load_chip_yaml("? [a, b]\n: 1\n")
