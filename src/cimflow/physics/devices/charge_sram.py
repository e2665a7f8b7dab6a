"""Charge-domain SRAM compute: capacitor mismatch as a static per-cell gain error, no drift.

A bit cell switches a small capacitor onto a shared line (charge-domain accumulation, Valavi
et al., "A 64-tile 2.4-Mb in-memory-computing CNN accelerator employing charge-domain
compute", IEEE JSSC 54(6), 2019), so the cell's weight is its capacitance: the error is a
gain error fixed at fabrication, eps ~ N(0, sigma) with sigma from Pelgrom's law
(Pelgrom et al., "Matching properties of MOS transistors", IEEE JSSC 24(5), 1989):
sigma(dC/C) of a pair = A_C / sqrt(area), so one capacitor deviates by A_C / sqrt(2 area).
The cell's "conductance" is its nominal value times (1 + eps); nothing drifts.
"""

from __future__ import annotations

import torch

from cimflow.chip.devices import ChargeSRAMDevice
from cimflow.physics.devices.base import CellDraws, DeviceModel


class ChargeSRAMModel(DeviceModel):
    name = "charge_sram"
    spec: ChargeSRAMDevice

    def program(self, target: torch.Tensor, draws: CellDraws, k: int = 0) -> tuple[torch.Tensor, int]:
        """SRAM writes are exact; the capacitor's mismatch (drawn from the cell's own stream, so
        re-writing a cell keeps its capacitor) scales what it contributes."""
        sigma = self.spec.mismatch_sigma
        if sigma == 0:
            return target.clone(), target.numel()
        return target * (1.0 + sigma * draws.normal("capacitor", 0)), target.numel()

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        return torch.zeros_like(g)

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        return g
