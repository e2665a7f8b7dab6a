"""Hot/cold placement of embedding rows across the chip's memory tiers.

From measured access frequencies, the hottest rows (over all tables) go to the fastest
tier, the next to the dense non-volatile arrays, the rest to DRAM when the chip has one:

- ``sram``: the chip's digital-CIM arrays left over after the plan's MLPs (exact lookups);
- ``arrays``: the embedding array kind (in-array pooling, with the device's non-idealities);
- ``pim``: near-memory compute DRAM (``chip.pim``, HBM-PIM / AiM class), when the chip has
  one: rows are pooled by the banks' compute units and only pooled vectors leave the DRAM
  (:func:`pim_traffic`);
- ``dram``: off-chip memory, when the chip describes one (exact lookups, DRAM energy).

Each tier's capacity in rows comes from the chip description. A table that does not fit
in any combination of tiers is a :class:`~cimflow.errors.CompileError` with the numbers.

**Held-out hits.** Rows are placed from one access sample; the fraction of lookups each
tier serves is measured on *another* sample (:func:`held_out_hits`), so it does not
flatter the placement (on uniform access almost every held-out lookup hits a row the
placement sample never saw). Rows never seen in the placement sample are exchangeable:
held-out lookups of such rows are shared among the tiers in proportion to the unseen rows
each tier holds (their expected share when nothing distinguishes them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from cimflow.chip.spec import Chip
from cimflow.compile.plan import ARRAY, Plan
from cimflow.errors import CompileError

SRAM, ARRAYS, PIM, DRAM = "sram", "arrays", "pim", "dram"
TIERS = (SRAM, ARRAYS, PIM, DRAM)


@dataclass
class TableAccess:
    """Measured accesses of one table: row ids and their hit counts (rows never seen are
    colder than any seen row)."""

    name: str
    rows: int
    dim: int
    row_ids: torch.Tensor
    counts: torch.Tensor

    @property
    def total_hits(self) -> int:
        return int(self.counts.sum())


@dataclass
class TablePlacement:
    """Where one table's rows live.

    ``seen_rows[tier]``: row ids of the placement sample placed in that tier (the hottest
    first over all tables); ``placement[tier]``: rows per tier, seen and unseen;
    ``hit_fraction[tier]``: the fraction of lookups the tier serves — on the placement
    sample itself until :func:`held_out_hits` replaces it by held-out measurements
    (``held_out`` then says so).
    """

    table: str
    rows: int
    dim: int
    seen_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    placement: dict[str, int] = field(default_factory=dict)
    hit_fraction: dict[str, float] = field(default_factory=dict)
    held_out: bool = False

    @property
    def hot_rows(self) -> torch.Tensor:
        """Row ids served exactly from the SRAM tier (sorted)."""
        return self.seen_rows.get(SRAM, torch.empty(0, dtype=torch.int64))

    def unseen_rows(self, tier: str) -> int:
        """Rows of the tier that the placement sample never saw."""
        seen = self.seen_rows.get(tier)
        return self.placement.get(tier, 0) - (int(seen.numel()) if seen is not None else 0)

    def to_dict(self) -> dict:
        return {"table": self.table, "rows": self.rows, "dim": self.dim, "placement": dict(self.placement),
                "hit_fraction": dict(self.hit_fraction),
                "hit_fraction_measured_on": "held-out sample" if self.held_out else "placement sample"}


def dram_row_bytes(chip: Chip, dim: int) -> int:
    """Bytes one row of ``dim`` values takes in the chip's DRAM, at its stored precision."""
    bits = chip.dram.stored_bits if chip.dram is not None and chip.dram.stored_bits else 32
    return max(-(-dim * bits // 8), 1)


def dram_access_bytes(chip: Chip, dim: int) -> int:
    """Bytes a DRAM read of one row moves: whole bursts of ``dram.access_bytes``."""
    burst = chip.dram.access_bytes if chip.dram is not None else 64
    return -(-dram_row_bytes(chip, dim) // burst) * burst


def pim_row_bytes(chip: Chip, dim: int) -> int:
    """Bytes one row of ``dim`` values takes in the PIM tier, at its stored precision."""
    bits = chip.pim.stored_bits if chip.pim is not None else 16
    return max(-(-dim * bits // 8), 1)


@dataclass(frozen=True)
class PimTraffic:
    """What the PIM tier does per query for one table (see :func:`pim_traffic`)."""

    lookups: float
    internal_bytes: float
    ops: float
    vectors: float
    external_bytes: float


def pim_traffic(chip: Chip, dim: int, lookups_per_query: float, pim_fraction: float) -> PimTraffic:
    """Per query, one table's rows served from the PIM tier.

    ``lookups_per_query`` lookups of the table (its pooling factor), ``pim_fraction`` of them in
    PIM. Each such row is read inside the banks in whole ``access_bytes`` units at the stored
    precision (``internal_bytes``) and added lane by lane (``dim`` ops). A bag sends one pooled
    vector out when at least one of its rows is in PIM: with lookups independent, a bag of
    ``k`` lookups does so with probability ``1 - (1 - f)^k`` (``vectors``), each of ``dim`` values
    at ``result_bits`` in whole bursts (``external_bytes``).
    """
    if chip.pim is None or lookups_per_query <= 0 or pim_fraction <= 0:
        return PimTraffic(0.0, 0.0, 0.0, 0.0, 0.0)
    p = chip.pim
    f = min(max(pim_fraction, 0.0), 1.0)
    lookups = lookups_per_query * f
    per_row = -(-pim_row_bytes(chip, dim) // p.access_bytes) * p.access_bytes
    vectors = 1.0 - (1.0 - f) ** lookups_per_query
    vec_raw = -(-dim * p.result_bits // 8)
    vec_bytes = -(-vec_raw // p.burst_bytes) * p.burst_bytes
    return PimTraffic(lookups=lookups, internal_bytes=lookups * per_row, ops=lookups * dim, vectors=vectors,
                      external_bytes=vectors * vec_bytes)


def tier_capacities_rows(chip: Chip, dim: int, plan: Plan | None = None, reserve_sram_for_plan: bool = True) -> dict[str, int]:
    """Rows of width ``dim`` each tier can hold, from the chip description."""
    caps = dict.fromkeys(TIERS, 0)
    emb = chip.array(chip.embedding_kind)
    if emb.kind == "analog":
        per_array = emb.rows * max(1, emb.weight_columns // dim) if dim <= emb.weight_columns else emb.rows // -(-dim // emb.weight_columns)
        used = 0
        if plan is not None:
            used = sum(o.arrays * o.replication for o in plan.ops
                       if o.substrate == ARRAY and o.array_kind == chip.embedding_kind and o.op_type not in ("Embedding", "EmbeddingBag"))
        caps[ARRAYS] = max(chip.arrays_on_chip(chip.embedding_kind) - used, 0) * per_array
    if chip.roles.digital is not None:
        dig = chip.arrays[chip.roles.digital]
        spare = chip.arrays_on_chip(chip.roles.digital)
        if plan is not None and reserve_sram_for_plan:
            spare -= sum(o.arrays * o.replication for o in plan.ops if o.substrate == ARRAY and o.array_kind == chip.roles.digital)
        bits = max(spare, 0) * dig.rows * dig.cols
        caps[SRAM] = bits // (dim * (dig.weight_bits or 8))
    if chip.pim is not None:
        caps[PIM] = chip.pim.capacity_bytes // pim_row_bytes(chip, dim)
    if chip.dram is not None and chip.dram.capacity_bytes:
        caps[DRAM] = chip.dram.capacity_bytes // dram_row_bytes(chip, dim)
    return caps


def place_tables(accesses: Sequence[TableAccess], chip: Chip, plan: Plan | None = None,
                 capacities: Mapping[str, int] | None = None) -> list[TablePlacement]:
    """Greedy hottest-first placement over all tables (all tables share the tiers).

    ``capacities`` (rows per tier) overrides the chip-derived ones. Rows never seen in the
    access sample are placed after every seen row, in the cheapest tier that has room.
    """
    if not accesses:
        return []
    dims = {a.dim for a in accesses}
    if len(dims) != 1 and capacities is None:
        raise CompileError(f"tables of different widths {sorted(dims)}: give capacities per tier explicitly")
    caps = dict(capacities) if capacities is not None else tier_capacities_rows(chip, accesses[0].dim, plan)
    left = {t: int(caps.get(t, 0)) for t in TIERS}
    # every seen row of every table, hottest first
    table_of = torch.cat([torch.full((a.row_ids.numel(),), i, dtype=torch.int64) for i, a in enumerate(accesses)])
    ids = torch.cat([a.row_ids.to(torch.int64) for a in accesses])
    counts = torch.cat([a.counts.to(torch.float64) for a in accesses])
    order = torch.argsort(counts, descending=True, stable=True)
    placed = [dict.fromkeys(TIERS, 0) for _ in accesses]
    hits = [dict.fromkeys(TIERS, 0.0) for _ in accesses]
    seen: list[dict[str, list[torch.Tensor]]] = [{t: [] for t in TIERS} for _ in accesses]
    start = 0
    for tier in TIERS:
        take = min(left[tier], order.numel() - start)
        if take <= 0:
            continue
        chosen = order[start : start + take]
        owner = table_of[chosen]
        for i in range(len(accesses)):
            mine = chosen[owner == i]
            placed[i][tier] += mine.numel()
            hits[i][tier] += float(counts[mine].sum())
            seen[i][tier].append(ids[mine])
        left[tier] -= take
        start += take
    if start < order.numel():
        raise CompileError(f"the tables do not fit: {order.numel() - start} frequently used rows are left after every tier is full "
                           f"(capacity in rows: {caps})")
    # rows never seen: fill what remains, the slowest tier last
    result = []
    for i, a in enumerate(accesses):
        unseen = a.rows - int(a.row_ids.numel())
        for tier in (ARRAYS, PIM, DRAM, SRAM):
            take = min(left[tier], unseen)
            placed[i][tier] += take
            left[tier] -= take
            unseen -= take
        if unseen > 0:
            raise CompileError(
                f"table {a.name!r} ({a.rows:,} rows x {a.dim}) does not fit: {unseen:,} rows are left after every tier is full "
                f"(capacity in rows: {', '.join(f'{t} {int(caps.get(t, 0)):,}' for t in TIERS)}); add a DRAM tier to the chip, "
                "use a bigger chip or several chips (--chips)"
            )
        total = max(a.total_hits, 1)
        result.append(TablePlacement(
            table=a.name, rows=a.rows, dim=a.dim,
            seen_rows={t: torch.cat(v).sort().values for t, v in seen[i].items() if v and sum(x.numel() for x in v)},
            placement={t: n for t, n in placed[i].items() if n},
            hit_fraction={t: h / total for t, h in hits[i].items() if h},
        ))
    return result


def held_out_hits(placement: TablePlacement, indices: torch.Tensor) -> dict[str, float]:
    """Fraction of ``indices`` (held-out lookups of the table) each tier serves.

    Lookups of rows the placement sample saw are counted where those rows were placed;
    lookups of unseen rows are shared among the tiers in proportion to the unseen rows
    each tier holds.
    """
    flat = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    n = flat.numel()
    if n == 0:
        return {}
    if int(flat.min()) < 0 or int(flat.max()) >= placement.rows:
        raise CompileError(f"table {placement.table!r}: held-out indices must lie in [0, {placement.rows}), "
                           f"got {int(flat.min())}..{int(flat.max())}")
    counts = dict.fromkeys(TIERS, 0.0)
    remaining = torch.ones(n, dtype=torch.bool)
    for tier, rows in placement.seen_rows.items():
        hit = torch.isin(flat, rows)
        counts[tier] += float(hit.sum())
        remaining &= ~hit
    unseen_lookups = float(remaining.sum())
    unseen = {t: placement.unseen_rows(t) for t in TIERS}
    total_unseen = sum(unseen.values())
    if unseen_lookups and total_unseen <= 0:  # pragma: no cover - every row is placed somewhere
        raise CompileError(f"table {placement.table!r}: held-out lookups of rows that no tier holds")
    for t in TIERS:
        if total_unseen:
            counts[t] += unseen_lookups * unseen[t] / total_unseen
    return {t: c / n for t, c in counts.items() if c}


def measure_held_out(placements: Sequence[TablePlacement], indices: Sequence[torch.Tensor]) -> None:
    """Replace each placement's hit fractions by those measured on held-out ``indices``
    (one tensor of lookups per table, in the same order)."""
    if len(placements) != len(indices):
        raise CompileError(f"{len(indices)} held-out index sets for {len(placements)} tables")
    for p, idx in zip(placements, indices, strict=True):
        if torch.as_tensor(idx).numel():
            p.hit_fraction = held_out_hits(p, idx)
            p.held_out = True


def count_accesses(name: str, rows: int, dim: int, indices: Sequence[torch.Tensor]) -> TableAccess:
    """Exact hit counts of one table over index batches (memory ~ distinct rows seen)."""
    flat = torch.cat([torch.as_tensor(i, dtype=torch.int64).reshape(-1) for i in indices]) if indices else torch.empty(0, dtype=torch.int64)
    ids, counts = torch.unique(flat, return_counts=True)
    return TableAccess(name, rows, dim, ids, counts)
