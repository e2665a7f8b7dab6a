"""End-to-end jobs: the main RecSys job and user RecSys configurations."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from cimflow.errors import CimflowError
from cimflow.jobs.recsys import RunConfig, run_recsys
from cimflow.jobs.recsys_config import RecsysConfig, run_recsys_config


@pytest.mark.slow
def test_main_job_writes_reports_with_consistent_numbers(tmp_path):
    out, html = tmp_path / "report.json", tmp_path / "report.html"
    report = run_recsys(RunConfig(instances=2, times=("1s", "1d"), cpu_batches=(1, 64), out=out, html=html), Console(width=160, record=True))
    saved = json.loads(out.read_text())
    assert saved["accuracy"]["fp32"] == pytest.approx(report["accuracy"]["fp32"])
    fp32 = report["accuracy"]["fp32"]
    assert fp32 > 0.75  # the MovieLens DLRM learns
    points = report["accuracy"]["series"][0]["points"]
    assert [p["t"] for p in points] == ["1s", "1d"] and all(len(p["values"]) == 2 for p in points)
    assert all(abs(p["mean"] - fp32) < 0.02 for p in points)  # on chip stays close to fp32 (hybrid chip, 1 s and 1 d)
    perf = report["performance"]
    assert perf["chip"]["qps"] > 0 and perf["cpu"]["qps"] > 0
    assert perf["ratios"]["qps"] == pytest.approx(perf["chip"]["qps"] / perf["cpu"]["qps"])
    assert sum(report["energy_breakdown"].values()) == pytest.approx(perf["chip"]["energy_per_inference_j"], rel=1e-6)
    assert {t["table"] for t in report["tiers"]} == {f"embeddings.{k}" for k in range(7)}
    assert report["reference"]["qps_ratio"] == 66.0 and report["reference"]["qps_per_w_ratio"] == 181.0
    assert html.read_text().count("data:image/png;base64,") == 3


def test_recsys_configuration_places_tiers_and_estimates():
    result = run_recsys_config(RecsysConfig(tables=(20000, 5000), dim=16, pooling=2, batch=32, sample_batches=4), Console(width=160, record=True))
    for tier in result["tiers"]:
        assert sum(tier["placement"].values()) == tier["rows"]
    assert result["cost"]["qps"] > 0 and result["host_roofline"]["qps"] > 0
    assert result["ratios"]["qps"] == pytest.approx(result["cost"]["qps"] / result["host_roofline"]["qps"])


def test_recsys_configuration_refuses_bad_shapes():
    with pytest.raises(CimflowError, match="--shape 'huge'"):
        run_recsys_config(RecsysConfig(shape="huge"), Console(record=True))
    with pytest.raises(CimflowError, match="positive"):
        run_recsys_config(RecsysConfig(tables=(0,)), Console(record=True))
