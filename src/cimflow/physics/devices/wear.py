"""Endurance: a write-cycle budget per cell, consumed by programming, verify and updates."""

from __future__ import annotations

from cimflow.chip.spec import Device
from cimflow.errors import SimulationError


def check_endurance(device: Device, cycles_used: int, what: str) -> None:
    """Raise a SimulationError when the most-written cell of ``what`` has used more write
    cycles than the device's ``endurance_cycles`` (no budget: nothing to check)."""
    budget = device.endurance_cycles
    if budget is not None and cycles_used > budget:
        raise SimulationError(
            f"{what}: cells have been written {cycles_used} times, beyond the device's endurance of {budget:g} write cycles "
            "(device.endurance_cycles); program fewer times, use fewer verify iterations or updates, or raise the budget")
