"""scripts/device_effects.py: each chip variant is a valid chip with exactly the edits its label names,
results of other settings are refused, and bad arguments are one line with exit status 2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from cimflow.chip.devices import PCMDevice, RRAMDevice
from cimflow.chip.spec import Device
from cimflow.errors import CimflowError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_effects.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("device_effects", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_effects"] = module
    spec.loader.exec_module(module)
    return module


ANALOG = {"pcm-hermes-like": "pcm", "rram-analog-generic": "rram", "hybrid-rram-sram-28nm": "rram_emb"}


@pytest.mark.parametrize("chip", sorted(ANALOG))
def test_variants_carry_their_labels(script, chip):
    for label, edits in script.variants(chip):
        array = script.build_chip(chip, edits).arrays[ANALOG[chip]]
        dev = array.device
        if "before" in label and chip == "pcm-hermes-like":
            assert type(dev) is Device
            assert (dev.drift.nu_mean, dev.drift.nu_std, dev.drift.t0_s) == (0.056, 0.009, 300.0)
        if "PCM model" in label:
            assert isinstance(dev, PCMDevice)
        if "relaxation" in label:
            assert isinstance(dev, RRAMDevice) and dev.drift.nu_mean == 0 and dev.drift.nu_std == 0
            assert dev.relaxation_sigma_per_decade.pieces[0].coefficients == [pytest.approx(0.01727, rel=1e-3)]
        assert (dev.temperature_k == 358.15) == ("85 C" in label)
        if "85 C" in label:
            assert dev.drift.activation_energy_ev == 0.2
        dead = {"0.1 %": 1e-3, "1 %": 1e-2}
        rate = next((v for k, v in dead.items() if k + " dead" in label), 0.0)
        assert dev.array_yield.dead_row_rate == rate and dev.array_yield.dead_col_rate == rate
        adc = array.adc.range
        if "worst case" in label:
            assert adc == "per_array_max"
        elif "ADC expected" in label:
            assert adc == "expected"
        elif "ADC fixed" in label:
            assert adc == "fixed"


def test_other_settings_are_refused(script, tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"settings": {"instances": 9}, "workloads": {}, "rows": {}}))
    with pytest.raises(CimflowError, match="other settings"):
        script._load(out, {"instances": 3})
    assert script._load(tmp_path / "new.json", {"instances": 3})["rows"] == {}


def test_bad_arguments_exit_2(script, capsys, tmp_path):
    assert script.main(["--instances", "0", "--out", str(tmp_path / "a.json")]) == 2
    assert "--instances must be >= 1" in capsys.readouterr().err
    assert script.main(["--workloads", "speech", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "allowed digits, dlrm" in err
    assert not list(tmp_path.iterdir())
