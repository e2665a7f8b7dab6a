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


def dead_line_mask(rows: int, cols: int, arrays: int, spec: ArrayYield, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (arrays, rows, cols): the cells on an unrepaired dead row or a dead column.
    A dead row is repaired when no more than ``spare_rows`` rows of its array are dead;
    otherwise the first ``spare_rows`` dead rows (in row order) are repaired."""
    u_rows = torch.rand((arrays, rows), generator=generator, device=device)
    u_cols = torch.rand((arrays, cols), generator=generator, device=device)
    dead_rows = u_rows < spec.dead_row_rate
    rank = dead_rows.to(torch.int32).cumsum(dim=1)  # 1-based rank of each dead row in its array
    unrepaired = dead_rows & (rank > spec.spare_rows)
    dead_cols = u_cols < spec.dead_col_rate
    return unrepaired.unsqueeze(2) | dead_cols.unsqueeze(1)


def unrepaired_row_probability(rows: int, spec: ArrayYield) -> float:
    """P(an array keeps at least one unrepaired dead row) = P(Binomial(rows, p) > spares)."""
    p = spec.dead_row_rate
    if p == 0:
        return 0.0
    if p == 1:
        return 1.0 if rows > spec.spare_rows else 0.0
    repaired = sum(math.comb(rows, k) * p**k * (1 - p) ** (rows - k) for k in range(min(spec.spare_rows, rows) + 1))
    return max(0.0, 1.0 - repaired)


def tile_dead_cells(mask: torch.Tensor, in_features: int, out_columns: int, rows: int, cols: int) -> torch.Tensor:
    """Map an (arrays, rows, cols) dead-line mask onto an (in_features, out_columns) matrix
    tiled row-major over a grid of arrays (tile (i // rows, j // cols) is array
    ``(i // rows) * col_tiles + j // cols``): the matrix cells that sit on dead lines."""
    row_tiles, col_tiles = -(-in_features // rows), -(-out_columns // cols)
    grid = mask[: row_tiles * col_tiles].reshape(row_tiles, col_tiles, rows, cols)
    full = grid.permute(0, 2, 1, 3).reshape(row_tiles * rows, col_tiles * cols)
    return full[:in_features, :out_columns]
