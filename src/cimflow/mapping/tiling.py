"""Tiling a logical weight matrix (in_features x out_features) onto rows x cols arrays."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cimflow.chip.spec import ArraySpec


@dataclass(frozen=True)
class TileGrid:
    """How one weight matrix (in_features x out_features) is cut into arrays.

    Inputs fill arrays ``rows`` at a time (``row_tiles``); outputs fill arrays
    ``weight_columns`` at a time (``col_tiles``). Within an array, rows are driven in
    groups of at most ``rows_per_read`` (the chip's active-row limit); each group is a
    separate read whose partial sums the ADC digitizes. The simulator lays the input out
    as ``read_groups`` groups of ``group_rows`` (zero-padded).
    """

    in_features: int
    out_features: int
    rows: int
    weight_columns: int
    rows_per_read: int
    segments: int = 1

    @property
    def row_tiles(self) -> int:
        return math.ceil(self.in_features / self.rows)

    @property
    def col_tiles(self) -> int:
        return math.ceil(self.out_features / self.weight_columns)

    @property
    def arrays(self) -> int:
        """Physical arrays: row tiles packed ``segments`` side by side, times column tiles."""
        return math.ceil(self.row_tiles / self.segments) * self.col_tiles

    @property
    def group_rows(self) -> int:
        """Rows in the largest separately digitized read group."""
        return min(self.rows, self.rows_per_read, self.in_features)

    @property
    def contiguous(self) -> bool:
        """Groups are consecutive blocks of ``group_rows`` inputs (one tile, or rows divisible by the group)."""
        return self.row_tiles == 1 or self.rows % self.group_rows == 0

    def group_sizes(self) -> list[int]:
        """Inputs in each read group, in order."""
        sizes = []
        for t in range(self.row_tiles):
            in_tile = min(self.rows, self.in_features - t * self.rows)
            full, rest = divmod(in_tile, self.group_rows)
            sizes += [self.group_rows] * full + ([rest] if rest else [])
        return sizes

    @property
    def read_groups(self) -> int:
        return len(self.group_sizes())

    @property
    def utilization(self) -> float:
        """Fraction of the allocated weight cells that hold a weight."""
        return (self.in_features * self.out_features) / (self.arrays * self.rows * self.weight_columns)

    @property
    def used_columns(self) -> int:
        """Weight columns one read digitizes (a packed segment reads only its own columns)."""
        return min(self.out_features, self.weight_columns)

    def to_dict(self) -> dict:
        return asdict(self)


def tile_grid(in_features: int, out_features: int, spec: ArraySpec, pack: bool = False) -> TileGrid:
    """Tile an (in_features x out_features) matrix onto arrays of ``spec``.

    ``pack`` (for lookup tables, whose reads drive only one row segment at a time): a tall,
    narrow matrix puts ``weight_columns // out_features`` row segments side by side in one
    array. Each read then drives one segment's rows and digitizes that segment's columns.
    """
    rows_per_read = spec.max_active_rows or spec.rows
    segments = max(1, spec.weight_columns // out_features) if pack and out_features <= spec.weight_columns else 1
    row_tiles = math.ceil(in_features / spec.rows)
    return TileGrid(in_features, out_features, spec.rows, spec.weight_columns, rows_per_read, min(segments, row_tiles))


def expected_lookup_reads(lookups: float, row_tiles: int, group_rows: int) -> float:
    """Expected reads of one bag of ``lookups`` rows spread uniformly over ``row_tiles`` row
    tiles, when a read drives up to ``group_rows`` of the bag's rows in one tile (the
    simulator's in-array pooling, :class:`cimflow.sim.embedding.CIMEmbeddingBag`): the
    tiles hit, ``R (1 - (1 - 1/R)^k)``, and never fewer than ``k / group_rows``."""
    if lookups <= 0:
        return 0.0
    tiles_hit = row_tiles * -math.expm1(lookups * math.log1p(-1.0 / row_tiles)) if row_tiles > 1 else 1.0
    return max(tiles_hit, lookups / group_rows)
