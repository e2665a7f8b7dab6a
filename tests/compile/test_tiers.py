"""Hot/cold placement across SRAM, arrays and DRAM from measured access frequencies."""

from __future__ import annotations

import pytest
import torch

from cimflow.chip import load_preset
from cimflow.compile.tiers import ARRAYS, DRAM, SRAM, count_accesses, place_tables, tier_capacities_rows
from cimflow.errors import CompileError


def _zipf_indices(rows: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, rows + 1, dtype=torch.float64) ** 1.1
    perm = torch.randperm(rows, generator=g)
    return perm[torch.multinomial(p / p.sum(), n, replacement=True, generator=g)]


def test_hottest_rows_go_to_the_fastest_tier_and_capacities_hold():
    a = count_accesses("a", 1000, 16, [_zipf_indices(1000, 20000, 0)])
    b = count_accesses("b", 500, 16, [_zipf_indices(500, 5000, 1)])
    caps = {SRAM: 50, ARRAYS: 800, DRAM: 10_000}
    placed = place_tables([a, b], load_preset("hybrid-rram-sram-28nm"), capacities=caps)
    assert sum(p.placement.get(SRAM, 0) for p in placed) == 50
    assert sum(p.placement.get(ARRAYS, 0) for p in placed) == 800
    assert all(sum(p.placement.values()) == p.rows for p in placed)
    # every SRAM row is at least as hot as every row placed elsewhere
    counts = {(t.name, int(i)): int(c) for t in (a, b) for i, c in zip(t.row_ids, t.counts, strict=True)}
    hot = {(p.table, int(r)) for p in placed for r in p.hot_rows}
    coldest_hot = min(counts[k] for k in hot)
    hottest_other = max(c for k, c in counts.items() if k not in hot)
    assert coldest_hot >= hottest_other
    # skew: 50 of 1500 rows serve a large share of lookups
    share = sum(p.hit_fraction.get(SRAM, 0) * (20000 if p.table == "a" else 5000) for p in placed) / 25000
    assert share > 0.3


def test_table_too_large_for_every_tier_names_the_numbers():
    a = count_accesses("big", 10_000, 16, [torch.arange(100)])
    with pytest.raises(CompileError, match=r"table 'big' \(10,000 rows x 16\) does not fit: 8,900 rows are left"):
        place_tables([a], load_preset("hybrid-rram-sram-28nm"), capacities={SRAM: 100, ARRAYS: 1000, DRAM: 0})


def test_capacities_come_from_the_chip():
    chip = load_preset("hybrid-rram-sram-28nm")
    caps = tier_capacities_rows(chip, 16)
    emb = chip.array(chip.embedding_kind)
    assert caps[ARRAYS] == chip.arrays_on_chip(chip.embedding_kind) * emb.rows * (emb.weight_columns // 16)
    dig = chip.arrays[chip.roles.digital]
    assert caps[SRAM] == chip.arrays_on_chip(chip.roles.digital) * dig.rows * dig.cols // (16 * dig.weight_bits)
    assert (caps[DRAM] > 0) == (chip.dram is not None and bool(chip.dram.capacity_bytes))


def test_held_out_hits_on_zipf_agree_with_the_law_and_not_the_placement_sample():
    import numpy as np

    from cimflow.compile.tiers import held_out_hits, measure_held_out
    from cimflow.recsys.synthetic import sample_zipf_ranks, zipf_hit_fraction

    rows, alpha = 200_000, 1.05
    rng = np.random.default_rng(0)
    place = torch.from_numpy(sample_zipf_ranks(rows, alpha, 2_000_000, rng))  # enough to rank the tiers' rows
    held = torch.from_numpy(sample_zipf_ranks(rows, alpha, 100_000, rng))
    a = count_accesses("t", rows, 16, [place])
    caps = {SRAM: 2_000, ARRAYS: 20_000, DRAM: rows}
    (p,) = place_tables([a], load_preset("hybrid-rram-sram-28nm"), capacities=caps)
    in_sample = dict(p.hit_fraction)
    measure_held_out([p], [held])
    assert p.held_out and sum(p.hit_fraction.values()) == pytest.approx(1.0)
    law_sram = zipf_hit_fraction(rows, alpha, 2_000)
    law_arrays = zipf_hit_fraction(rows, alpha, 22_000) - law_sram
    assert p.hit_fraction[SRAM] == pytest.approx(law_sram, abs=0.02)
    assert p.hit_fraction[ARRAYS] == pytest.approx(law_arrays, abs=0.02)
    # the placement sample flatters its own placement: nothing it saw is ever in DRAM
    assert in_sample.get(DRAM, 0.0) < p.hit_fraction[DRAM]
    assert held_out_hits(p, held) == p.hit_fraction


def test_held_out_hits_on_uniform_access_go_where_the_rows_are():
    from cimflow.compile.tiers import held_out_hits

    rows = 1_000_000
    gen = torch.Generator().manual_seed(0)
    a = count_accesses("u", rows, 16, [torch.randint(0, rows, (50_000,), generator=gen)])
    (p,) = place_tables([a], load_preset("hybrid-rram-sram-28nm"), capacities={SRAM: 0, ARRAYS: 10_000, DRAM: rows})
    assert p.hit_fraction[ARRAYS] > 0.15  # in sample: 10,000 of the ~49,000 rows seen are in arrays
    held = held_out_hits(p, torch.randint(0, rows, (50_000,), generator=gen))
    assert held[ARRAYS] == pytest.approx(0.01, abs=0.003) and held[DRAM] == pytest.approx(0.99, abs=0.003)
    with pytest.raises(CompileError, match="held-out indices"):
        held_out_hits(p, torch.tensor([rows]))


# ---------------------------------------------------------------- the PIM (near-memory compute) tier
def test_pim_tier_sits_between_arrays_and_dram_and_its_capacity_is_at_stored_precision():
    from cimflow.compile.tiers import PIM, pim_row_bytes

    chip = load_preset("hbm-pim-recsys")
    caps = tier_capacities_rows(chip, 64)
    assert pim_row_bytes(chip, 64) == 64 * chip.pim.stored_bits // 8
    assert caps[PIM] == chip.pim.capacity_bytes // (64 * chip.pim.stored_bits // 8)
    assert caps[DRAM] == 0  # this card has no plain DRAM
    a = count_accesses("a", 1000, 16, [_zipf_indices(1000, 20000, 0)])
    placed = place_tables([a], chip, capacities={SRAM: 10, ARRAYS: 100, PIM: 500, DRAM: 1000})
    p = placed[0]
    assert p.placement == {SRAM: 10, ARRAYS: 100, PIM: 500, DRAM: 390}
    # seen rows fill the tiers hottest first: SRAM, arrays, then PIM before DRAM
    counts = dict(zip(a.row_ids.tolist(), a.counts.tolist(), strict=True))
    pim_min = min(counts[int(r)] for r in p.seen_rows[PIM])
    assert all(counts[int(r)] <= pim_min for r in p.seen_rows.get(DRAM, torch.empty(0)))


@pytest.mark.parametrize("k,f", [(1, 1.0), (20, 1.0), (20, 0.25), (7, 0.5), (3, 0.0)])
def test_pim_traffic_closed_form(k: int, f: float):
    from cimflow.compile.tiers import pim_traffic

    chip = load_preset("hbm-pim-recsys")
    p = chip.pim
    dim = 40  # 40 x 16 bit = 80 B: 3 bank accesses of 32 B per row, 3 bursts of 32 B per vector
    t = pim_traffic(chip, dim, k, f)
    assert t.lookups == pytest.approx(k * f)
    assert t.internal_bytes == pytest.approx(k * f * 3 * p.access_bytes)
    assert t.ops == pytest.approx(k * f * dim)
    # one pooled vector leaves per bag with at least one PIM row: 1 - (1 - f)^k
    assert t.vectors == pytest.approx(1 - (1 - f) ** k)
    assert t.external_bytes == pytest.approx((1 - (1 - f) ** k) * 3 * p.burst_bytes)
    assert t.external_bytes <= t.internal_bytes + 1e-12 or k * f < 1


def test_pim_traffic_is_zero_without_a_pim_block():
    from cimflow.compile.tiers import pim_traffic

    t = pim_traffic(load_preset("hybrid-rram-sram-28nm"), 64, 20, 1.0)
    assert (t.lookups, t.internal_bytes, t.ops, t.vectors, t.external_bytes) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_pim_traffic_bounds_hold_for_any_bag():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cimflow.compile.tiers import pim_traffic

    chip = load_preset("hbm-pim-recsys")

    @settings(max_examples=200, deadline=None)
    @given(k=st.floats(1.0, 1e4), f=st.floats(0.0, 1.0), dim=st.integers(1, 4096))
    def check(k: float, f: float, dim: int) -> None:
        t = pim_traffic(chip, dim, k, f)
        # a bag sends at most one vector, and no more than it has PIM rows: f <= 1 - (1 - f)^k <= min(1, k f)
        assert f - 1e-12 <= t.vectors <= min(1.0, k * f) + 1e-12
        assert t.internal_bytes >= t.lookups * dim * chip.pim.stored_bits / 8 - 1e-9
        assert t.ops == pytest.approx(t.lookups * dim)
        assert t.external_bytes <= (dim * chip.pim.result_bits / 8 + chip.pim.burst_bytes) * t.vectors + 1e-9

    check()


def test_a_bad_pim_block_is_one_clear_error():
    from cimflow.chip.io import chip_from_dict
    from cimflow.errors import ChipSpecError

    data = load_preset("hbm-pim-recsys").model_dump(mode="json", exclude_none=True)
    for field, value in (("units", 0), ("clock_hz", -1.0), ("bandwidth_bytes_per_s", float("nan")), ("lanes", 10**6)):
        bad = {**data, "pim": {**data["pim"], field: value}}
        with pytest.raises(ChipSpecError, match=f"pim.{field}"):
            chip_from_dict(bad, "test")
