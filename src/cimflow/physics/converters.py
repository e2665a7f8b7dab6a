"""DAC and ADC quantization.

Both are symmetric, signed and uniform and mid-tread (zero is a level): with ``bits``
including the sign, values in [-r, r] map to ``2**(bits-1) - 1`` steps each side.
The ADC uses the same mid-tread code set, so a column that carries no current reads
exactly zero (a mid-rise converter would add half a step of bias to every idle read).
"""

from __future__ import annotations

import torch


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad:
        return x + (torch.round(x) - x).detach()
    return torch.round(x)


def quantize_symmetric(x: torch.Tensor, bits: int, range_: torch.Tensor | float) -> torch.Tensor:
    """Mid-tread signed quantization of ``x`` to ``2**(bits-1)-1`` steps per side of [-range, range].

    Values outside are clipped. Gradients pass straight through inside the range.
    A 1-bit quantizer keeps only the sign times the range.
    """
    if bits <= 1:
        return torch.sign(x) * range_
    steps = (1 << (bits - 1)) - 1
    scale = steps / range_
    return _round_ste(torch.clamp(x * scale, -steps, steps)) / scale


def dac_quantize(x: torch.Tensor, bits: int, range_: torch.Tensor | float) -> torch.Tensor:
    """Input DAC: :func:`quantize_symmetric` (sign included in ``bits``)."""
    return quantize_symmetric(x, bits, range_)


def adc_quantize(y: torch.Tensor, bits: int, range_: torch.Tensor | float) -> torch.Tensor:
    """ADC: mid-tread signed conversion of a partial sum over [-range, range], with
    ``2**(bits-1)-1`` steps per side (zero is a code, so an idle column reads exactly 0).
    Out-of-range values clip; the error of an in-range value is at most half a step,
    ``range / (2 * (2**(bits-1) - 1))``."""
    return quantize_symmetric(y, bits, range_)
