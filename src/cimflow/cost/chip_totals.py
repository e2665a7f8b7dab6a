"""Chip-level figures of the cost model: the chip's area by component, its on-chip buffer
bytes, the static power it states, and the one-time cost of programming a plan's weights.

Used by :func:`cimflow.cost.estimate.estimate` and :mod:`cimflow.cost.system`; re-exported
from :mod:`cimflow.cost.estimate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from cimflow.chip.spec import Chip
from cimflow.compile.plan import Plan
from cimflow.cost.cell_tech import ProgramCost, program_cost
from cimflow.cost.components import adcs_per_array, buffer_area_m2
from cimflow.cost.kind_cost import KindCost


def chip_area(chip: Chip, kinds: Mapping[str, KindCost]) -> tuple[dict[str, float], list[str]]:
    """Area of the whole chip by component (m²): every array on the chip with its ADCs, DACs
    and adder trees, the digital unit, the chip buffer and the per-core buffers."""
    node_m = chip.technology.node_nm * 1e-9
    area = {"cells": 0.0, "adc": 0.0, "dac": 0.0, "adder_tree": 0.0, "digital_unit": 0.0, "buffers": 0.0}
    notes: list[str] = []
    for kind, kc in kinds.items():
        n = chip.arrays_on_chip(kind)
        for part, value in kc.area_parts.items():
            area[part] += n * value
        if n:
            notes += [f"array kind {kind!r}: {note}" for note in kc.area_notes]
    if chip.digital_unit.area_um2 is not None:
        area["digital_unit"] = chip.digital_unit.area_um2 * 1e-12
    else:
        notes.append("digital unit area not given (digital_unit.area_um2): counted as 0")
    a, note = buffer_area_m2(on_chip_buffer_bytes(chip), chip.buffer, node_m)
    area["buffers"] = a
    if note:
        notes.append(note)
    return area, notes


def on_chip_buffer_bytes(chip: Chip) -> int:
    """Bytes of on-chip buffer: the chip buffer plus every core's own."""
    chip_buffer = (chip.buffer.capacity_bytes or 0) if chip.buffer is not None else 0
    return chip_buffer + chip.cores.buffer_bytes * chip.cores.count


def leakage_power_w(chip: Chip) -> float:
    """Static power of the chip (W), from what the chip gives: ``leakage_uw`` of every ADC and
    DAC instance, of the digital unit, and ``leakage_uw_per_kib`` of the on-chip buffers. The
    estimate adds the volatile (SRAM) cells holding their weights
    (:func:`~cimflow.cost.cell_tech.array_leakage_w`), a modelled, not a stated, figure."""
    total_uw = chip.digital_unit.leakage_uw or 0.0
    if chip.buffer is not None and chip.buffer.leakage_uw_per_kib:
        total_uw += on_chip_buffer_bytes(chip) / 1024 * chip.buffer.leakage_uw_per_kib
    for kind, spec in chip.arrays.items():
        n = chip.arrays_on_chip(kind)
        if spec.adc is not None and spec.adc.conversion.leakage_uw:
            total_uw += n * adcs_per_array(spec) * spec.adc.conversion.leakage_uw
        if spec.input_encoding.dac.leakage_uw:
            total_uw += n * spec.rows * spec.input_encoding.dac.leakage_uw
    return total_uw * 1e-6


def plan_program_cost(plan: Plan, kinds: Mapping[str, KindCost]) -> ProgramCost:
    """One-time cost of writing the plan's weights: every weight cell of every array op
    (weights x cells per weight x replicas), by its array kind's technology law."""
    cells: dict[str, int] = {}
    for o in plan.array_ops():
        if o.array_kind is None or o.weight_shape is None:
            continue
        weights = math.prod(o.weight_shape)
        cells[o.array_kind] = cells.get(o.array_kind, 0) + weights * kinds[o.array_kind].cols_per_weight * max(o.replication, 1)
    parts = [program_cost(plan.chip.arrays[kind], n, plan.chip.technology.supply_v) for kind, n in cells.items()]
    return ProgramCost(cells=sum(p.cells for p in parts), pulses=sum(p.pulses for p in parts),
                       energy_j=sum(p.energy_j for p in parts), time_s=sum(p.time_s for p in parts))
