"""The CLI: one line and exit status 2 on bad input, no traceback; verbs work end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cimflow.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["chips", "show", "no-such-chip"], "unknown chip preset 'no-such-chip'"),
        (["chips", "show", "missing.yaml"], "does not exist"),
        (["compile", "nope.py", "--chip", "ideal"], "nope.py"),
        (["compile", str(EXAMPLES / "mlp_model.py"), "--chip", "ideal", "--rule", "fc3"], "PATTERN=TARGET"),
        (["compile", str(EXAMPLES / "mlp_model.py"), "--chip", "pcm-hermes-like", "--rule", "fc3=digital"], "no digital CIM array"),
        (["validate", "macros", "missing.csv"], "missing.csv"),
        (["run", "--workload", "speech"], "--workload 'speech'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cimflow: error:"), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_yaml_file_names_file_field_and_line(tmp_path):
    bad = tmp_path / "chip.yaml"
    bad.write_text("name: x\ntechnology: {node_nm: 28, supply_v: 0.9}\nclock_hz: 1.0e9\narrays:\n  a:\n    device: {technology: rram, g_min: -1.0e-6, g_max: 1.0e-5}\n"
                   "    rows: 8\n    cols: 8\n    adc: {bits: 0}\nroles: {mvm: a}\ncores: {count: 1, arrays: {a: 1}}\n")
    result = cli("chips", "show", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "arrays.a.device.g_min" in result.stderr and "arrays.a.adc.bits" in result.stderr
    assert f"{bad}:6" in result.stderr


def test_chips_list_and_show():
    listing = cli("chips")
    assert listing.returncode == 0
    for name in ("ideal", "pcm-hermes-like", "hybrid-rram-sram-28nm", "rram-analog-generic", "sram-digital-22nm"):
        assert name in listing.stdout
    shown = cli("chips", "show", "pcm-hermes-like", "--json")
    assert json.loads(shown.stdout)["name"] == "pcm-hermes-like"


def test_compile_writes_a_plan(tmp_path):
    out = tmp_path / "plan.json"
    result = cli("compile", str(EXAMPLES / "mlp_model.py"), "--chip", "hybrid-rram-sram-28nm", "--rule", "fc3=host", "--explain", "--out", str(out))
    assert result.returncode == 0, result.stderr
    plan = json.loads(out.read_text())
    ops = {o["name"]: o for o in plan["ops"]}
    assert ops["fc3"]["substrate"] == "host" and ops["fc1"]["substrate"] == "array"
    assert "fc1" in result.stdout and "operators on the host" in result.stdout


def test_help_has_examples():
    for verb in (["chips"], ["compile"], ["run"], ["validate", "macros"], ["validate", "calibrate"]):
        result = cli(*verb, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, verb


def test_estimate_and_recsys_verbs(tmp_path):
    out = tmp_path / "cost.json"
    result = cli("estimate", str(EXAMPLES / "mlp_model.py"), "--chip", "pcm-hermes-like", "--out", str(out))
    assert result.returncode == 0, result.stderr
    cost = json.loads(out.read_text())
    assert cost["energy_j"] > 0 and cost["data_dependent"] is True
    assert sum(cost["by_component_j"].values()) == pytest.approx(cost["energy_j"], rel=1e-6)
    rec = tmp_path / "recsys.json"
    result = cli("recsys", "--tables", "20000,5000", "--dim", "16", "--pooling", "2", "--batch", "16", "--out", str(rec))
    assert result.returncode == 0, result.stderr
    data = json.loads(rec.read_text())
    assert [t["table"] for t in data["tiers"]] == ["embeddings.0", "embeddings.1"]
    bad = cli("recsys", "--tables", "a,b")
    assert bad.returncode == 2 and "row counts separated by commas" in bad.stderr


def _run_in_process(argv: list[str]) -> int:
    from cimflow.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_validate_macros_and_calibrate_default_to_the_shipped_file(tmp_path, capsys):
    out = tmp_path / "macros.json"
    assert _run_in_process(["validate", "macros", "--out", str(out)]) == 0
    assert "imc_macros.csv (94 rows" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["n_rows"] == 94 and result["n_scored_tops_w"] == 83
    fit = tmp_path / "fit.json"
    assert _run_in_process(["validate", "calibrate", "--k", "2", "--out", str(fit)]) == 0
    assert "calibration on imc_macros.csv" in capsys.readouterr().out
    assert json.loads(fit.read_text())["k"] == 2


def test_run_without_movielens_says_how_to_install_it_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real_find_spec(name, *a))
    monkeypatch.chdir(tmp_path)
    assert _run_in_process(["run", "--instances", "1", "--times", "1s"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "pip install 'recbole>=1.1.1,<1.2'" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing trained


def _export_mlp(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    torch.export.save(torch.export.export(model, (torch.randn(4, 16),)), str(path))


def test_pt2_runs_in_compile_estimate_and_simulate(tmp_path, capsys):
    model = tmp_path / "mlp.pt2"
    _export_mlp(model)
    assert _run_in_process(["compile", str(model), "--out", str(tmp_path / "plan.json")]) == 0
    assert {op["name"] for op in json.loads((tmp_path / "plan.json").read_text())["ops"] if op["substrate"] == "array"} == {"0", "2"}
    assert _run_in_process(["estimate", str(model), "--out", str(tmp_path / "cost.json")]) == 0
    assert json.loads((tmp_path / "cost.json").read_text())["energy_j"] > 0
    assert _run_in_process(["simulate", str(model), "--times", "1s", "--instances", "1", "--out", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["metric"] == "relative output error"


@pytest.mark.parametrize("verb", ["compile", "estimate", "simulate"])
def test_code_executing_pt2_is_refused_in_one_line_unless_trusted(verb, tmp_path, capsys):
    import io
    import zipfile

    import torch

    class Marker:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    good, evil = tmp_path / "mlp.pt2", tmp_path / "evil.pt2"
    _export_mlp(good)
    payload = io.BytesIO()
    torch.save(Marker(), payload)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as target:
        for info in source.infolist():  # example inputs that only full unpickling can read
            data = payload.getvalue() if "/data/sample_inputs/" in info.filename else source.read(info)
            target.writestr(info.filename, data)
    capsys.readouterr()
    assert _run_in_process([verb, str(evil)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("cimflow: error: refusing to load 'evil.pt2'") and "--trust-model-file" in err[0]
    assert not (tmp_path / "pwned").exists()
    _run_in_process([verb, str(evil), "--trust-model-file"])  # trusted on purpose: torch unpickles it
    assert (tmp_path / "pwned").exists()


def test_simulate_refuses_nan_example_inputs_in_one_line(tmp_path, capsys):
    model = tmp_path / "nan_model.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef model():\n    return nn.Sequential(nn.Linear(4, 2))\n\n"
                     "def example_inputs():\n    return (torch.tensor([[1.0, float('nan'), 0.0, 2.0]]),)\n")
    for verb in ("compile", "estimate", "simulate"):
        assert _run_in_process([verb, str(model)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "holds 1 NaN or infinite value(s)" in err[0]
