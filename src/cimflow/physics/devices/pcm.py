"""Phase-change memory: conductance-dependent drift and 1/f read noise growing with log time.

Laws (Nandakumar et al., ICECS 2019; Joshi et al., Nat. Commun. 11, 2473 (2020); the
functional forms as documented for aihwkit's PCMLikeNoiseModel and HermesNoiseModel):

- drift: G(t) = G_prog (t / t0)^-nu for t > t0, nu ~ N(mean(x), std(x)) per cell, |nu| taken,
  x = G_target / g_max (``drift_nu_mean``, ``drift_nu_std``);
- accumulated 1/f noise: sigma(t) = G(t) Q_s(x) sqrt(ln((t + t_read) / (2 t_read))), one
  standard normal per cell drawn at programming and scaled with t (``noise_q_s``, ``t_read_s``);
- temperature: drift is structural relaxation, thermally activated: t is aged by the
  Arrhenius factor of ``drift.activation_energy_ev``.
"""

from __future__ import annotations

import math

import torch

from cimflow.chip.devices import PCMDevice
from cimflow.physics.devices.base import CellDraws, DeviceModel, curves_at_targets, effective_time, evaluate_curve


class PCMModel(DeviceModel):
    name = "pcm"
    spec: PCMDevice

    def drift_moments(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the drift exponent at each target conductance."""
        mean, std = curves_at_targets(self.spec, target, self.spec.drift_nu_mean, self.spec.drift_nu_std)
        return mean, std

    def sample_state(self, target: torch.Tensor, g: torch.Tensor, draws: CellDraws) -> torch.Tensor:
        """(nu, z, Q_s): the drift exponent, the 1/f noise's standard normal and its Q_s."""
        mean, std = self.drift_moments(target)
        state = torch.empty((3, *g.shape), dtype=g.dtype, device=g.device)
        torch.addcmul(mean, std, draws.normal("drift"), out=state[0]).abs_()
        state[1].copy_(draws.normal("1/f"))
        state[2].copy_(evaluate_curve(self.spec.noise_q_s, g.div(self.spec.g_max).abs_()))
        return state

    def noise_growth(self, t: float) -> float:
        """sqrt(ln((t + t_read) / (2 t_read))): the 1/f noise's growth with time (0 before t_read)."""
        ratio = (t + self.spec.t_read_s) / (2.0 * self.spec.t_read_s)
        return math.sqrt(math.log(ratio)) if ratio > 1 else 0.0

    def conductance(self, g: torch.Tensor, state: torch.Tensor, t: float) -> torch.Tensor:
        nu, z, q_s = state[0], state[1], state[2]
        t_eff = effective_time(t, self.t0, self.acceleration)
        growth = self.noise_growth(t_eff)
        if growth == 0:
            return g if t_eff <= self.t0 else torch.mul(nu, -math.log(t_eff / self.t0)).exp_().mul_(g)
        # (t / t0)^-nu (g + |g| Q_s growth z), clipped at 0: the drift factor is positive, so this
        # is G(t) + |G(t)| Q_s growth z; fresh tensors built in place (few passes, no temporaries)
        out = torch.mul(q_s, z).mul_(growth).mul_(g.abs()).add_(g)
        if t_eff > self.t0:
            out.mul_(torch.mul(nu, -math.log(t_eff / self.t0)).exp_())
        return out.clamp_min_(0.0)
