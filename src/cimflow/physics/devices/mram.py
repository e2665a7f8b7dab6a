"""STT-MRAM: binary cells, stochastic switching (write errors) and read disturb.

Thermally assisted switching (Koch et al., "Thermally assisted magnetization reversal in
submicron-sized magnetic thin films", PRL 84, 5419 (2000)): a pulse of width t_p at current
I switches with probability P = 1 - exp(-t_p / tau), tau = tau_0 exp(Delta (1 - I / I_c0)),
Delta = E_b / k T. The write error rate is 1 - P at the write current; a read is the same law
at the (weaker) read current, so every read may flip a cell (read disturb). Temperature
enters through Delta = Delta_300 x 300 K / T (the barrier E_b is fixed).

Assumptions of this model: cells are first reset to g_min (a block reset that succeeds), then
cells whose target is g_max are written; a failed write stays at g_min. Read disturb flips
g_max cells to g_min (the read current's direction), ``reads_per_second`` reads per cell.
"""

from __future__ import annotations

import math

import torch

from cimflow.chip.devices import MRAMDevice
from cimflow.physics.devices.base import CellDraws, DeviceModel


def switching_probability(pulse_s: float, current_ratio: float, thermal_stability: float, attempt_time_s: float) -> float:
    """P(switch) of one pulse: 1 - exp(-t_p / (tau_0 exp(Delta (1 - I/I_c0))))."""
    exponent = thermal_stability * (1.0 - current_ratio)
    rate = pulse_s / attempt_time_s * math.exp(-min(exponent, 700.0))
    return -math.expm1(-rate)


class MRAMModel(DeviceModel):
    name = "mram"
    spec: MRAMDevice

    @property
    def thermal_stability(self) -> float:
        """Delta at the operating temperature (E_b fixed: Delta scales as 300 K / T)."""
        return self.spec.thermal_stability * 300.0 / self.spec.temperature_k

    @property
    def write_error_rate(self) -> float:
        s = self.spec
        return 1.0 - switching_probability(s.write_pulse_s, s.write_current_ratio, self.thermal_stability, s.attempt_time_s)

    @property
    def read_flip_probability(self) -> float:
        s = self.spec
        return switching_probability(s.read_pulse_s, s.read_current_ratio, self.thermal_stability, s.attempt_time_s)

    def program(self, target: torch.Tensor, draws: CellDraws, k: int = 0) -> tuple[torch.Tensor, int]:
        s = self.spec
        high = target >= 0.5 * (s.g_min + s.g_max)
        written = high & (draws.uniform("write", k) >= self.write_error_rate)
        g = torch.where(written, torch.full_like(target, s.g_max), torch.full_like(target, s.g_min))
        return g, int(high.sum())

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        """One uniform per cell: the cell is disturbed once the flip probability passes it."""
        return draws.uniform("disturb")

    def disturb_probability(self, t: float) -> float:
        """P(a g_max cell has flipped) after the reads of ``t - t0`` seconds: 1 - (1 - p)^n."""
        reads = max(t - self.t0, 0.0) * self.spec.reads_per_second
        p = self.read_flip_probability
        return -math.expm1(reads * math.log1p(-p)) if p < 1 else 1.0

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        p = self.disturb_probability(t)
        if p == 0:
            return g
        high = g >= 0.5 * (self.spec.g_min + self.spec.g_max)
        return torch.where(high & (state < p), torch.full_like(g, self.spec.g_min), g)
