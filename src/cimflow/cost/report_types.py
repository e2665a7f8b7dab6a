"""Result types of the cost model and their terminal rendering.

Everything is SI (joules, seconds, square metres); :func:`print_cost` converts to
engineering units (pJ/nJ/uJ, ns/us, mm²) only for display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cimflow.fileio import json_safe

#: Energy components, in report order.
COMPONENTS = (
    "cells_lines",           # analog cell conduction + line charging
    "dac_drivers",           # DACs / word-line drivers
    "adc",                   # conversions
    "adder_tree_shift_add",  # digital CIM adder trees; shift-add accumulation after ADCs
    "buffers",               # on-chip activation buffer traffic
    "interconnect",          # inter-core traffic (chip level)
    "dram",                  # DRAM traffic (host ops' weights and looked-up rows)
    "digital_unit",          # the digital vector unit
    "host",                  # host processor compute (roofline time x power)
    "leakage",               # static power x time per inference (chip level)
)
#: Components that depend on the input data (the rest are fixed per op).
DATA_DEPENDENT_COMPONENTS = ("cells_lines", "dac_drivers", "adc", "adder_tree_shift_add")


def zero_components() -> dict[str, float]:
    return dict.fromkeys(COMPONENTS, 0.0)


@dataclass
class OpCost:
    """Cost of one operator per inference.

    ``energy_j`` holds the energy by component (data-dependent when ``data_dependent``,
    else equal to ``fixed_energy_j``); ``events`` the counts the energies were computed
    from (array reads, driven rows, cell reads, conversions, adds, bit operations, buffer
    bits, DRAM bits, host FLOPs and bytes); ``activity`` the row activity and skipped-read
    fraction used (fixed and data-dependent); ``area_m2`` the arrays it occupies (copies
    included).
    """

    name: str
    op_type: str
    kind: str
    substrate: str
    array_kind: str | None
    energy_j: dict[str, float]
    fixed_energy_j: dict[str, float]
    latency_s: float
    area_m2: float
    data_dependent: bool = False
    events: dict[str, float] = field(default_factory=dict)
    activity: dict[str, float] = field(default_factory=dict)

    @property
    def total_energy_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def total_fixed_energy_j(self) -> float:
        return sum(self.fixed_energy_j.values())

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "name": self.name, "op_type": self.op_type, "kind": self.kind, "substrate": self.substrate,
            "array_kind": self.array_kind, "energy_j": dict(self.energy_j), "fixed_energy_j": dict(self.fixed_energy_j),
            "total_energy_j": self.total_energy_j, "total_fixed_energy_j": self.total_fixed_energy_j,
            "latency_s": self.latency_s, "area_m2": self.area_m2, "data_dependent": self.data_dependent,
            "events": dict(self.events), "activity": dict(self.activity),
        })


@dataclass
class CostReport:
    """Energy, latency, area and throughput of one inference of a plan.

    One *inference* is one forward pass of the plan's example inputs (``batch_size``
    samples, i.e. queries). ``energy_j`` is per inference and data-dependent when
    statistics were given (``data_dependent``); ``fixed_energy_j`` is the per-op estimate
    without them; ``energy_ratio = energy_j / fixed_energy_j`` and ``relative_change =
    ratio - 1`` say how far the data moved the result.

    Rates: ``throughput_per_s`` inferences per second (steady state), ``qps`` = batch_size x
    throughput; ``power_w`` = energy_j x throughput_per_s; ``tops`` = 2 x MACs / latency (one
    inference alone), ``tops_sustained`` = 2 x MACs x throughput; ``tops_per_w`` = 2 x MACs /
    energy_j / 1e12; ``tops_per_mm2`` = tops / chip area in mm²; ``qps_per_w`` = queries per
    joule = batch_size / energy_j.
    """

    chip: str
    model_name: str
    host: str
    batch_size: int
    per_op: list[OpCost]
    by_component: dict[str, float]
    fixed_by_component: dict[str, float]
    energy_j: float
    fixed_energy_j: float
    latency_s: float
    chip_latency_s: float
    host_latency_s: float
    throughput_per_s: float
    macs: int
    area_m2: float
    area_by_component: dict[str, float]
    data_dependent: bool
    schedule_mode: str
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    #: One-time cost of writing the weights into the arrays (not part of ``energy_j``).
    program_energy_j: float = 0.0
    program_time_s: float = 0.0

    @property
    def energy_ratio(self) -> float:
        return self.energy_j / self.fixed_energy_j if self.fixed_energy_j > 0 else 1.0

    @property
    def relative_change(self) -> float:
        return self.energy_ratio - 1.0

    @property
    def energy_per_query_j(self) -> float:
        return self.energy_j / self.batch_size

    @property
    def qps(self) -> float:
        return self.batch_size * self.throughput_per_s

    @property
    def power_w(self) -> float:
        return self.energy_j * self.throughput_per_s

    @property
    def ops(self) -> float:
        """Operations per inference, 2 per MAC."""
        return 2.0 * self.macs

    @property
    def tops(self) -> float:
        return self.ops / self.latency_s / 1e12 if self.latency_s > 0 else math.inf

    @property
    def tops_sustained(self) -> float:
        return self.ops * self.throughput_per_s / 1e12

    @property
    def tops_per_w(self) -> float:
        return self.ops / self.energy_j / 1e12 if self.energy_j > 0 else math.inf

    @property
    def area_mm2(self) -> float:
        return self.area_m2 * 1e6

    @property
    def tops_per_mm2(self) -> float:
        return self.tops / self.area_mm2 if self.area_mm2 > 0 else math.inf

    @property
    def qps_per_w(self) -> float:
        return self.batch_size / self.energy_j if self.energy_j > 0 else math.inf

    def op(self, name: str) -> OpCost:
        for o in self.per_op:
            if o.name == name:
                return o
        from cimflow.errors import CimflowError

        raise CimflowError(f"the cost report has no op {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite numbers become null)."""
        return json_safe({
            "chip": self.chip, "model_name": self.model_name, "host": self.host, "batch_size": self.batch_size,
            "schedule_mode": self.schedule_mode, "data_dependent": self.data_dependent,
            "energy_j": self.energy_j, "fixed_energy_j": self.fixed_energy_j, "energy_ratio": self.energy_ratio,
            "relative_change": self.relative_change, "energy_per_query_j": self.energy_per_query_j,
            "latency_s": self.latency_s, "chip_latency_s": self.chip_latency_s, "host_latency_s": self.host_latency_s,
            "throughput_per_s": self.throughput_per_s, "qps": self.qps, "power_w": self.power_w, "macs": self.macs,
            "tops": self.tops, "tops_sustained": self.tops_sustained, "tops_per_w": self.tops_per_w,
            "tops_per_mm2": self.tops_per_mm2, "qps_per_w": self.qps_per_w, "area_m2": self.area_m2,
            "area_mm2": self.area_mm2, "area_by_component_m2": dict(self.area_by_component),
            "by_component_j": dict(self.by_component), "fixed_by_component_j": dict(self.fixed_by_component),
            "per_op": [o.to_dict() for o in self.per_op], "notes": list(self.notes), "options": dict(self.options),
            "program_energy_j": self.program_energy_j, "program_time_s": self.program_time_s,
        })


# ----------------------------------------------------------------------------- printing

def format_energy(joules: float) -> str:
    """Engineering units: fJ, pJ, nJ, uJ, mJ, J."""
    if joules == 0:
        return "0"
    for unit, size in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12)):
        if abs(joules) >= size:
            return f"{joules / size:.3g} {unit}"
    return f"{joules / 1e-15:.3g} fJ"


def format_time(seconds: float) -> str:
    """Engineering units: ps, ns, us, ms, s."""
    if seconds == 0:
        return "0"
    if not math.isfinite(seconds):
        return str(seconds)
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(seconds) >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / 1e-12:.3g} ps"


def format_area(m2: float) -> str:
    """mm² (um² below 0.001 mm²)."""
    if m2 == 0:
        return "0"
    mm2 = m2 * 1e6
    return f"{mm2:.3g} mm²" if mm2 >= 1e-3 else f"{m2 * 1e12:.3g} um²"


def _rate(x: float, unit: str) -> str:
    return f"{x:.3g} {unit}" if math.isfinite(x) else "inf"


def print_cost(report: CostReport, console: Any = None, all_ops: bool = False) -> None:
    """Rich tables: per operator (energy by component, latency, area) and per component
    (data-dependent and fixed), then the totals. Ops that cost nothing are hidden unless
    ``all_ops``."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shown = [c for c in COMPONENTS if report.by_component.get(c, 0) > 0 or report.fixed_by_component.get(c, 0) > 0]
    op_cols = [c for c in shown if c not in ("interconnect", "leakage")]
    title = f"cost: {report.model_name or 'model'} on {report.chip} ({'data-dependent' if report.data_dependent else 'fixed per-op'})"
    table = Table(title=title)
    for col in ["op", "type", "substrate"] + op_cols + ["total", "latency", "area"]:
        table.add_column(col, justify="left" if col in ("op", "type", "substrate") else "right")
    for o in report.per_op:
        if not all_ops and o.total_energy_j == 0 and o.latency_s == 0:
            continue
        where = f"{o.substrate}:{o.array_kind}" if o.array_kind else o.substrate
        table.add_row(o.name, o.op_type, where, *[format_energy(o.energy_j.get(c, 0.0)) for c in op_cols],
                      format_energy(o.total_energy_j), format_time(o.latency_s), format_area(o.area_m2))
    console.print(table)
    comp = Table(title="energy per inference by component")
    for col in ("component", "energy", "share", "fixed estimate"):
        comp.add_column(col, justify="left" if col == "component" else "right")
    for c in shown:
        e = report.by_component[c]
        comp.add_row(c, format_energy(e), f"{e / report.energy_j:.1%}" if report.energy_j > 0 else "",
                     format_energy(report.fixed_by_component[c]))
    comp.add_row("total", format_energy(report.energy_j), "100%", format_energy(report.fixed_energy_j))
    console.print(comp)
    lines = [
        f"energy {format_energy(report.energy_j)} per inference ({report.batch_size} queries: "
        f"{format_energy(report.energy_per_query_j)} per query)",
        f"latency {format_time(report.latency_s)} (chip {format_time(report.chip_latency_s)}, host {format_time(report.host_latency_s)}), "
        f"throughput {_rate(report.throughput_per_s, 'inferences/s')} = {_rate(report.qps, 'QPS')}, power {_rate(report.power_w, 'W')}",
        f"{_rate(report.tops, 'TOPS')} (sustained {_rate(report.tops_sustained, 'TOPS')}), {_rate(report.tops_per_w, 'TOPS/W')}, "
        f"{_rate(report.tops_per_mm2, 'TOPS/mm²')}, {_rate(report.qps_per_w, 'QPS/W')}, chip area {format_area(report.area_m2)}",
    ]
    if report.data_dependent:
        lines.append(f"data-dependent energy is {report.energy_ratio:.3f}x the fixed per-op estimate "
                     f"({report.relative_change:+.1%})")
    for line in lines:
        console.print(line)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


__all__ = ["COMPONENTS", "DATA_DEPENDENT_COMPONENTS", "CostReport", "OpCost", "format_area", "format_energy",
           "format_time", "print_cost", "zero_components"]
