"""Sharding tables over several chips: table-, row- and column-wise, and the chip count."""

from __future__ import annotations

import pytest

from cimflow.chip import load_preset
from cimflow.compile.sharding import TableShape, plan_sharding, scale_chip
from cimflow.errors import CompileError


def _cover(plan, table):
    """Every (row, column) of the table is held exactly once."""
    cells = 0
    for s in plan.of_table(table.name):
        assert 0 <= s.row_start < s.row_stop <= table.rows and 0 <= s.col_start < s.col_stop <= table.dim
        cells += s.rows * s.dim
    return cells == table.rows * table.dim


def test_fewest_chips_that_fit_table_wise_first():
    tables = [TableShape(f"t{i}", 600, 16, 2.0) for i in range(5)]
    # one chip holds 1000 rows: whole tables need 5 chips; auto splits what is left row-wise onto 3
    whole = plan_sharding(tables, lambda dim: 1000, strategy="table_wise")
    assert whole.chips == 5 and all(whole.strategy(t.name) == "table_wise" for t in tables)
    assert sorted(len(whole.on_chip(c)) for c in range(5)) == [1] * 5
    auto = plan_sharding(tables, lambda dim: 1000)
    assert auto.chips == 3  # ceil(5 x 600 / 1000)
    assert sum(auto.strategy(t.name) == "table_wise" for t in tables) >= 3
    assert all(_cover(auto, t) for t in tables) and all(_cover(whole, t) for t in tables)
    for c in range(3):  # no chip over capacity
        assert sum(s.rows for s in auto.on_chip(c)) <= 1000


def test_a_table_bigger_than_a_chip_is_split_row_wise():
    big = TableShape("big", 2500, 16, 4.0)
    plan = plan_sharding([big], lambda dim: 1000)
    assert plan.chips == 3 and plan.strategy("big") == "row_wise"
    assert _cover(plan, big)


def test_user_strategies_and_chip_count():
    tables = [TableShape("a", 800, 16, 1.0), TableShape("b", 400, 16, 1.0)]
    rw = plan_sharding(tables, lambda dim: 1000, chips=4, strategy="row_wise")
    assert rw.chips == 4 and all(len(rw.of_table(t.name)) == 4 for t in tables) and all(_cover(rw, t) for t in tables)
    cw = plan_sharding(tables, lambda dim: 1000 * 16 // dim, chips=4, strategy="column_wise")
    assert all(cw.strategy(t.name) == "column_wise" and len(cw.of_table(t.name)) == 4 for t in tables)
    assert all(s.dim == 4 and s.rows == next(t.rows for t in tables if t.name == s.table) for s in cw.shards)
    assert all(_cover(cw, t) for t in tables)


def test_what_fits_nowhere_is_one_clear_error():
    with pytest.raises(CompileError, match=r"do not fit on 2 chips holding 1,000 rows each"):
        plan_sharding([TableShape("a", 5000, 16)], lambda dim: 1000, chips=2)
    with pytest.raises(CompileError, match="table_wise"):
        plan_sharding([TableShape("a", 5000, 16)], lambda dim: 1000, chips=8, strategy="table_wise")
    with pytest.raises(CompileError, match="capacity 0 rows"):
        plan_sharding([TableShape("a", 10, 16)], lambda dim: 0)
    with pytest.raises(CompileError, match="rows and dim must be >= 1"):
        plan_sharding([TableShape("a", 0, 16)], lambda dim: 10)
    with pytest.raises(CompileError, match="needs 3 chips"):
        plan_sharding([TableShape("a", 10, 16)], lambda dim: 100, chips=2, dense_chips=3)
    with pytest.raises(CompileError, match="not one of"):
        plan_sharding([TableShape("a", 10, 16)], lambda dim: 100, strategy="diagonal")


def test_the_union_of_chips_has_n_times_the_cores_and_unit():
    chip = load_preset("hybrid-rram-sram-28nm")
    four = scale_chip(chip, 4)
    assert four.cores.count == 4 * chip.cores.count
    assert four.digital_unit.ops_per_cycle == 4 * chip.digital_unit.ops_per_cycle
    assert four.arrays == chip.arrays and scale_chip(chip, 1) is chip
