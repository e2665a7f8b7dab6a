"""Accuracy over time (``cimflow simulate``): the metric per time with and without drift
compensation, the relative output error fallback, the JSON and HTML outputs, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cimflow.errors import CimflowError
from cimflow.train import accuracy_over_time
from cimflow.train.over_time import parse_times, relative_output_error


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_ideal_chip_has_no_output_error_at_any_time():
    x = torch.randn(32, 64)
    result = accuracy_over_time(_mlp(), "ideal", "1s,1d,1y", instances=2, example_inputs=(x,))
    assert result.metric == "relative output error" and not result.higher_is_better
    assert [s["label"] for s in result.series] == ["no compensation", "global drift compensation"]
    for series in result.series:
        assert [p["t"] for p in series["points"]] == ["1s", "1d", "1y"]
        assert all(p["mean"] < 1e-4 and len(p["values"]) == 2 for p in series["points"])


def test_compensation_lowers_the_error_after_a_year_on_pcm():
    # A PCM device whose drift exponent does not depend on the conductance (the generic model,
    # nu ~ N(0.056, 0.009)): one factor per column undoes the drift. (With pcm-hermes-like's PCM
    # model, low-conductance cells drift up to 7x faster than high ones, so per-column
    # compensation cannot: see benchmarks/device_drift.py.)
    from cimflow.chip import chip_from_dict, load_preset
    from cimflow.chip.spec import Device

    chip = load_preset("pcm-hermes-like").model_dump(mode="json")
    device = {k: v for k, v in chip["arrays"]["pcm"]["device"].items() if k in Device.model_fields}
    chip["arrays"]["pcm"]["device"] = {**device, "model": "generic", "drift": {"nu_mean": 0.056, "nu_std": 0.009, "t0_s": 300.0}}
    x = torch.rand(64, 64)
    result = accuracy_over_time(_mlp(), chip_from_dict(chip), ["1y"], instances=2, example_inputs=(x,), compensation="per_column")
    plain, compensated = (s["points"][0]["mean"] for s in result.series)
    assert compensated < 0.5 * plain


def test_evaluate_is_the_metric_when_given():
    calls = []

    def evaluate(model):
        calls.append(model)
        return 0.75

    result = accuracy_over_time(_mlp(), "ideal", "1d", instances=3, evaluate=evaluate, compensation=None)
    assert result.fp32 == 0.75 and result.higher_is_better and len(result.series) == 1
    assert len(calls) == 1 + 3  # the float model, then 3 instances x 1 time x 1 series


def test_relative_output_error_and_time_parsing():
    a = torch.ones(4)
    assert relative_output_error((a, {"b": a}), (2 * a, {"b": a})) == pytest.approx(1 / 2**0.5)
    assert parse_times("1s, 1h,1y") == [("1s", 1.0), ("1h", 3600.0), ("1y", 365 * 86400.0)]
    with pytest.raises(CimflowError):
        parse_times(",")
    with pytest.raises(CimflowError):
        accuracy_over_time(_mlp(), "ideal", "1d", instances=1)  # neither evaluate nor example inputs


MODEL_FILE = """
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

def example_inputs():
    return (torch.rand(8, 16),)

def evaluate(m):
    with torch.no_grad():
        return float(m(torch.ones(1, 16)).abs().sum()){extra}
"""


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cimflow.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def test_cli_simulate_prints_a_table_and_writes_json_and_html(tmp_path):
    (tmp_path / "m.py").write_text(textwrap.dedent(MODEL_FILE.format(extra="")))
    result = _cli("simulate", "m.py", "--chip", "pcm-hermes-like", "--times", "1s,1d,1y", "--instances", "2",
                  "--compensation", "global", "--out", "r.json", "--html", "r.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "global drift compensation" in result.stdout and "1y" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["chip"] == "pcm-hermes-like" and data["metric"] == "metric (evaluate)" and len(data["series"]) == 2
    assert [p["t"] for p in data["series"][1]["points"]] == ["1s", "1d", "1y"]
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("args, extra, needle", [
    (["--compensation", "median"], "", "compensation mode"),
    (["--times", "1d,soon"], "", "cannot read duration 'soon'"),
    ([], "\n\ndef evaluate(m):\n    raise ValueError('no data')", "evaluate(model) raised ValueError: no data"),
])
def test_cli_simulate_errors_are_one_line(tmp_path, args, extra, needle):
    (tmp_path / "m.py").write_text(textwrap.dedent(MODEL_FILE.format(extra=extra)))
    result = _cli("simulate", "m.py", "--chip", "ideal", "--instances", "1", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_help_of_the_training_verbs_has_examples(tmp_path):
    for verb in ("simulate", "train-hwa"):
        result = _cli(verb, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "Example" in result.stdout, verb
    result = _cli("run", "--help", cwd=tmp_path)
    assert "--hwa" in result.stdout
