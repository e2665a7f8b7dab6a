"""Sharding embedding tables across several identical chips (cards).

The three strategies TorchRec's planner names:

- ``table_wise``: a whole table on one chip;
- ``row_wise``: a table's rows split into contiguous ranges on several chips; each chip
  pools the lookups that fall in its range and sends a partial sum (``dim`` values per bag);
- ``column_wise``: a table's embedding columns split across chips; every chip serves
  every lookup for its columns and sends its slice of the pooled vector.

``auto`` puts each table whole on the chip with the lowest lookup load among those with
room, largest tables first, and splits a table row-wise only when no chip has room for it.
The number of chips is the user's, or the fewest with room for the tables and for the dense
part (the MLPs need ``dense_chips``). Capacities are per chip and per table width, in rows,
from the chip's tiers (:func:`cimflow.compile.tiers.tier_capacities_rows`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cimflow.chip.spec import Chip
from cimflow.errors import CompileError

STRATEGIES = ("auto", "table_wise", "row_wise", "column_wise")
MAX_CHIPS = 4096


@dataclass(frozen=True)
class TableShape:
    """A table to shard: rows, width, and mean lookups per query."""

    name: str
    rows: int
    dim: int
    pooling: float = 1.0


@dataclass(frozen=True)
class Shard:
    """One piece of a table on one chip: rows ``[row_start, row_stop)``, columns ``[col_start, col_stop)``."""

    table: str
    chip: int
    strategy: str
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def dim(self) -> int:
        return self.col_stop - self.col_start

    def to_dict(self) -> dict:
        return {"table": self.table, "chip": self.chip, "strategy": self.strategy, "rows": [self.row_start, self.row_stop],
                "columns": [self.col_start, self.col_stop]}


@dataclass
class ShardingPlan:
    """Where every table's shards live on ``chips`` chips."""

    chips: int
    shards: list[Shard]
    dense_chips: int = 1
    notes: list[str] = field(default_factory=list)

    def on_chip(self, chip: int) -> list[Shard]:
        return [s for s in self.shards if s.chip == chip]

    def of_table(self, table: str) -> list[Shard]:
        return [s for s in self.shards if s.table == table]

    def strategy(self, table: str) -> str:
        shards = self.of_table(table)
        return shards[0].strategy if shards else "none"

    def to_dict(self) -> dict:
        return {"chips": self.chips, "dense_chips": self.dense_chips,
                "tables": {t: {"strategy": self.strategy(t), "chips": sorted({s.chip for s in self.of_table(t)})}
                           for t in dict.fromkeys(s.table for s in self.shards)},
                "shards": [s.to_dict() for s in self.shards], "notes": list(self.notes)}


def scale_chip(chip: Chip, n: int) -> Chip:
    """The union of ``n`` identical chips as one chip description (cores and digital-unit
    throughput times ``n``): what a plan compiled across ``n`` chips is placed on."""
    if n == 1:
        return chip
    cores = chip.cores.model_copy(update={"count": chip.cores.count * n})
    unit = chip.digital_unit.model_copy(update={"ops_per_cycle": chip.digital_unit.ops_per_cycle * n})
    return chip.model_copy(update={"name": f"{chip.name} x{n}", "cores": cores, "digital_unit": unit})


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    edges = [total * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _pack(tables: Sequence[TableShape], n: int, capacity_rows: Callable[[int], int], strategy: str) -> list[Shard] | None:
    """Shards of every table on ``n`` chips, or None when they do not fit."""
    free = [1.0] * n  # fraction of each chip's table capacity still free
    load = [0.0] * n  # lookups per query already on each chip
    shards: list[Shard] = []
    for t in sorted(tables, key=lambda t: t.rows * t.dim, reverse=True):
        if strategy == "column_wise":
            parts = _split(t.dim, min(n, t.dim))
            for chip, (a, b) in zip(sorted(range(n), key=lambda c: (-free[c], load[c])), parts, strict=False):  # parts <= chips
                need = t.rows / max(capacity_rows(b - a), 1)
                if need > free[chip] + 1e-12:
                    return None
                free[chip] -= need
                load[chip] += t.pooling
                shards.append(Shard(t.name, chip, "column_wise", 0, t.rows, a, b))
            continue
        cap = max(capacity_rows(t.dim), 1)
        need = t.rows / cap
        if strategy == "row_wise" and n > 1:
            for chip, (a, b) in enumerate(_split(t.rows, n)):
                if (b - a) / cap > free[chip] + 1e-12:
                    return None
                free[chip] -= (b - a) / cap
                load[chip] += t.pooling * (b - a) / t.rows
                shards.append(Shard(t.name, chip, "row_wise", a, b, 0, t.dim))
            continue
        fits = [c for c in range(n) if free[c] + 1e-12 >= need]
        if fits:
            chip = min(fits, key=lambda c: (load[c], -free[c]))
            free[chip] -= need
            load[chip] += t.pooling
            shards.append(Shard(t.name, chip, "table_wise", 0, t.rows, 0, t.dim))
            continue
        if strategy == "table_wise":
            return None
        start = 0
        for chip in sorted(range(n), key=lambda c: -free[c]):
            take = min(int(free[chip] * cap), t.rows - start)
            if take <= 0:
                continue
            free[chip] -= take / cap
            load[chip] += t.pooling * take / t.rows
            shards.append(Shard(t.name, chip, "row_wise", start, start + take, 0, t.dim))
            start += take
            if start == t.rows:
                break
        if start < t.rows:
            return None
    return shards


def plan_sharding(tables: Sequence[TableShape], capacity_rows: Callable[[int], int], *, chips: int | None = None,
                  strategy: str = "auto", dense_chips: int = 1) -> ShardingPlan:
    """Shard ``tables`` over ``chips`` chips (None: the fewest that fit, at least ``dense_chips``).

    ``capacity_rows(dim)`` is the number of rows of width ``dim`` one chip holds for tables
    (all its tiers). A CompileError names the numbers when nothing fits.
    """
    if strategy not in STRATEGIES:
        raise CompileError(f"sharding strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not tables:
        raise CompileError("nothing to shard: no embedding tables")
    for t in tables:
        if t.rows < 1 or t.dim < 1 or not math.isfinite(t.pooling) or t.pooling < 0:
            raise CompileError(f"table {t.name!r}: rows and dim must be >= 1 and pooling >= 0, got {t.rows}, {t.dim}, {t.pooling}")
    if chips is not None and not 1 <= chips <= MAX_CHIPS:
        raise CompileError(f"chips must be between 1 and {MAX_CHIPS}, got {chips}")
    if chips is not None and chips < dense_chips:
        raise CompileError(f"the dense part (MLPs) needs {dense_chips} chips to hold its weights; {chips} were given")
    per_chip = capacity_rows(tables[0].dim)
    if per_chip <= 0 and strategy != "column_wise":
        raise CompileError(f"a chip holds no table rows of width {tables[0].dim} once the dense part is placed (capacity 0 rows)")
    if chips is not None:
        shards = _pack(tables, chips, capacity_rows, strategy)
        if shards is None:
            total = sum(t.rows for t in tables)
            raise CompileError(
                f"the tables ({len(tables)} tables, {total:,} rows of width {tables[0].dim}) do not fit on {chips} chips "
                f"holding {per_chip:,} rows each ({strategy} sharding): give more chips (--chips) "
                "or leave --chips out to choose automatically"
            )
        return ShardingPlan(chips, shards, dense_chips)
    total_values = sum(t.rows * t.dim for t in tables)
    lower = max(dense_chips, math.ceil(total_values / max(per_chip * tables[0].dim, 1)))
    for n in range(max(lower, 1), MAX_CHIPS + 1):
        shards = _pack(tables, n, capacity_rows, strategy)
        if shards is not None:
            return ShardingPlan(n, shards, dense_chips)
        if n > 2 * lower + 64:
            break
    raise CompileError(
        f"the tables ({len(tables)} tables, {sum(t.rows for t in tables):,} rows of width {tables[0].dim}) fit on no "
        f"system of up to {min(MAX_CHIPS, 2 * lower + 64)} chips holding {per_chip:,} rows each; "
        "describe a chip with a DRAM tier or more memory"
    )


__all__ = ["MAX_CHIPS", "STRATEGIES", "Shard", "ShardingPlan", "TableShape", "plan_sharding", "scale_chip"]
