"""Resistive RAM: state-dependent programming noise and relaxation after programming.

Programming noise is the generic polynomial sigma(G) (state-dependent: Wan et al., "A
compute-in-memory chip based on resistive random-access memory", Nature 608, 504 (2022),
fig. on conductance relaxation; aihwkit's ReRamWan2022NoiseModel fits it per time point).
Relaxation: after t0 the filament relaxes, each cell moving by
g_max [shift log10(t/t0) + sigma(x) log10(t/t0) z] with z ~ N(0, 1) drawn once per cell, a mean
and spread linear in log time as fitted to filamentary CMO/HfOx cells (aihwkit's
ReRamCMONoiseModel, Falcone et al.). Thermally accelerated through ``drift.activation_energy_ev``.
"""

from __future__ import annotations

import math

import torch

from cimflow.chip.devices import RRAMDevice
from cimflow.physics.devices.base import CellDraws, DeviceModel, curves_at_targets, effective_time


class RRAMModel(DeviceModel):
    name = "rram"
    spec: RRAMDevice

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        """(nu, z, sigma): the generic drift exponent, the relaxation's normal and its sigma per decade."""
        nu = super().sample_state(target, g, draws)
        state = torch.empty((3, *g.shape), dtype=g.dtype, device=g.device)
        state[0].copy_(nu)
        state[1].copy_(draws.normal("relax"))
        state[2].copy_(curves_at_targets(self.spec, target, self.spec.relaxation_sigma_per_decade)[0]).clamp_min_(0.0)
        return state

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        t_eff = effective_time(t, self.t0, self.acceleration)
        g = super().conductance(g, state[0], t)
        if t_eff <= self.t0:
            return g
        decades = math.log10(t_eff / self.t0)
        moved = g + self.spec.g_max * decades * (self.spec.relaxation_shift_per_decade + state[2] * state[1])
        return moved.clamp(0.0, self.spec.g_max)
