"""CPU baseline harness: invariants of the result, power sources, RAPL counter reading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cimflow.errors import CimflowError
from cimflow.recsys.baseline import PRESET_CPU_POWER_W, RaplMeter, measure_cpu_baseline
from cimflow.recsys.models import DLRM, DLRMConfig

CONFIG = DLRMConfig(4, [50, 200, 7], 8, [16, 8], [16, 1], pooling_factors=[1, 3, 2])


def _measure(**kwargs):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return measure_cpu_baseline(
        DLRM(CONFIG), batch_sizes=(1, 16), threads=1, warmup=1, repeats=3, min_time_s=0.0, **kwargs
    )


def test_user_power_gives_consistent_energy_figures() -> None:
    result = _measure(power_w=80.0)
    assert result.power_source == "user" and result.threads == 1 and result.batch_sizes == [1, 16]
    for batch, m in result.per_batch.items():
        assert m.batch_size == batch and m.calls >= 3
        assert m.qps == pytest.approx(batch / m.latency_s)
        assert m.joules_per_query == pytest.approx(80.0 * m.latency_s / batch)
        assert m.qps_per_watt == pytest.approx(m.qps / 80.0)
        assert m.latency_p90_s >= m.latency_s > 0


def test_without_rapl_the_preset_is_used(tmp_path: Path) -> None:
    result = _measure(rapl_root=tmp_path)
    assert result.power_source == "preset"
    assert all(m.power_w == PRESET_CPU_POWER_W for m in result.per_batch.values())


def _fake_zone(root: Path, name: str, energy_uj: int, max_uj: int = 1000_000) -> Path:
    zone = root / name
    zone.mkdir()
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_meter_sums_packages_and_handles_wrap(tmp_path: Path) -> None:
    p0 = _fake_zone(tmp_path, "intel-rapl:0", 900_000)
    _fake_zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone of package 0: not added
    p1 = _fake_zone(tmp_path, "intel-rapl:1", 10)
    meter = RaplMeter(tmp_path)
    assert [z.name for z in meter.zones] == ["intel-rapl:0", "intel-rapl:1"]
    before = meter.read()
    (p0 / "energy_uj").write_text("100000\n")  # wrapped: 900000 -> 1000000 -> 100000
    (p1 / "energy_uj").write_text("2000010\n")
    after = meter.read()
    assert meter.joules_between(before, after) == pytest.approx((200_000 + 2_000_000) * 1e-6)


def test_a_counter_that_does_not_advance_falls_back_to_the_preset(tmp_path: Path) -> None:
    _fake_zone(tmp_path, "intel-rapl:0", 42)
    assert RaplMeter(tmp_path).available
    assert _measure(rapl_root=tmp_path).power_source == "preset"


def test_threads_are_restored_and_bad_arguments_refused() -> None:
    before = torch.get_num_threads()
    _measure(power_w=10.0)
    assert torch.get_num_threads() == before
    with pytest.raises(CimflowError, match="batch_sizes"):
        measure_cpu_baseline(DLRM(CONFIG), batch_sizes=(0,))
    with pytest.raises(CimflowError, match="power"):
        measure_cpu_baseline(DLRM(CONFIG), power_w=-1.0)
