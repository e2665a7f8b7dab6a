"""Ferroelectric FETs: multi-level cells with retention loss (depolarization).

Programming noise is the generic polynomial (partial polarization switching gives a
state-dependent spread). Retention: the memory window closes toward its middle as
rate ln(1 + t/tau) (log-time window closure reported for HfO2 FeFETs, e.g. Mulaosmanovic
et al., "Ferroelectric field-effect transistors based on HfO2: a review", Nanotechnology 32,
502002 (2021)), thermally accelerated with ``drift.activation_energy_ev`` (default 1.0 eV:
an assumption of the order reported for HfO2 FeFET retention).
"""

from __future__ import annotations

import torch

from cimflow.chip.devices import FeFETDevice
from cimflow.physics.devices.base import CellDraws, DeviceModel, effective_time, retention_loss


class FeFETModel(DeviceModel):
    name = "fefet"
    spec: FeFETDevice

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        return torch.zeros_like(g)

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        s = self.spec
        middle = 0.5 * (s.g_min + s.g_max)
        return retention_loss(g, middle, s.retention_rate, s.retention_tau_s, effective_time(t, self.t0, self.acceleration), self.t0)
