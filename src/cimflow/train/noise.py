"""Noise injection for hardware-aware training: a fresh chip instance per training step.

The noise a network sees while it trains is drawn from the chip's own device model, by
the simulator that evaluates it: every step programs a new chip instance
(:func:`cimflow.sim.program_model` with a new seed: programming noise, stuck cells and
drift exponents sampled per cell) and ages it to a random time after programming,
log-uniform between the device's ``t0`` and ``t_max``. Read noise is drawn on every
forward and the DAC and ADC quantize, with straight-through gradients (the engine's
``w + (w_programmed - w).detach()``), so the loss is the loss of a real instance and the
gradient is the ideal network's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cimflow.errors import CimflowError
from cimflow.physics.rng import derive_seed
from cimflow.sim.convert import cim_layers, program_model
from cimflow.sim.embedding import CIMEmbeddingBag
from cimflow.sim.layers import CIMLayer
from cimflow.train.draws import InstanceDraws, program_at


def layer_spec_t0(layer: CIMLayer | CIMEmbeddingBag) -> float:
    """The reference time ``t0`` (seconds) of a CIM layer's device drift model."""
    spec = layer.engine.spec if isinstance(layer, CIMLayer) else layer.spec
    return spec.device.drift.t0_s


def log_uniform_fraction(generator: torch.Generator) -> float:
    """One uniform draw in [0, 1): the position of a step's time on the log axis between t0 and t_max."""
    return float(torch.rand((), generator=generator))


def time_at(fraction: float, t0_s: float, t_max_s: float) -> float:
    """``t0 * (t_max / t0) ** fraction`` seconds (t0 when t_max <= t0): log-uniform in [t0, t_max]
    when ``fraction`` is uniform in [0, 1)."""
    if t_max_s <= t0_s:
        return t0_s
    return t0_s * math.exp(fraction * math.log(t_max_s / t0_s))


def step_seed(seed: int, step: int) -> int:
    """The chip-instance seed of training step ``step`` (a 31-bit integer derived from (seed, step))."""
    return derive_seed(seed, "hwa-step", step) & 0x7FFFFFFF


def sample_instance(
    model: nn.Module, seed: int, t_max_s: float | None, generator: torch.Generator, t_min_s: float | None = None,
    draws: InstanceDraws | None = None,
) -> float:
    """Program a fresh chip instance into a converted ``model`` (instance ``seed``) and age it
    to a random time after programming: the same log-uniform fraction for every layer, each
    layer between ``t_min_s`` (default: its own device ``t0``) and ``t_max_s`` (no drift when
    None). Returns the fraction drawn (0 when there is no drift).

    ``draws`` (an :class:`~cimflow.train.draws.InstanceDraws`): take the instance's per-cell
    draws from its cached pools (equal in distribution, a fraction of the cost); None: from
    fresh generators (:func:`cimflow.sim.program_model`)."""
    if t_max_s is not None and not (t_max_s > 0 and math.isfinite(t_max_s)):
        raise CimflowError(f"t_max must be a positive duration, got {t_max_s!r}")
    if t_min_s is not None and t_max_s is not None and not (0 < t_min_s <= t_max_s):
        raise CimflowError(f"t_min ({t_min_s!r} s) must be positive and at most t_max ({t_max_s!r} s)")
    fraction, times = 0.0, {}
    if t_max_s is not None:
        fraction = log_uniform_fraction(generator)
        for name, layer in cim_layers(model):
            t0 = layer_spec_t0(layer)
            t = time_at(fraction, max(t0, t_min_s) if t_min_s is not None else t0, t_max_s)
            if t != t0:
                times[name] = t
    if draws is not None:
        draws.program(model, seed, times)
        return fraction
    if not times:
        program_model(model, seed)
        return fraction
    for name, layer in cim_layers(model):
        program_at(layer, seed, times.get(name))
    return fraction


def keep_programmed(model: nn.Module) -> None:
    """Let the layers of a converted model run on their current programmed instance although
    their weights changed (an optimizer step): the next forward does not re-program. The
    forward values then lag the weights until the next :func:`sample_instance`; gradients
    still reach the current weights straight through."""
    for _, layer in cim_layers(model):
        if isinstance(layer, CIMLayer):
            if layer.engine.programmed:
                layer.engine._weight_version = layer.weight._version
        elif layer.seed is not None:
            layer._programmed_version = layer._weight_version()


__all__ = ["keep_programmed", "layer_spec_t0", "log_uniform_fraction", "sample_instance", "step_seed", "time_at"]
