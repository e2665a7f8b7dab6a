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
    counts = {("a", int(i)): int(c) for i, c in zip(a.row_ids, a.counts)} | {("b", int(i)): int(c) for i, c in zip(b.row_ids, b.counts)}
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
