"""The CLI: one line and exit status 2 on bad input, no traceback; verbs work end to end.

Every verb runs in this process through :func:`cimflow.cli.main` (a fresh interpreter costs seconds a call); one
test starts a real process, because what it checks is the process: its exit status and stderr, and that starting
the CLI imports no torch.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Warning categories a plain ``python`` does not print; any other warning would be a line on a real run's stderr.
_HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@dataclass(frozen=True)
class Ran:
    """One in-process CLI run, read as a process would be."""

    returncode: int
    stdout: str
    stderr: str  # what the CLI printed to stderr, then each warning and log record a real process would print there


def _log_line(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # a record whose arguments do not fit its format (a process prints "--- Logging error ---")
        return f"--- Logging error --- {record.msg!r} {record.args!r}"


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """``cli(*args, cwd=None)``: run ``cimflow ARGS`` through :func:`cimflow.cli.main`, in ``cwd`` if given."""
    from cimflow.cli import main

    def run(*args: str, cwd: Path | None = None) -> Ran:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            with pytest.raises(SystemExit) as info:
                main(list(args))
        out, err = capsys.readouterr()
        err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                       for w in caught if not issubclass(w.category, _HIDDEN_BY_DEFAULT))
        err += "".join(f"{_log_line(record)}\n" for record in caplog.records if record.levelno >= logging.WARNING)
        code = info.value.code
        if code is None or isinstance(code, int):
            return Ran(code or 0, out, err)
        return Ran(1, out, err + f"{code}\n")  # sys.exit("text"): the process prints it and exits 1

    return run


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
def test_bad_input_is_one_line_and_exit_2(cli, args, needle, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cimflow: error:"), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_yaml_file_names_file_field_and_line(cli, tmp_path):
    bad = tmp_path / "chip.yaml"
    bad.write_text("name: x\ntechnology: {node_nm: 28, supply_v: 0.9}\nclock_hz: 1.0e9\narrays:\n  a:\n"
                   "    device: {technology: rram, g_min: -1.0e-6, g_max: 1.0e-5}\n"
                   "    rows: 8\n    cols: 8\n    adc: {bits: 0}\nroles: {mvm: a}\ncores: {count: 1, arrays: {a: 1}}\n")
    result = cli("chips", "show", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr and "arrays.a.device.g_min" in result.stderr and "arrays.a.adc.bits" in result.stderr
    assert f"{bad}:6" in result.stderr


def test_chips_list_and_show(cli):
    listing = cli("chips")
    assert listing.returncode == 0
    for name in ("ideal", "pcm-hermes-like", "hybrid-rram-sram-28nm", "rram-analog-generic", "sram-digital-22nm"):
        assert name in listing.stdout
    shown = cli("chips", "show", "pcm-hermes-like", "--json")
    assert json.loads(shown.stdout)["name"] == "pcm-hermes-like"


def test_compile_writes_a_plan(cli, tmp_path):
    out = tmp_path / "plan.json"
    result = cli("compile", str(EXAMPLES / "mlp_model.py"), "--chip", "hybrid-rram-sram-28nm", "--rule", "fc3=host", "--explain",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    plan = json.loads(out.read_text())
    ops = {o["name"]: o for o in plan["ops"]}
    assert ops["fc3"]["substrate"] == "host" and ops["fc1"]["substrate"] == "array"
    assert "fc1" in result.stdout and "operators on the host" in result.stdout


def test_help_has_examples(cli):
    for verb in (["chips"], ["compile"], ["run"], ["validate", "macros"], ["validate", "calibrate"]):
        result = cli(*verb, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, verb


def test_help_names_the_cache_looked_up_when_shown(cli, tmp_path, monkeypatch):
    from cimflow.cli import _CACHE_HELP
    from cimflow.recsys.cache import CACHE_DIR_ENV

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: the path is not wrapped
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "my-cache"))  # set after the CLI was imported: still named
    for verb in ("run", "train-hwa"):
        result = cli(verb, "--help")
        assert result.returncode == 0, result.stderr
        assert str(tmp_path / "my-cache") in result.stdout and CACHE_DIR_ENV in result.stdout, verb
        assert _CACHE_HELP not in result.stdout


def test_console_script_is_the_cli_entry_point():
    from importlib.metadata import entry_points

    from cimflow.cli import main

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "cimflow"]
    assert script.load() is main


#: Run in a fresh interpreter: the CLI's entry point, then (at exit, to stdout) which heavy modules it imported.
_FRESH_PROCESS = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(m for m in ("torch", "numpy", "cimflow.api", "cimflow.recsys") if m in sys.modules))))
from cimflow.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "args, returncode, needle",
    [
        (["--help"], 0, None),
        (["run", "--workload", "speech"], 2, "--workload 'speech'"),
        (["chips", "show", "no-such-chip"], 2, "unknown chip preset 'no-such-chip'"),
    ],
)
def test_a_real_process_exits_with_one_line_and_imports_no_torch(args, returncode, needle, tmp_path):
    # a subprocess is the point here: the exit status and all of stderr of a real process, and what a fresh
    # interpreter imports to show the help or a one-line error (torch alone takes seconds)
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == returncode, result.stderr
    *shown, imported = result.stdout.splitlines()
    assert json.loads(imported) == [], imported
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if needle is None:
        assert lines == [] and "Usage: cimflow" in "\n".join(shown) and "compile" in "\n".join(shown)
    else:
        assert len(lines) == 1 and lines[0].startswith("cimflow: error:") and needle in lines[0], result.stderr


def test_estimate_and_recsys_verbs(cli, tmp_path):
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


def test_validate_macros_and_calibrate_default_to_the_shipped_file(cli, tmp_path):
    out = tmp_path / "macros.json"
    result = cli("validate", "macros", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "imc_macros.csv (94 rows" in result.stdout
    data = json.loads(out.read_text())
    assert data["n_rows"] == 94 and data["n_scored_tops_w"] == 83
    fit = tmp_path / "fit.json"
    result = cli("validate", "calibrate", "--k", "2", "--out", str(fit))
    assert result.returncode == 0, result.stderr
    assert "calibration on imc_macros.csv" in result.stdout
    assert json.loads(fit.read_text())["k"] == 2


def test_run_without_movielens_says_how_to_install_it_before_any_work(cli, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real_find_spec(name, *a))
    result = cli("run", "--instances", "1", "--times", "1s", cwd=tmp_path)
    assert result.returncode == 2
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "pip install 'recbole>=1.1.1,<1.2'" in err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing trained


def _export_mlp(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    torch.export.save(torch.export.export(model, (torch.randn(4, 16),)), str(path))


def test_pt2_runs_in_compile_estimate_and_simulate(cli, tmp_path):
    model = tmp_path / "mlp.pt2"
    _export_mlp(model)
    assert cli("compile", str(model), "--out", str(tmp_path / "plan.json")).returncode == 0
    assert {op["name"] for op in json.loads((tmp_path / "plan.json").read_text())["ops"] if op["substrate"] == "array"} == {"0", "2"}
    assert cli("estimate", str(model), "--out", str(tmp_path / "cost.json")).returncode == 0
    assert json.loads((tmp_path / "cost.json").read_text())["energy_j"] > 0
    assert cli("simulate", str(model), "--times", "1s", "--instances", "1", "--out", str(tmp_path / "t.json")).returncode == 0
    assert json.loads((tmp_path / "t.json").read_text())["metric"] == "relative output error"


@pytest.mark.parametrize("verb", ["compile", "estimate", "simulate"])
def test_code_executing_pt2_is_refused_in_one_line_unless_trusted(cli, verb, tmp_path):
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
    refused = cli(verb, str(evil))
    assert refused.returncode == 2
    err = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("cimflow: error: refusing to load 'evil.pt2'") and "--trust-model-file" in err[0]
    assert not (tmp_path / "pwned").exists()
    cli(verb, str(evil), "--trust-model-file")  # trusted on purpose: torch unpickles it (what happens next does not matter)
    assert (tmp_path / "pwned").exists()


def test_simulate_refuses_nan_example_inputs_in_one_line(cli, tmp_path):
    model = tmp_path / "nan_model.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef model():\n    return nn.Sequential(nn.Linear(4, 2))\n\n"
                     "def example_inputs():\n    return (torch.tensor([[1.0, float('nan'), 0.0, 2.0]]),)\n")
    for verb in ("compile", "estimate", "simulate"):
        result = cli(verb, str(model))
        assert result.returncode == 2
        err = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and "holds 1 NaN or infinite value(s)" in err[0]


@pytest.mark.parametrize("args, needle", [
    (["recsys", "--dim", "1e300"], "Invalid value for '--dim'"),
    (["compile", "--no-such-flag"], "No such option: --no-such-flag"),
    (["estimate"], "Missing argument"),
])
def test_usage_errors_are_one_line_too(cli: Callable[..., Ran], args: list[str], needle: str) -> None:
    ran = cli(*args)
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert ran.returncode == 2 and len(lines) == 1, ran.stderr
    assert lines[0].startswith("cimflow: error:") and needle in lines[0]
