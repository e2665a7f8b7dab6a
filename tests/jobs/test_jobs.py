"""End-to-end jobs: the main RecSys job and user RecSys configurations."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

import cimflow
from cimflow.errors import CimflowError
from cimflow.jobs.recsys import RunConfig, run_recsys
from cimflow.jobs.recsys_config import RecsysConfig, run_recsys_config


@pytest.mark.slow
def test_main_job_writes_reports_with_consistent_numbers(tmp_path):
    out, html = tmp_path / "report.json", tmp_path / "report.html"
    report = run_recsys(RunConfig(instances=2, times=("1s", "1d"), sample_queries=512, skip_cpu_measurement=True, out=out, html=html),
                        Console(width=160, record=True))
    saved = json.loads(out.read_text())
    assert saved["accuracy"]["fp32"] == pytest.approx(report["accuracy"]["fp32"])
    fp32 = report["accuracy"]["fp32"]
    assert fp32 > 0.75  # the MovieLens DLRM learns
    points = report["accuracy"]["series"][0]["points"]
    assert [p["t"] for p in points] == ["1s", "1d"] and all(len(p["values"]) == 2 for p in points)
    assert all(abs(p["mean"] - fp32) < 0.02 for p in points)  # on chip stays close to fp32 (hybrid chip, 1 s and 1 d)
    perf = report["performance"]
    assert perf["workload"]["shape"] == "criteo-kaggle"
    assert perf["chip"]["qps"] > 0 and perf["cpu_roofline"]["qps"] > 0 and "cpu" not in perf  # measurement skipped
    assert perf["ratios"]["qps"] == pytest.approx(perf["chip"]["qps"] / perf["cpu_roofline"]["qps"])
    assert sum(report["energy_breakdown"].values()) == pytest.approx(perf["chip"]["energy_per_inference_j"], rel=1e-6)
    head = report["headline"]
    assert head["auc_loss"] == pytest.approx(fp32 - points[-1]["mean"])
    assert head["bound_by"] == perf["chip"]["bound_by"] and "181x" in head["text"]
    assert report["recsys"]["utilization"][head["bound_by"]] == pytest.approx(1.0)
    moved = {p["assumption"] for p in report["sensitivity"]}
    assert {"DRAM bandwidth", "host link bandwidth", "ADC energy per conversion", "access skew (Zipf exponent)"} <= moved
    assert {t["table"] for t in report["tiers"]} == {f"embeddings.{k}" for k in range(7)}
    assert report["reference"]["qps_ratio"] == 66.0 and report["reference"]["qps_per_w_ratio"] == 181.0
    assert html.read_text().count("data:image/png;base64,") == 4


def _quiet(**kw) -> RecsysConfig:
    return RecsysConfig(quiet=True, **kw)


def _check_bounds(result):
    assert result["qps"] > 0 and result["qps_per_w"] > 0
    assert result["bound_by"] in result["utilization"]
    assert result["utilization"][result["bound_by"]] == pytest.approx(1.0)
    assert all(0 <= u <= 1 + 1e-9 for u in result["utilization"].values())


def test_recsys_configuration_places_tiers_and_estimates():
    config = RecsysConfig(tables=(20000, 5000), dim=16, pooling=2, batch=32, sample_queries=512)
    result = run_recsys_config(config, Console(width=160, record=True))
    for tier in result["tiers"]:
        assert sum(tier["placement"].values()) == tier["rows"]
        assert sum(tier["hit_fraction"].values()) == pytest.approx(1.0)
        assert tier["hit_fraction_measured_on"] == "held-out sample"
    _check_bounds(result)
    assert result["chips"] == 1 and result["qps_per_chip"] == pytest.approx(result["qps"])
    assert result["ratios"]["qps"] == pytest.approx(result["qps"] / result["cpu"]["roofline"]["qps"])


def test_uniform_access_over_huge_tables_is_bound_by_dram_not_arrays():
    tables = (10**7,) * 26
    result = run_recsys_config(_quiet(tables=tables, dim=64, pooling=20, skew=0.0, sample_queries=256))
    _check_bounds(result)
    assert result["bound_by"] in ("DRAM", "host link")
    for t in result["tiers"]:  # uniform access: each tier serves its share of the rows
        assert t["placement"]["dram"] > 0.9 * t["rows"]
        assert t["hit_fraction"]["dram"] == pytest.approx(t["placement"]["dram"] / t["rows"], abs=0.01)
    # the QPS is below what the DRAM can feed: 26 x 20 lookups x >= 64 B (int8 rows of 64 values, one burst)
    chip = cimflow.load_chip("hybrid-rram-sram-28nm")
    dram_lookups = sum(t["lookups_per_query"] * t["hit_fraction"]["dram"] for t in result["tiers"])
    assert result["qps"] <= chip.dram.bandwidth_bytes_per_s / (dram_lookups * 64) * (1 + 1e-9)


def test_held_out_hits_do_not_depend_on_the_batch_and_follow_the_law():
    small = run_recsys_config(_quiet(tables=(200_000, 50_000), dim=16, pooling=4, skew=1.1, batch=16, sample_queries=4096))
    large = run_recsys_config(_quiet(tables=(200_000, 50_000), dim=16, pooling=4, skew=1.1, batch=1024, sample_queries=4096))
    assert [t["hit_fraction"] for t in small["tiers"]] == [t["hit_fraction"] for t in large["tiers"]]
    for t in small["tiers"]:
        law = t["access_law"]["hit_fraction"]
        assert t["access_law"]["alpha"] == pytest.approx(1.1)
        for tier in ("sram", "arrays", "dram"):
            assert t["hit_fraction"][tier] == pytest.approx(law[tier], abs=0.02)


@pytest.mark.parametrize("shape", ["criteo-kaggle", "dlrm-v2"])
def test_production_shapes_run_on_the_hybrid_preset_with_chips_chosen_automatically(shape):
    result = run_recsys_config(_quiet(shape=shape, sample_queries=128))
    _check_bounds(result)
    if shape == "dlrm-v2":  # its MLPs (~16M weights) need more SRAM than one chip has
        assert result["chips"] > 1 and result["sharding"]["dense_chips"] > 1
    assert result["qps_per_chip"] == pytest.approx(result["qps"] / result["chips"])
    assert {t["table"] for t in result["tiers"]} == {f"embeddings.{k}" for k in range(26)}
    assert sum(result["system"]["energy_per_query_by_part_j"].values()) == pytest.approx(1 / result["qps_per_w"])


def test_user_chip_count_and_row_wise_sharding():
    result = run_recsys_config(_quiet(tables=(400_000, 100_000), dim=16, pooling=4, chips=2, sharding="row_wise", sample_queries=512))
    _check_bounds(result)
    assert result["chips"] == 2 and all(t["sharding"] == "row_wise" and t["chips"] == [0, 1] for t in result["tiers"])
    assert any(k.startswith("chip link") for k in result["utilization"])


def test_recsys_configuration_refuses_bad_input():
    with pytest.raises(CimflowError, match="--shape 'huge'"):
        run_recsys_config(_quiet(shape="huge"))
    with pytest.raises(CimflowError, match="--tables"):
        run_recsys_config(_quiet(tables=(0,)))
    with pytest.raises(CimflowError, match="--tables"):
        run_recsys_config(_quiet(tables=(-5, 10)))
    with pytest.raises(CimflowError, match="--pooling"):
        run_recsys_config(_quiet(pooling=1_000_000_000))
    with pytest.raises(CimflowError, match="--skew"):
        run_recsys_config(_quiet(skew=float("inf")))
    with pytest.raises(CimflowError, match="--chips"):
        run_recsys_config(_quiet(chips=0))
    # a chip with no DRAM tier cannot hold 10^9 rows on 2 chips: one line with the numbers
    with pytest.raises(CimflowError, match=r"do not fit on 2 chips holding [\d,]+ rows each"):
        run_recsys_config(_quiet(tables=(10**9,), dim=16, pooling=1, chip="rram-analog-generic", chips=2, sample_queries=64))


def test_a_recorded_access_trace_drives_placement_and_held_out_hits(tmp_path):
    import numpy as np
    import torch

    from cimflow.recsys.synthetic import SyntheticCriteo
    from cimflow.recsys.traces import AccessTrace, save_trace

    sizes, pools, batch = (50_000, 20_000), (3, 5), 2048
    data = SyntheticCriteo(table_sizes=sizes, pooling_factors=pools, alpha=1.2, seed=3)
    _, jagged, _ = data.batch(batch, 0)
    trace = AccessTrace(keys=("a", "b"), indices=jagged.values.to(torch.int64), offsets=jagged.offsets.to(torch.int64),
                        batch_size=batch, table_sizes=sizes)
    path = tmp_path / "trace.npz"
    save_trace(path, trace)
    result = run_recsys_config(_quiet(trace=path, dim=16, sample_queries=16))
    _check_bounds(result)
    assert [t["rows"] for t in result["tiers"]] == list(sizes)
    assert result["workload"]["sample_queries"] == batch // 2
    for t, p in zip(result["tiers"], pools, strict=True):
        assert t["lookups_per_query"] == pytest.approx(p)
        assert t["access_law"]["alpha_source"] == "fitted to the placement sample"
        assert t["access_law"]["alpha"] == pytest.approx(1.2, abs=0.1)
    assert np.isclose(sum(result["tiers"][0]["hit_fraction"].values()), 1.0)


def test_tables_that_fit_nowhere_even_on_many_chips_are_one_clear_error():
    # rram-analog-generic has no DRAM tier: 10^11 rows would need far more chips than any system has
    with pytest.raises(CimflowError, match=r"fit on no system of up to [\d,]+ chips"):
        run_recsys_config(_quiet(tables=(10**11,), dim=16, pooling=1, chip="rram-analog-generic", sample_queries=64))
