"""Terminal rendering of a Plan."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cimflow.compile.plan import ARRAY, Plan


def _si_time(seconds: float) -> str:
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def print_plan(plan: Plan, console: Console, explain: bool = False, all_ops: bool = False) -> None:
    """Per operator: substrate, arrays, utilization, replication, cycles; then totals.

    Data-movement and boundary ops are hidden unless ``all_ops``; ``explain`` adds each op's
    reason and source location and lists host ops."""
    table = Table(title=f"plan: {plan.model_name or 'model'} on {plan.chip.name} ({plan.schedule.mode})")
    cols = ["op", "type", "kind", "substrate", "arrays", "util", "repl", "cycles"]
    if explain:
        cols += ["why", "source"]
    for c in cols:
        table.add_column(c, justify="right" if c in ("arrays", "util", "repl", "cycles") else "left")
    for o in plan.ops:
        if not all_ops and not explain and o.kind in ("data_movement", "input", "output"):
            continue
        sub = f"array:{o.array_kind}" if o.substrate == ARRAY else o.substrate
        row = [o.name, o.op_type, o.kind, sub, str(o.arrays or ""), f"{o.utilization:.0%}" if o.arrays else "",
               str(o.replication) if o.arrays else "", f"{o.cycles:,}" if o.cycles else ""]
        if explain:
            row += [o.reason, o.source_location]
        table.add_row(*row)
    console.print(table)
    t = plan.totals()
    used = ", ".join(f"{k}: {v} of {t['arrays_on_chip'][k]}" for k, v in t["arrays_used"].items()) or "none"
    console.print(
        f"arrays used: {used} | ops by substrate: {t['ops_by_substrate']} | MACs: {t['macs']:,} ({t['array_macs']:,} on arrays)\n"
        f"latency {_si_time(plan.schedule.latency_s)} (critical path), layer-by-layer {_si_time(plan.schedule.layer_by_layer_s)}, "
        f"steady-state {plan.schedule.throughput_per_s:,.0f} inferences/s (bottleneck {plan.schedule.bottleneck}) | "
        f"inter-core traffic {plan.placement.traffic_byte_hops:,.0f} byte-hops per inference"
    )
    for w in plan.warnings:
        console.print(f"[yellow]note:[/yellow] {w}")
