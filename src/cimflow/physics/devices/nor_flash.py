"""NOR flash / charge-trap cells: ISPP program-and-verify and thermally activated retention loss.

Programming (incremental step pulse programming, Suh et al., "A 3.3 V 32 Mb NAND flash
memory with incremental step pulse programming scheme", IEEE JSSC 30(11), 1995): the cell
starts erased (lowest V_th, g_max); each pulse raises V_th by one step (plus a pulse-to-pulse
spread) and a verify read stops the cell once V_th passes its verify level. The verify level
sits half a step below the target, so without spread the final V_th is within +-step/2 of it.
Conductance is linear in V_th over the window (an assumption of this model: CIM NOR cells are
read in their linear region).

Retention: trapped charge leaks as rate ln(1 + t/tau) of what is stored (log-time charge
loss), accelerated with Ea = 1.1 eV by default (the value commonly used for charge-loss
acceleration of floating-gate/charge-trap retention, e.g. JEDEC JEP122; an assumption per chip).
"""

from __future__ import annotations

import torch

from cimflow.chip.devices import NORFlashDevice
from cimflow.physics.devices.base import CellDraws, DeviceModel, effective_time, retention_loss


class NORFlashModel(DeviceModel):
    name = "nor_flash"
    spec: NORFlashDevice

    def program(self, target: torch.Tensor, draws: CellDraws, k: int = 0) -> tuple[torch.Tensor, int]:
        """ISPP with verify, in V_th measured from the erased level: returns the conductances
        and the program pulses spent (every cell's pulses, summed)."""
        s = self.spec
        span = s.g_max - s.g_min
        vth_target = (s.g_max - target.clamp(s.g_min, s.g_max)) / span * s.vth_window_v
        verify = vth_target - 0.5 * s.ispp_step_v
        vth = torch.zeros_like(target)
        active = verify > 0
        pulses = 0
        for pulse in range(s.max_pulses):
            count = int(active.sum())
            if count == 0:
                break
            pulses += count
            step = s.ispp_step_v + (s.pulse_sigma_v * draws.normal("ispp", pulse + 1000 * k) if s.pulse_sigma_v else 0.0)
            vth = torch.where(active, vth + step, vth)
            active = active & (vth < verify)
        g = (s.g_max - vth / s.vth_window_v * span).clamp(s.g_min, s.g_max)
        return g, pulses

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        return torch.zeros_like(g)

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        s = self.spec
        return retention_loss(g, s.g_max, s.retention_rate, s.retention_tau_s, effective_time(t, self.t0, self.acceleration), self.t0)

    def write_cycles(self, verify_rounds: int) -> int:
        """One erase/program cycle per programming (ISPP's verify is part of it)."""
        return 1 + verify_rounds
