"""The system model: steady-state QPS is bounded by the slowest resource the work crosses.

A compiled plan's own schedule says how fast its *operators* can go. A served model also
crosses memories and links, and on a real card one of those usually binds first. This
module takes one estimate (:func:`cimflow.cost.estimate`) of a plan, the traffic each chip
sees per query (:class:`ChipTraffic`) and the number of chips, and returns a
:class:`SystemReport`: QPS, the binding resource, every resource's utilization at that QPS
(never above 1), energy per query and QPS/W.

Resources (``capacity`` per second, ``demand`` per query; ``max QPS = capacity / demand``):

============  ==============================================================  ==================
resource      demand per query                                                capacity
============  ==============================================================  ==================
arrays        the slowest array op's time per query (ops on different arrays  1 s/s
              run in parallel; replicas already divide it)
digital unit  every digital-unit op's time (one unit: they add up) + the      1 s/s per chip
              pooling adds of rows from the SRAM/DRAM tiers on that chip
SRAM tier     hot rows read x bytes per row (at the SRAM kind's weight bits)  macros holding hot
                                                                              rows x cols/8 B x clock
DRAM          cold rows read x bytes moved per row (whole bursts at the       ``dram.bandwidth``
              stored precision, :func:`~cimflow.compile.tiers.dram_access_bytes`)
PIM banks     rows pooled in the PIM tier x bytes read per row inside the     ``pim`` units x
              banks (whole ``access_bytes`` at ``pim.stored_bits``)           access_bytes x clock
PIM units     lane adds of those rows (``dim`` per row)                       units x lanes x clock
PIM interface pooled vectors out of the PIM DRAM (one per bag with a PIM      ``pim.bandwidth``
              row, :func:`~cimflow.compile.tiers.pim_traffic`)
host link     the larger direction: dense features + indices + offsets in,    ``host_link``
              results out                                                     bandwidth
chip links    pooled vectors and activations between chips (several chips)    ``chip_link`` bandwidth
host          operators the plan leaves on the host (listed, never silent)    1 s/s
interconnect  activation bytes between cores (when the chip gives a bandwidth) ``interconnect`` bandwidth
buffers       bits through the on-chip buffers (when the chip gives a bandwidth) ``buffer`` bandwidth
============  ==============================================================  ==================

Energy per query = the plan's dynamic energy (its leakage term removed) + link bits x
energy per bit + (leakage + board static power) x chips / QPS. Leakage is what the chip
states (:func:`~cimflow.cost.estimate.leakage_power_w`); a chip that states none gets
``board.leakage_w_per_mm2`` x its area, else :data:`DEFAULT_LEAKAGE_W_PER_MM2` x its area,
and the report says which.

Defaults used when the chip does not describe a part (each is named in ``notes``):
:data:`DEFAULT_HOST_LINK` and :data:`DEFAULT_CHIP_LINK` (PCIe Gen4 x16: 16 GT/s x 16 lanes,
128b/130b, ~31.5 GB/s per direction, PCI-SIG PCIe 4.0 base specification; 5 pJ/bit is an
assumption for the two SerDes PHYs), :data:`DEFAULT_LEAKAGE_W_PER_MM2` (5 mW/mm^2: an
assumption for 28 nm logic and SRAM at operating temperature).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cimflow.chip.spec import Chip, Link
from cimflow.compile.plan import ARRAY, DIGITAL_UNIT, HOST, Plan
from cimflow.cost.estimate import leakage_power_w
from cimflow.cost.report_types import CostReport
from cimflow.errors import CimflowError
from cimflow.fileio import json_safe

DEFAULT_HOST_LINK = Link(name="PCIe Gen4 x16 (default)", bandwidth_bytes_per_s=3.2e10, energy_per_bit_pj=5.0,
                         source="PCI-SIG PCIe 4.0 base specification (~31.5 GB/s per direction for x16); 5 pJ/bit assumed")
DEFAULT_CHIP_LINK = Link(name="PCIe Gen4 x16 peer-to-peer (default)", bandwidth_bytes_per_s=3.2e10, energy_per_bit_pj=5.0,
                         source="assumption: cards talk through a PCIe Gen4 switch")
DEFAULT_LEAKAGE_W_PER_MM2 = 0.005


@dataclass(frozen=True)
class ChipTraffic:
    """What one chip moves and serves per query (bytes and counts per query)."""

    host_in_bytes: float = 0.0
    host_out_bytes: float = 0.0
    sram_lookups: float = 0.0
    sram_row_bytes: float = 0.0
    sram_macros: int = 0
    dram_lookups: float = 0.0
    dram_bytes_per_lookup: float = 0.0
    pool_ops: float = 0.0
    link_in_bytes: float = 0.0
    link_out_bytes: float = 0.0
    pim_lookups: float = 0.0
    pim_internal_bytes: float = 0.0
    pim_ops: float = 0.0
    pim_external_bytes: float = 0.0

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not math.isfinite(float(value)) or value < 0:
                raise CimflowError(f"chip traffic {name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class Resource:
    """One resource: its capacity per second and the demand one query puts on it."""

    name: str
    capacity: float
    demand: float
    unit: str
    detail: str = ""

    @property
    def max_qps(self) -> float:
        return self.capacity / self.demand if self.demand > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "capacity_per_s": self.capacity, "demand_per_query": self.demand, "unit": self.unit,
                "max_qps": self.max_qps, "detail": self.detail}


@dataclass
class SystemReport:
    """QPS, energy and the binding resource of a system of ``chips`` identical chips."""

    chips: int
    qps: float
    bound_by: str
    resources: list[Resource]
    utilization: dict[str, float]
    energy_per_query_j: float
    energy_by_part: dict[str, float]
    area_mm2_per_chip: float
    host_ops: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def power_w(self) -> float:
        return self.energy_per_query_j * self.qps

    @property
    def qps_per_w(self) -> float:
        return 1.0 / self.energy_per_query_j if self.energy_per_query_j > 0 else math.inf

    @property
    def qps_per_chip(self) -> float:
        return self.qps / self.chips

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "chips": self.chips, "qps": self.qps, "qps_per_w": self.qps_per_w, "qps_per_chip": self.qps_per_chip,
            "power_w": self.power_w, "energy_per_query_j": self.energy_per_query_j, "bound_by": self.bound_by,
            "utilization": dict(self.utilization), "resources": [r.to_dict() for r in self.resources],
            "energy_per_query_by_part_j": dict(self.energy_by_part), "area_mm2_per_chip": self.area_mm2_per_chip,
            "host_ops": list(self.host_ops), "notes": list(self.notes),
        })


def _link(chip: Chip, which: str, notes: list[str]) -> Link:
    given = chip.host_link if which == "host" else chip.chip_link
    if given is not None:
        return given
    default = DEFAULT_HOST_LINK if which == "host" else DEFAULT_CHIP_LINK
    notes.append(f"the chip describes no {which}_link: {default.name} assumed ({default.bandwidth_bytes_per_s / 1e9:g} GB/s "
                 f"per direction, {default.energy_per_bit_pj:g} pJ/bit)")
    return default


def static_power_w(chip: Chip, area_mm2: float, notes: list[str]) -> tuple[float, float]:
    """(leakage, board static power) of one chip in watts, with a note when a default is used."""
    leak = leakage_power_w(chip)
    if leak <= 0:
        density = chip.board.leakage_w_per_mm2 if chip.board is not None and chip.board.leakage_w_per_mm2 is not None else None
        if density is None:
            density = DEFAULT_LEAKAGE_W_PER_MM2
            notes.append(f"the chip states no leakage: default {density * 1e3:g} mW/mm^2 x {area_mm2:.1f} mm^2 = "
                         f"{density * area_mm2:.3g} W per chip (cimflow.cost.system.DEFAULT_LEAKAGE_W_PER_MM2)")
        else:
            notes.append(f"leakage from board.leakage_w_per_mm2: {density * 1e3:g} mW/mm^2 x {area_mm2:.1f} mm^2 = "
                         f"{density * area_mm2:.3g} W per chip")
        leak = density * area_mm2
    board = chip.board.static_power_w if chip.board is not None else 0.0
    if chip.board is None:
        notes.append("the chip states no board static power (board.static_power_w): 0 W counted")
    return leak, board


def system_model(cost: CostReport, plan: Plan, traffic: Sequence[ChipTraffic], chip: Chip | None = None,
                 pooling_in_traffic: bool = False) -> SystemReport:
    """Steady-state QPS, utilizations and energy of ``len(traffic)`` chips serving ``plan``.

    ``plan`` and ``cost`` describe the whole system's operators (for several chips, compiled on
    the chips' union, see :func:`cimflow.compile.sharding.scale_chip`); ``traffic`` holds one
    :class:`ChipTraffic` per chip; ``chip`` is one chip (default: ``plan.chip``). With
    ``pooling_in_traffic`` the traffic's ``pool_ops`` count every row the digital unit adds,
    tables that pool on the unit included, so those tables' plan ops (timed for all their
    lookups, wherever the rows live) are left out of the unit's time: rows pooled in a PIM tier
    reach the unit as one vector per bag.
    """
    if not traffic:
        raise CimflowError("the system model needs the traffic of at least one chip")
    chip = chip or plan.chip
    n = len(traffic)
    batch = max(cost.batch_size, 1)
    notes: list[str] = []
    resources: list[Resource] = []

    array_ops = [o for o in plan.ops if o.substrate == ARRAY]
    if array_ops:
        slow = max(array_ops, key=lambda o: o.latency_s)
        resources.append(Resource("arrays", 1.0, slow.latency_s / batch, "s",
                                  f"slowest array stage {slow.name} ({slow.array_kind}, x{slow.replication} copies)"))
    unit_ops = [o for o in plan.ops if o.substrate == DIGITAL_UNIT
                and not (pooling_in_traffic and o.op_type in ("Embedding", "EmbeddingBag"))]
    unit_s = sum(o.latency_s for o in unit_ops) / batch / n
    unit_rate = chip.digital_unit.ops_per_cycle * chip.clock_hz
    host_link = _link(chip, "host", notes)
    chip_link = _link(chip, "chip", notes) if n > 1 else None
    sram = chip.arrays.get(chip.roles.digital) if chip.roles.digital else None
    for c, t in enumerate(traffic):
        tag = f" (chip {c})" if n > 1 else ""
        resources.append(Resource(f"digital unit{tag}", 1.0, unit_s + t.pool_ops / unit_rate, "s",
                                  "digital-unit ops (one unit, ops add up) and pooling of tier rows"))
        if t.sram_lookups > 0:
            if sram is None or t.sram_macros <= 0:
                raise CimflowError("hot rows are served from SRAM but the chip has no digital array kind holding them")
            bw = t.sram_macros * sram.cols / 8 * chip.clock_hz
            resources.append(Resource(f"SRAM tier{tag}", bw, t.sram_lookups * t.sram_row_bytes, "B",
                                      f"{t.sram_macros} macros x {sram.cols} bits per cycle"))
        if t.dram_lookups > 0:
            if chip.dram is None or not chip.dram.bandwidth_bytes_per_s:
                raise CimflowError("rows are served from DRAM but the chip's dram block gives no bandwidth_bytes_per_s")
            resources.append(Resource(f"DRAM{tag}", chip.dram.bandwidth_bytes_per_s, t.dram_lookups * t.dram_bytes_per_lookup, "B",
                                      f"{t.dram_bytes_per_lookup:g} B moved per row read"))
        if t.pim_lookups > 0:
            pim = chip.pim
            if pim is None:
                raise CimflowError("rows are pooled in a PIM tier but the chip has no 'pim' block")
            resources.append(Resource(f"PIM banks{tag}", pim.internal_bandwidth_bytes_per_s, t.pim_internal_bytes, "B",
                                      f"{pim.units} units x {pim.access_bytes} B x {pim.clock_hz / 1e6:g} MHz inside the DRAM"))
            resources.append(Resource(f"PIM units{tag}", pim.ops_per_s, t.pim_ops, "op",
                                      f"{pim.units} units x {pim.lanes} lanes x {pim.clock_hz / 1e6:g} MHz"))
            resources.append(Resource(f"PIM interface{tag}", pim.bandwidth_bytes_per_s, t.pim_external_bytes, "B",
                                      f"pooled vectors out of the PIM DRAM ({pim.name or 'pim'})"))
        resources.append(Resource(f"host link{tag}", host_link.bandwidth_bytes_per_s, max(t.host_in_bytes, t.host_out_bytes), "B",
                                  f"{host_link.name or 'host link'}: {t.host_in_bytes:.0f} B in, {t.host_out_bytes:.0f} B out per query"))
        if chip_link is not None:
            resources.append(Resource(f"chip link{tag}", chip_link.bandwidth_bytes_per_s, max(t.link_in_bytes, t.link_out_bytes), "B",
                                      f"{chip_link.name or 'chip link'}: {t.link_in_bytes:.0f} B in, "
                                      f"{t.link_out_bytes:.0f} B out per query"))
    if chip.interconnect.bandwidth_bytes_per_s:
        resources.append(Resource("on-chip interconnect", chip.interconnect.bandwidth_bytes_per_s * n,
                                  plan.placement.traffic_bytes / batch, "B", "activations between cores"))
    else:
        notes.append("the chip gives no interconnect.bandwidth_bytes_per_s: the on-chip interconnect is not a bound")
    buffer_bits = sum(c.events.get("buffer_bits", 0.0) for c in cost.per_op)
    if chip.buffer is not None and chip.buffer.bandwidth_bytes_per_s:
        resources.append(Resource("on-chip buffers", chip.buffer.bandwidth_bytes_per_s * n, buffer_bits / 8 / batch, "B",
                                  "inputs, outputs and hot rows through the buffers"))
    else:
        notes.append("the chip gives no buffer.bandwidth_bytes_per_s: the on-chip buffers are not a bound")
    host_ops: list[dict[str, Any]] = [{"name": c.name, "op_type": c.op_type, "latency_s": c.latency_s, "energy_j": c.total_energy_j}
                for c in cost.per_op if c.substrate == HOST]
    host_ops = [h for h in host_ops if h["latency_s"] > 0 or h["energy_j"] > 0]
    if cost.host_latency_s > 0:
        resources.append(Resource("host", 1.0, cost.host_latency_s / batch, "s", f"{len(host_ops)} ops left on the host ({cost.host})"))
        notes.append("ops run on the host, with their cost: " + ", ".join(h["name"] for h in host_ops))

    finite = [r for r in resources if r.demand > 0]
    if not finite:
        raise CimflowError("the system model found no resource with any work: nothing bounds QPS")
    binding = min(finite, key=lambda r: r.max_qps)
    qps = binding.max_qps
    utilization = {r.name: (qps * r.demand / r.capacity) for r in resources}

    area_mm2 = cost.area_mm2 / n
    leak_w, board_w = static_power_w(chip, area_mm2, notes)
    dynamic = (cost.energy_j - cost.by_component.get("leakage", 0.0)) / batch
    host_bits = sum(t.host_in_bytes + t.host_out_bytes for t in traffic) * 8
    link_bits = sum(t.link_out_bytes for t in traffic) * 8
    parts = {
        "chip_dynamic": dynamic,
        "host_link": host_bits * host_link.energy_per_bit_pj * 1e-12,
        "chip_links": link_bits * (chip_link.energy_per_bit_pj * 1e-12 if chip_link is not None else 0.0),
        "leakage": n * leak_w / qps,
        "board_static": n * board_w / qps,
    }
    return SystemReport(chips=n, qps=qps, bound_by=binding.name, resources=resources, utilization=utilization,
                        energy_per_query_j=sum(parts.values()), energy_by_part=parts, area_mm2_per_chip=area_mm2,
                        host_ops=host_ops, notes=notes)


__all__ = ["DEFAULT_CHIP_LINK", "DEFAULT_HOST_LINK", "DEFAULT_LEAKAGE_W_PER_MM2", "ChipTraffic", "Resource", "SystemReport",
           "static_power_w", "system_model"]
