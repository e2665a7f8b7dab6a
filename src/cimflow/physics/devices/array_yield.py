"""Array yield: dead rows and columns, repaired by spare rows where there are enough.

Each physical row (column) of an array is dead with probability ``dead_row_rate``
(``dead_col_rate``), independently. Up to ``spare_rows`` dead rows per array are replaced by
spare rows (row redundancy, the usual repair of memory arrays); the dead rows beyond that and
every dead column leave their cells stuck at g_min (an open line carries no current). So the
probability that an array keeps an unrepaired dead row is P(Binomial(rows, p) > spares).
"""

from __future__ import annotations

import math

import torch

from cimflow.chip.spec import ArrayYield


def unrepaired_dead_rows(arrays: int, rows: int, spec: ArrayYield, generator: torch.Generator,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (arrays, rows): the dead rows that no spare row repairs. Each row is dead with
    probability ``dead_row_rate``; the first ``spare_rows`` dead rows of an array (in row
    order) are repaired."""
    return rows_unrepaired(torch.rand((arrays, rows), generator=generator, device=device), spec)


def dead_columns(shape: tuple[int, ...], spec: ArrayYield, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``shape``: each column dead with probability ``dead_col_rate`` (columns are not repaired)."""
    return columns_dead(torch.rand(shape, generator=generator, device=device), spec)


def rows_unrepaired(row_uniforms: torch.Tensor, spec: ArrayYield) -> torch.Tensor:
    """The law of dead rows on uniform (0, 1) draws, whatever their source (a seeded generator
    for matrix layers, a hash of the array index for tables): boolean ``row_uniforms.shape``
    (..., rows), one array per last-axis line; a row is dead below ``dead_row_rate`` and the
    first ``spare_rows`` dead rows of an array, in row order, are repaired."""
    dead = row_uniforms < spec.dead_row_rate
    rank = dead.to(torch.int32).cumsum(dim=-1)  # 1-based rank of each dead row in its array
    return dead & (rank > spec.spare_rows)


def columns_dead(col_uniforms: torch.Tensor, spec: ArrayYield) -> torch.Tensor:
    """The law of dead columns on uniform (0, 1) draws: dead below ``dead_col_rate``, never repaired."""
    return col_uniforms < spec.dead_col_rate


def dead_cells(target_shape: tuple[int, int, int], rows: int, cols: int, spec: ArrayYield, row_generator: torch.Generator,
               col_generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (S, in, out): the cells of a weight matrix's slices (S, in, out), tiled over arrays
    of ``rows`` x ``cols`` (row tiles along ``in``, column tiles along ``out``), that sit on an
    unrepaired dead row or a dead column. The rows of an array are shared by all its slices
    (and by both sides of a differential pair: give both the same ``row_generator`` seed);
    every slice has its own columns."""
    s_count, in_features, out_columns = target_shape
    row_tiles, col_tiles = -(-in_features // rows), -(-out_columns // cols)
    bad_rows = unrepaired_dead_rows(row_tiles * col_tiles, rows, spec, row_generator, device)  # (arrays, rows)
    bad_cols = dead_columns((s_count, row_tiles * col_tiles, cols), spec, col_generator, device)  # (S, arrays, cols)
    i = torch.arange(in_features, device=device)
    j = torch.arange(out_columns, device=device)
    array = (i // rows).unsqueeze(1) * col_tiles + (j // cols).unsqueeze(0)  # (in, out): the array holding each cell
    on_dead_row = bad_rows[array, (i % rows).unsqueeze(1)]  # only the cells in use: never a whole 65536 x 65536 array
    on_dead_col = bad_cols[:, array, (j % cols).unsqueeze(0)]
    return on_dead_row.unsqueeze(0) | on_dead_col


def unrepaired_row_probability(rows: int, spec: ArrayYield) -> float:
    """P(an array keeps at least one unrepaired dead row) = P(Binomial(rows, p) > spares)."""
    p = spec.dead_row_rate
    if p == 0:
        return 0.0
    if p == 1:
        return 1.0 if rows > spec.spare_rows else 0.0
    repaired = sum(math.comb(rows, k) * p**k * (1 - p) ** (rows - k) for k in range(min(spec.spare_rows, rows) + 1))
    return max(0.0, 1.0 - repaired)
