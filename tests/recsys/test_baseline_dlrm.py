"""The scaled, repeated DLRM CPU baseline (measure_dlrm_cpu): scaling, statistics of the
rounds, power sources, threads restored, bad input refused. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.errors import CimflowError
from cimflow.recsys.baseline import PRESET_CPU_POWER_W, llc_bytes, measure_dlrm_cpu
from cimflow.recsys.models import DLRMConfig, criteo_kaggle
from cimflow.recsys.scaled_model import build_scaled_dlrm, input_pool, scale_tables, split_pool
from cimflow.recsys.synthetic import SyntheticCriteo

CONFIG = DLRMConfig(4, [3000, 20000, 7], 8, [16, 8], [16, 1], pooling_factors=[1, 3, 2])
BUDGET = 40_000  # bytes: the full tables need 736,224


def _measure(config: DLRMConfig = CONFIG, **kwargs: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = dict(
        skew=1.05, batch_sizes=(8, 32), threads=1, memory_budget_bytes=BUDGET, rounds=3,
        min_run_time_s=0.01, pool_lookups=2000,
    )  # fmt: skip
    options.update(kwargs)
    return measure_dlrm_cpu(config, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return _measure(power_w=90.0)


def test_tables_are_scaled_by_one_recorded_factor(result) -> None:  # type: ignore[no-untyped-def]
    rows, factor = scale_tables(CONFIG.table_sizes, CONFIG.embedding_dim, BUDGET)
    assert result.table_scale == factor < 1.0
    assert rows == tuple(max(1, int(n * factor)) for n in CONFIG.table_sizes)
    assert result.table_bytes == sum(rows) * CONFIG.embedding_dim * 4 <= BUDGET
    assert result.full_table_bytes == CONFIG.embedding_bytes(4) > BUDGET
    assert result.num_tables == 3 and result.shape is None and result.skew == 1.05
    assert result.pool_lookups >= 2000


def test_round_statistics_are_consistent(result) -> None:  # type: ignore[no-untyped-def]
    assert result.batch_sizes == (8, 32) and sorted(result.per_batch) == [8, 32]
    assert result.rounds == 3 and result.threads == 1 and result.power_source == "user"
    for batch, m in result.per_batch.items():
        assert m.batch_size == batch and len(m.qps_rounds) == 3
        assert all(q > 0 for q in m.qps_rounds)
        assert m.qps_min == min(m.qps_rounds) <= m.qps_median <= m.qps_max == max(m.qps_rounds)
        assert m.qps_median == sorted(m.qps_rounds)[1]
        assert m.spread == pytest.approx((m.qps_max - m.qps_min) / m.qps_median)
        assert m.latency_s == pytest.approx(batch / m.qps_median)
        assert m.power_w == 90.0
        assert m.joules_per_query == pytest.approx(90.0 * m.latency_s / batch)
        assert m.qps_per_w == pytest.approx(m.qps_median / 90.0)
        assert len(m.cpu_qps_rounds) == 3 and min(m.cpu_qps_rounds) > 0
        assert m.cpu_qps_median == sorted(m.cpu_qps_rounds)[1]
        assert m.cpu_spread == pytest.approx((max(m.cpu_qps_rounds) - min(m.cpu_qps_rounds)) / m.cpu_qps_median)


def test_result_is_plain_json_and_described(result) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["per_batch"]["32"]["qps_median"] == result.per_batch[32].qps_median
    assert data["table_scale"] == result.table_scale and data["batch_sizes"] == [8, 32]
    line = result.describe()
    assert "\n" not in line and line == data["description"]
    assert f"x{result.table_scale:.3g}" in line and "batch 32" in line and "1 thread," in line
    assert "median of 3 rounds" in line and f"spread {100 * result.per_batch[32].spread:.1f} %" in line
    assert "batch 8," in result.describe(8)


def test_threads_are_restored_and_preset_power_without_rapl(tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out = _measure(batch_sizes=(16,), threads=1, rounds=1, rapl_root=tmp_path)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert out.threads == 1 and out.power_source == "preset"
    assert out.per_batch[16].power_w == PRESET_CPU_POWER_W
    m = out.per_batch[16]
    assert m.spread == 0.0 and m.qps_min == m.qps_median == m.qps_max


def test_criteo_shape_is_named_and_tiny_tables_keep_one_row() -> None:
    config = criteo_kaggle()
    out = _measure(config, batch_sizes=(4,), rounds=1, memory_budget_bytes=1 << 20, preset_power_w=200.0)
    assert out.shape == "criteo-kaggle" and out.num_tables == 26
    assert out.table_bytes <= 1 << 20 and out.full_table_bytes == config.embedding_bytes(4)
    assert out.per_batch[4].power_w in (200.0,) or out.power_source == "rapl"
    rows, _ = scale_tables(config.table_sizes, 16, 1 << 20)
    assert min(rows) == 1 and rows[2] > rows[0]  # the 10 M-row table keeps the most rows


def test_pool_batches_are_the_generated_samples_in_order() -> None:
    pool = input_pool(CONFIG, 1.05, samples=40, chunk=20, seed=3)
    assert len(pool) == 2
    batches = split_pool(pool, 8)  # 2 per chunk, 4 samples of each chunk dropped
    assert len(batches) == 4
    generator = SyntheticCriteo.from_config(CONFIG, alpha=1.05, seed=3)
    for n, (dense, pairs) in enumerate(batches):
        chunk, start = divmod(n, 2)
        want_dense, want_sparse, _ = generator.batch(20, chunk)
        want = want_sparse.take(list(range(8 * start, 8 * start + 8))).per_feature()
        assert torch.equal(dense, want_dense[8 * start : 8 * start + 8])
        for (values, offsets), (want_values, want_offsets) in zip(pairs, want, strict=True):
            assert torch.equal(values, want_values) and torch.equal(offsets, want_offsets)


def test_scaled_model_has_the_scaled_rows_and_finite_outputs() -> None:
    rows, _ = scale_tables(CONFIG.table_sizes, CONFIG.embedding_dim, BUDGET)
    model = build_scaled_dlrm(CONFIG.replace(table_sizes=rows), seed=0)
    assert [bag.num_embeddings for bag in model.embeddings] == list(rows)
    dense, pairs = split_pool(input_pool(CONFIG.replace(table_sizes=rows), 1.05, 8, 8, 0), 8)[0]
    with torch.inference_mode():
        out = model(dense, pairs)
    assert out.shape == (8,) and bool(torch.isfinite(out).all())


def test_unscaled_when_the_tables_fit() -> None:
    assert scale_tables([10, 20], 4, 10_000) == ((10, 20), 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 10**9), min_size=1, max_size=30),
    st.integers(1, 64),
    st.integers(0, 10**7),
)
def test_scaled_tables_fit_the_budget(sizes: list[int], dim: int, extra: int) -> None:
    budget = len(sizes) * 4 * dim + extra
    rows, factor = scale_tables(sizes, dim, budget)
    assert len(rows) == len(sizes) and 0 < factor <= 1.0
    assert all(1 <= r <= n for r, n in zip(rows, sizes, strict=True))
    assert sum(rows) * 4 * dim <= budget
    if factor == 1.0:
        assert rows == tuple(sizes)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"batch_sizes": (8, 0)}, "batch_sizes"),
        ({"batch_sizes": (-4,)}, "batch_sizes"),
        ({"threads": 0}, "threads"),
        ({"rounds": 0}, "rounds"),
        ({"memory_budget_bytes": 3 * 8 * 4 - 1}, "1 row of each of the 3 tables"),
        ({"memory_budget_bytes": 0}, "memory_budget_bytes"),
        ({"skew": -0.5}, "skew"),
        ({"min_run_time_s": -1.0}, "min_run_time_s"),
        ({"power_w": 0.0}, "power"),
        ({"preset_power_w": -5.0}, "power"),
        ({"pool_lookups": 0}, "pool_lookups"),
    ],
)
def test_bad_input_is_refused(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(CimflowError, match=needle):
        _measure(**kwargs)


def test_bad_config_sizes_are_refused() -> None:
    with pytest.raises(CimflowError, match="table_sizes"):
        DLRMConfig(4, [10, 0], 8, [8], [1])
    with pytest.raises(CimflowError, match="dim"):
        scale_tables([10], 0, 1000)


def _cache(root: Path, index: int, level: int, kind: str, size: str) -> None:
    folder = root / f"index{index}"
    folder.mkdir()
    (folder / "level").write_text(f"{level}\n")
    (folder / "type").write_text(f"{kind}\n")
    (folder / "size").write_text(f"{size}\n")


def test_llc_is_the_largest_highest_level_data_cache(tmp_path: Path) -> None:
    _cache(tmp_path, 0, 1, "Data", "48K")
    _cache(tmp_path, 1, 1, "Instruction", "64K")
    _cache(tmp_path, 2, 2, "Unified", "2048K")
    _cache(tmp_path, 3, 3, "Unified", "32M")
    assert llc_bytes(tmp_path) == 32 << 20
    assert llc_bytes(tmp_path / "missing") is None
