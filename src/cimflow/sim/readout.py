"""The readout pieces of a crossbar read that need no engine state: read statistics, the
bit-serial input planes, and the straight-through autograd functions of the programmed
weights and of the ADC (used by :class:`cimflow.sim.engine.CrossbarEngine`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cimflow.chip.spec import InputEncoding

if TYPE_CHECKING:
    from cimflow.sim.engine import CrossbarEngine


@dataclass
class ReadStats:
    """Activation statistics gathered while simulating (the cost model's data-dependent inputs)."""

    vectors: int = 0  # input vectors seen (MVMs)
    reads: int = 0  # array reads (vectors x pulses x read groups, before column tiles)
    nonzero_inputs: int = 0  # non-zero input elements after the DAC
    input_elements: int = 0
    bit_density_sum: float = 0.0  # sum over pulses of the fraction of active rows
    pulses: int = 0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["input_density"] = self.nonzero_inputs / self.input_elements if self.input_elements else 0.0
        d["mean_pulse_density"] = self.bit_density_sum / self.pulses if self.pulses else 0.0
        return d


def input_planes(x_q: torch.Tensor, enc: InputEncoding) -> tuple[torch.Tensor, list[float]]:
    """Split DAC-quantized inputs in [-1, 1] into pulses: (P, N, in) and their weights."""
    if enc.scheme == "dac" or enc.pulses == 1:
        return x_q.unsqueeze(0), [1.0]
    levels = (1 << (enc.bits - 1)) - 1
    mag = torch.round(x_q.detach().abs() * levels)
    sign = torch.sign(x_q)
    base = 1 << enc.bits_per_pulse
    planes, weights = [], []
    for p in range(enc.pulses):
        digit = torch.remainder(torch.div(mag, base**p, rounding_mode="floor"), base)
        planes.append(sign * digit / (base - 1))
        weights.append(base**p * (base - 1) / levels)
    stacked = torch.stack(planes)
    if x_q.requires_grad:
        # straight-through: each pulse carries 1/(P w_p) of the input's gradient, so the
        # shift-added sum passes it through unchanged
        share = 1.0 / (len(weights) * torch.tensor(weights, dtype=x_q.dtype, device=x_q.device)).view(-1, 1, 1)
        stacked = stacked + (x_q - x_q.detach()).unsqueeze(0) * share
    return stacked, weights


class StraightThroughWeight(torch.autograd.Function):
    """Forward: the programmed effective weights ``w_eff`` (S, G, gr, out) or (1, in, out)
    (digital). Backward: their gradient, summed over slices and laid back out as (in, out),
    divided by the weight scale, to the live weight - the same gradient as
    ``w + (w_programmed - w).detach()`` without building the live weights' layout."""

    @staticmethod
    def forward(ctx, weight_in_out: torch.Tensor, w_eff: torch.Tensor, engine: CrossbarEngine) -> torch.Tensor:  # noqa: ANN001
        ctx.engine = engine
        return w_eff.view_as(w_eff)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        engine = ctx.engine
        g = grad.sum(dim=0)
        if not engine.is_digital:
            in_features, out = engine.grid.in_features, engine.grid.out_features
            flat = g.reshape(-1, out)
            if engine._gather_index is None:
                g = flat[:in_features]
            else:
                g = flat.new_zeros(in_features + 1, out).index_add_(0, engine._gather_index, flat)[:in_features]
        return g / engine.w_scale, None, None


class AdcStraightThrough(torch.autograd.Function):
    """The ADC (:func:`cimflow.physics.adc_quantize`) with the straight-through gradient of
    its rounding: the gradient passes where the partial sum is inside the range, zero where
    it clips (fewer passes over the partial sums than composing the same ops)."""

    @staticmethod
    def forward(ctx, psum: torch.Tensor, bits: int, range_: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        if bits <= 1:
            ctx.save_for_backward(torch.zeros_like(psum, dtype=torch.bool))
            return torch.sign(psum) * range_
        steps = (1 << (bits - 1)) - 1
        scaled = psum * (steps / range_)
        ctx.save_for_backward(scaled.abs() <= steps)
        return scaled.clamp_(-steps, steps).round_().mul_(range_ / steps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


__all__ = ["AdcStraightThrough", "ReadStats", "StraightThroughWeight", "input_planes"]
