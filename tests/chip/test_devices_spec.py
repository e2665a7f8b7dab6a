"""Device models in the chip YAML: model selection, each model's bounded fields, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cimtest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.chip import chip_from_dict, load_preset
from cimflow.chip.devices import DEVICE_SPECS, TECHNOLOGY_MODELS, PCMDevice
from cimflow.chip.spec import Device
from cimflow.errors import ChipSpecError

BASE_DEVICE = {"technology": "rram", "g_min": 1e-6, "g_max": 4e-5, "levels": 8}
MODEL_DEVICES = {
    "generic": dict(BASE_DEVICE),
    "pcm": {"technology": "pcm", "g_min": 0.0, "g_max": 2.5e-5, "levels": 64},
    "rram": dict(BASE_DEVICE),
    "nor_flash": {"technology": "nor_flash", "g_min": 0.0, "g_max": 1e-5, "levels": 16},
    "mram": {"technology": "mram", "g_min": 1e-5, "g_max": 3e-5, "levels": 2},
    "fefet": {"technology": "fefet", "g_min": 1e-7, "g_max": 1e-5, "levels": 8},
    "charge_sram": {"technology": "sram", "g_min": 0.0, "g_max": 1e-6, "levels": 2},
}


def chip_dict(device: dict) -> dict:
    return {
        "schema_version": 1, "name": "t", "technology": {"node_nm": 28, "supply_v": 0.9}, "clock_hz": 1e9,
        "arrays": {"a": {"kind": "analog", "device": device, "rows": 64, "cols": 64, "adc": {"bits": 8}}},
        "roles": {"mvm": "a"}, "cores": {"count": 1, "arrays": {"a": 1}},
    }


def refusal(device: dict) -> str:
    with pytest.raises(ChipSpecError) as info:
        chip_from_dict(chip_dict(device))
    return str(info.value)


@pytest.mark.parametrize("name", sorted(MODEL_DEVICES))
def test_each_model_is_expressible_in_yaml_and_round_trips(name: str) -> None:
    chip = chip_from_dict(chip_dict({**MODEL_DEVICES[name], "model": name}))
    device = chip.arrays["a"].device
    assert type(device) is DEVICE_SPECS[name] and device.model == name
    again = chip_from_dict(yaml.safe_load(yaml.safe_dump(chip.model_dump(mode="json"))))
    assert again.arrays["a"].device == device


def test_the_plain_form_is_the_generic_model_and_presets_load_unchanged() -> None:
    chip = chip_from_dict(chip_dict(dict(BASE_DEVICE)))
    assert type(chip.arrays["a"].device) is Device and chip.arrays["a"].device.model == "generic"
    for name in ("rram-analog-generic", "sram-digital-22nm", "ideal"):
        assert all(type(a.device) is Device for a in load_preset(name).arrays.values())


@pytest.mark.parametrize("technology", sorted(TECHNOLOGY_MODELS))
def test_model_auto_picks_the_technology_model(technology: str) -> None:
    device = {**BASE_DEVICE, "technology": technology, "model": "auto"}
    if technology == "mram":
        device["levels"] = 2
    got = chip_from_dict(chip_dict(device)).arrays["a"].device
    assert got.model == TECHNOLOGY_MODELS[technology]


@pytest.mark.parametrize(("field", "value", "says"), [
    ("temperature_k", -10.0, "temperature_k"),
    ("temperature_k", 0.0, "temperature_k"),
    ("endurance_cycles", 0, "endurance_cycles"),
    ("array_yield", {"dead_row_rate": 1.5}, "array_yield.dead_row_rate"),
    ("array_yield", {"dead_col_rate": -0.1}, "array_yield.dead_col_rate"),
    ("array_yield", {"spare_rows": -1}, "array_yield.spare_rows"),
    ("stuck_on_rate", 2.0, "stuck_on_rate"),
    ("model", "plasma", "device model must be one of"),
])
def test_bad_common_fields_get_one_clear_line(field: str, value: object, says: str) -> None:
    message = refusal({**BASE_DEVICE, field: value})
    assert says in message and "\n" not in message


@pytest.mark.parametrize(("name", "extra", "says"), [
    ("pcm", {"t_read_s": 0.0}, "t_read_s"),
    ("pcm", {"drift": {"nu_mean": 0.05}}, "drift_nu_mean"),
    ("pcm", {"drift_nu_mean": {"pieces": [{"x_from": 0.2, "coefficients": [0.05]}]}}, "x_from = 0"),
    ("pcm", {"noise_q_s": {"pieces": [{"form": "log", "coefficients": [0.1]}]}}, "exactly 2 coefficients"),
    ("rram", {"relaxation_shift_per_decade": 0.9}, "relaxation_shift_per_decade"),
    ("nor_flash", {"ispp_step_v": 0.0}, "ispp_step_v"),
    ("nor_flash", {"retention_rate": 1.5}, "retention_rate"),
    ("nor_flash", {"programming_noise": {"coefficients": [0.01]}}, "ISPP"),
    ("mram", {"levels": 4}, "binary"),
    ("mram", {"write_current_ratio": -1.0}, "write_current_ratio"),
    ("fefet", {"retention_tau_s": -1.0}, "retention_tau_s"),
    ("charge_sram", {"technology": "rram"}, "technology sram"),
    ("charge_sram", {"pelgrom_a_pct_um": -0.5}, "pelgrom_a_pct_um"),
    ("charge_sram", {"read_noise": 0.01}, "capacitor mismatch"),
])
def test_bad_model_fields_get_one_clear_line(name: str, extra: dict, says: str) -> None:
    message = refusal({**MODEL_DEVICES[name], "model": name, **extra})
    assert says in message and "\n" not in message, message


# -------------------------------------------------------------------------- hypothesis
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=120, deadline=None)
@given(temperature=finite, endurance=st.one_of(st.none(), finite), row=finite, col=finite,
       spares=st.integers(-5, 70_000), ea=finite)
def test_common_fields_accept_exactly_their_bounds(temperature: float, endurance: float | None, row: float, col: float,
                                                   spares: int, ea: float) -> None:
    device = {**BASE_DEVICE, "temperature_k": temperature, "endurance_cycles": endurance,
              "array_yield": {"dead_row_rate": row, "dead_col_rate": col, "spare_rows": spares},
              "drift": {"activation_energy_ev": ea}}
    ok = (1 <= temperature <= 1000 and (endurance is None or 1 <= endurance <= 1e16) and 0 <= row <= 1 and 0 <= col <= 1
          and 0 <= spares <= 65536 and 0 <= ea <= 5)
    if ok:
        assert chip_from_dict(chip_dict(device)).arrays["a"].device.temperature_k == temperature
    else:
        with pytest.raises(ChipSpecError):
            chip_from_dict(chip_dict(device))


@settings(max_examples=120, deadline=None)
@given(name=st.sampled_from(sorted(set(MODEL_DEVICES) - {"generic"})), field=st.sampled_from([
    "t_read_s", "relaxation_shift_per_decade", "vth_window_v", "ispp_step_v", "pulse_sigma_v", "retention_rate",
    "retention_tau_s", "thermal_stability", "write_current_ratio", "read_current_ratio", "reads_per_second",
    "capacitor_area_um2", "pelgrom_a_pct_um"]), value=finite)
def test_model_fields_validate_to_their_bounds_or_refuse(name: str, field: str, value: float) -> None:
    """A value inside the field's declared range loads; outside (or a field the model does not
    have), a ChipSpecError; never anything else."""
    cls = DEVICE_SPECS[name]
    device = {**MODEL_DEVICES[name], "model": name, field: value}
    if field not in cls.model_fields:
        with pytest.raises(ChipSpecError):
            chip_from_dict(chip_dict(device))
        return
    meta = cls.model_fields[field].metadata
    low = max((getattr(m, "ge", None) for m in meta if getattr(m, "ge", None) is not None), default=-float("inf"))
    high = min((getattr(m, "le", None) for m in meta if getattr(m, "le", None) is not None), default=float("inf"))
    if low <= value <= high:
        try:
            got = chip_from_dict(chip_dict(device)).arrays["a"].device
        except ChipSpecError as exc:  # a cross-field rule (e.g. MRAM needs I/Ic0 > 0 to ever switch) is fine, a crash is not
            assert "\n" not in str(exc)
            return
        assert getattr(got, field) == value
    else:
        with pytest.raises(ChipSpecError):
            chip_from_dict(chip_dict(device))


# -------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(("device", "says"), [
    ({**BASE_DEVICE, "temperature_k": -40.0}, "temperature_k"),
    ({**BASE_DEVICE, "endurance_cycles": 0}, "endurance_cycles"),
    ({**BASE_DEVICE, "array_yield": {"dead_row_rate": 1.2}}, "dead_row_rate"),
    ({**MODEL_DEVICES["mram"], "model": "mram", "write_current_ratio": 20}, "write_current_ratio"),
])
def test_cli_refuses_bad_device_parameters_in_one_line(tmp_path: Path, device: dict, says: str) -> None:
    path = tmp_path / "chip.yaml"
    path.write_text(yaml.safe_dump(chip_dict(device)), encoding="utf-8")
    code, output = run_cli(["chips", "show", str(path)])
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cimflow: error:") and says in lines[0], output
    assert "Traceback" not in output


def test_cli_shows_a_model_device() -> None:
    code, output = run_cli(["chips", "show", "pcm-hermes-like"])
    assert code == 0 and "model:" in output
    assert isinstance(load_preset("pcm-hermes-like").arrays["pcm"].device, (PCMDevice, Device))


OWN_FIELDS = {name: set(cls.model_fields) - set(Device.model_fields) for name, cls in DEVICE_SPECS.items()}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(MODEL_DEVICES)), other=st.sampled_from(sorted(MODEL_DEVICES)), data=st.data())
def test_a_field_of_another_model_is_refused(name: str, other: str, data: st.DataObject) -> None:
    foreign = sorted(OWN_FIELDS[other] - OWN_FIELDS[name])
    if not foreign:
        return
    field = data.draw(st.sampled_from(foreign))
    value = DEVICE_SPECS[other].model_fields[field].get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    message = refusal({**MODEL_DEVICES[name], "model": name, field: value})
    assert field in message and "\n" not in message
