"""Array yield in embedding tables: dead rows (after spare-row repair) and dead columns of the
arrays holding a table's rows leave those cells stuck at g_min, drawn per array from a hash of
the array index (the same law as matrix layers, :mod:`cimflow.physics.devices.array_yield`)."""

from __future__ import annotations

import math

import torch
from cimtest import chip_with

from cimflow.sim import CIMEmbeddingBag, HashedTable, TensorTable
from cimflow.sim.array_state import table_dead_cells

ROWS, COLS = 64, 16  # a small array, so a few thousand arrays are cheap


def _chip(**yield_fields: object):
    return chip_with("rram-analog-generic", **{"arrays.rram.rows": ROWS, "arrays.rram.cols": COLS,
                                              "arrays.rram.max_active_rows": 16, "arrays.rram.device.array_yield": yield_fields})


def _device(**yield_fields: object):
    chip = _chip(**yield_fields)
    return chip.array("rram").device


def _binomial_excess(n: int, p: float, spares: int) -> float:
    """E[max(0, K - spares)], K ~ Binomial(n, p): the unrepaired dead rows of an array."""
    return sum(max(0, k - spares) * math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1))


def _dead(device, rows: torch.Tensor, s_count: int = 1, dim: int = COLS, seed: int = 0, side: str = "pos") -> torch.Tensor:
    dead = table_dead_cells(rows, s_count, dim, device, seed, "t", side, (ROWS, COLS))
    assert dead is not None
    return dead


def test_dead_rows_after_repair_match_the_binomial_excess() -> None:
    rate, spares, arrays = 0.05, 2, 3000
    device = _device(dead_row_rate=rate, spare_rows=spares)
    dead = _dead(device, torch.arange(arrays * ROWS))[0]  # (rows, dim)
    row_dead = dead.all(dim=1)
    assert bool((dead.any(dim=1) == row_dead).all())  # a dead row takes every column of its array with it
    per_array = row_dead.view(arrays, ROWS).sum(dim=1).float()
    expected = _binomial_excess(ROWS, rate, spares)
    sd = math.sqrt(ROWS * rate * (1 - rate) / arrays)  # the excess varies less than K itself
    assert abs(float(per_array.mean()) - expected) < 5 * sd, (float(per_array.mean()), expected)


def test_affected_cells_match_the_closed_form() -> None:
    p_row, p_col, spares, arrays, s_count = 0.04, 0.03, 1, 2000, 2
    device = _device(dead_row_rate=p_row, dead_col_rate=p_col, spare_rows=spares)
    dead = _dead(device, torch.arange(arrays * ROWS), s_count=s_count, dim=2 * COLS)  # two column tiles
    q_row = _binomial_excess(ROWS, p_row, spares) / ROWS
    expected = 1 - (1 - q_row) * (1 - p_col)
    # the sample: 2 x 2000 arrays, each with 64 rows and 2 x 16 columns: per-line sampling errors
    lines_row, lines_col = 2 * arrays * ROWS, 2 * arrays * s_count * COLS
    tol = 5 * (math.sqrt(ROWS * p_row / (2 * arrays)) / ROWS + math.sqrt(p_col * (1 - p_col) / lines_col)) + 1 / lines_row
    assert abs(float(dead.float().mean()) - expected) < tol, (float(dead.float().mean()), expected, tol)
    # columns: per slice, a dead column is dead in every row of its array
    col_dead = dead[:, :ROWS].all(dim=1)  # (S, dim) of array row-tile 0
    assert bool((dead[:, :ROWS].sum(dim=1) >= ROWS * col_dead).all())


def test_repaired_rows_are_not_dead() -> None:
    spares = 5
    device = _device(dead_row_rate=1.0, spare_rows=spares)  # every row dead: the first 5 of an array repaired
    rows = torch.arange(40 * ROWS)
    dead = _dead(device, rows)[0]
    assert bool((dead.all(dim=1) == (rows % ROWS >= spares)).all())
    assert not bool(dead[rows % ROWS < spares].any())
    nothing = _dead(_device(dead_row_rate=0.3, spare_rows=ROWS), rows)
    assert not bool(nothing.any())


def test_same_seed_same_dead_lines_in_any_subset_or_order() -> None:
    device = _device(dead_row_rate=0.05, dead_col_rate=0.05, spare_rows=1)
    rows = torch.arange(300 * ROWS)
    full = _dead(device, rows, s_count=2, dim=40)
    assert torch.equal(full, _dead(device, rows, s_count=2, dim=40))
    pick = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))[:500]
    assert torch.equal(_dead(device, rows[pick], s_count=2, dim=40), full[:, pick])
    other = _dead(device, rows, s_count=2, dim=40, seed=1)
    assert not torch.equal(full, other)
    # the rows of an array are shared by both sides; the columns are each side's own
    neg = _dead(device, rows, s_count=2, dim=40, side="neg")
    assert torch.equal(full.all(dim=(0, 2)), neg.all(dim=(0, 2)))
    assert not torch.equal(full, neg)


def test_zero_rates_draw_nothing_and_change_nothing() -> None:
    assert table_dead_cells(torch.arange(10), 1, 4, _device(dead_row_rate=0.0, spare_rows=3), 0, "t", "pos", (ROWS, COLS)) is None
    torch.manual_seed(0)
    weight = torch.randn(500, 12)
    plain = CIMEmbeddingBag(TensorTable(weight), _chip().array("rram"), "rram", name="e")
    zero = CIMEmbeddingBag(TensorTable(weight), _chip(dead_row_rate=0.0, dead_col_rate=0.0, spare_rows=4).array("rram"),
                           "rram", name="e")
    plain.program(3)
    zero.program(3)
    assert plain.pool_cache is not None and zero.pool_cache is not None
    assert torch.equal(plain.pool_cache, zero.pool_cache)


def _g_min_fraction(layer: CIMEmbeddingBag, rows: torch.Tensor) -> float:
    g_pos, g_neg, _, _ = layer._programmed(rows)
    g_min = layer.spec.device.g_min
    return float((g_pos == g_min).float().mean() + (g_neg == g_min).float().mean()) / 2


def test_cached_and_hashed_tables_agree_in_distribution() -> None:
    p_row, p_col = 0.03, 0.1
    chip = _chip(dead_row_rate=p_row, dead_col_rate=p_col, spare_rows=0)
    spec = chip.array("rram")
    torch.manual_seed(1)
    cached = CIMEmbeddingBag(TensorTable(0.05 * torch.randn(200 * ROWS, COLS)), spec, "rram", name="small")
    lazy = CIMEmbeddingBag(HashedTable(10**9, COLS, seed=2, scale=0.05, name="big"), spec, "rram", name="big")
    cached.program(0)
    lazy.program(0)
    assert cached.pool_cache is not None and lazy.pool_cache is None
    rows = torch.arange(200 * ROWS)
    far = torch.randint(0, 10**9 // ROWS, (400,), generator=torch.Generator().manual_seed(3)) * ROWS
    far_rows = (far.unsqueeze(1) + torch.arange(ROWS)).reshape(-1)  # 400 whole arrays far into the table
    expected = 1 - (1 - p_row) * (1 - p_col)  # no spares: every dead row stays dead
    stuck_off = spec.device.stuck_off_rate  # healthy cells stuck at g_min too
    expected = 1 - (1 - expected) * (1 - stuck_off)
    for layer, r in ((cached, rows), (lazy, far_rows)):
        arrays = r.numel() // ROWS
        tol = 5 * (math.sqrt(p_row / (arrays * ROWS)) + math.sqrt(p_col / (2 * arrays * COLS)))
        assert abs(_g_min_fraction(layer, r) - expected) < tol, (layer.layer_name, _g_min_fraction(layer, r), expected)
    # the cached table's effective weights are the lazily programmed ones, dead cells included
    pick = torch.tensor([0, 5, 777, 12_799])
    w, _ = cached._effective(*cached._programmed(pick))
    assert cached.w_cache is not None
    assert torch.equal(cached.w_cache[pick], w.permute(1, 0, 2))


def test_a_table_with_every_column_dead_reads_nothing() -> None:
    spec = _chip(dead_col_rate=1.0).array("rram")
    torch.manual_seed(2)
    layer = CIMEmbeddingBag(TensorTable(torch.randn(300, 8)), spec, "rram", name="e")
    layer.program(0)
    g_pos, g_neg, _, _ = layer._programmed(torch.arange(300))
    assert bool((g_pos == spec.device.g_min).all()) and bool((g_neg == spec.device.g_min).all())
    # what the outcome table and the pooled reads are built from: both sides at g_min, no weight
    w, _ = layer._effective_rows(torch.arange(300))
    assert float(w.abs().max()) < 1e-6


def test_a_table_with_every_column_dead_reads_finite_values_in_bounded_time() -> None:
    """Every cell at g_min leaves no conductance spread, so the expected ADC full scale falls to
    its floor and the read noise spans billions of codes; the outcome table must still be built
    (its code steps are bounded by the code range) and the pooled values stay finite."""
    import signal

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("the forward did not finish within 120 s: the outcome table's code steps are unbounded")

    chip = _chip(dead_col_rate=1.0)
    bag = CIMEmbeddingBag(torch.nn.EmbeddingBag(200, COLS, mode="sum"), chip.array("rram"), "rram")
    bag.program(seed=0)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)  # a liveness guard (a hang becomes a failure), not a speed check
    try:
        with torch.no_grad():
            out = bag(torch.arange(20), torch.arange(20))  # one row per bag: lone reads, the outcome table
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert bool(torch.isfinite(out).all())
