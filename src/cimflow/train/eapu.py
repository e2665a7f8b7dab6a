"""On-chip learning with error-aware probabilistic updates (EaPU).

EaPU (J. Liu, T. Shi, Q. Liu et al., "error-aware probabilistic update", Nature
Communications, 2025/2026, doi:10.1038/s41467-025-66240-7) trains a network whose weights
live in memristor conductances. Backpropagation asks for tiny, deterministic weight
changes, but one programming pulse moves a conductance by a coarse, noisy step: most
desired updates are smaller than the write error. EaPU turns each desired update into a
whole number of pulses drawn with a probability proportional to its size, so the update
is right in expectation, most small updates write nothing, and writes drop by orders of
magnitude.

The model here (the paper's method as this simulator can express it; the details below
are cimflow's choices, not the paper's):

- the weights are one programmed chip instance (:func:`cimflow.program`) that the training
  changes in place; forward and backward run on it (read noise, DAC/ADC quantization,
  straight-through gradients);
- a step's desired update is ``dw = -lr * grad`` (SGD). One pulse moves a weight by
  ``dw_pulse = pulse_levels`` conductance levels (in weight units: ``w_scale * levels /
  (n_levels - 1)``). A weight with ``r = |dw| / dw_pulse`` gets ``floor(r)`` pulses plus
  one more with probability ``r - floor(r)`` (``mode="eapu"``), or ``round(r)`` pulses
  (``mode="deterministic"``, plain backprop written to the device); with ``threshold`` > 0
  (in pulses), updates with ``r`` below it are skipped;
- each pulse changes the weight's differential pair by one step in the update's direction
  plus the device's programming noise ``sigma(G)`` (the preset's
  ``programming_noise``), so ``n`` pulses add ``n`` steps and noise of sigma ``sqrt(n)
  sigma(G)``; the pair is then kept as (g_min + max(d, 0), g_min + max(-d, 0)) within the
  window; stuck cells do not move;
- every pulse costs ``device.write.energy_pj`` and ``write.latency_ns``.
  :class:`EaPUResult` counts the pulses of the initial programming and of the updates, and
  each layer's ``engine.write_pulses`` grows by its update pulses.

Layers on digital arrays are updated exactly (SGD) and re-programmed; their bit writes are
counted separately. Analog layers must use the ``differential`` weight encoding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.errors import CimflowError
from cimflow.physics import programming_sigma
from cimflow.sim.convert import cim_layers, convert_model, program_model
from cimflow.sim.layers import CIMLayer
from cimflow.train.data import LossFn, as_batches

MODES = ("eapu", "deterministic")


@dataclass
class EaPUResult:
    """What :func:`eapu_train` returns.

    Attributes:
        cim_model: the trained chip instance (a converted, programmed model).
        steps: training steps.
        program_pulses: pulses of the initial programming (analog cells).
        update_pulses: pulses of the weight updates (analog cells).
        digital_bit_writes: bits rewritten in digital arrays by the updates.
        candidate_updates: analog weights with a non-zero desired update, summed over steps.
        written_updates: analog weights that received at least one pulse, summed over steps.
        write_energy_j: (program + update pulses) x the device's energy per pulse, joules.
        update_energy_j: update pulses x energy per pulse, joules.
        write_time_s: (program + update pulses) x the device's pulse latency (one pulse at a
            time, an upper bound: arrays program rows in parallel), seconds.
        history: per step ``{"step", "loss", "pulses"}``, and ``"score"`` at validation steps.
        seconds: wall-clock time of the simulation.
    """

    cim_model: nn.Module
    steps: int = 0
    program_pulses: int = 0
    update_pulses: int = 0
    digital_bit_writes: int = 0
    candidate_updates: int = 0
    written_updates: int = 0
    write_energy_j: float = 0.0
    update_energy_j: float = 0.0
    write_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def write_fraction(self) -> float:
        """Share of desired (non-zero) analog updates that were written."""
        return self.written_updates / self.candidate_updates if self.candidate_updates else 0.0


def _check_layer(name: str, layer: CIMLayer) -> None:
    spec = layer.engine.spec
    if spec.kind == "analog" and spec.weight_encoding.scheme != "differential":
        raise CimflowError(
            f"eapu_train: layer {name!r} uses the {spec.weight_encoding.scheme!r} weight encoding; on-chip updates are "
            "modeled for 'differential' pairs only (override the layer to 'digital' or 'host', or use another chip)"
        )


def pulse_counts(ratio: torch.Tensor, mode: str, threshold: float, generator: torch.Generator) -> torch.Tensor:
    """Pulses per weight from ``ratio = |dw| / dw_pulse``: stochastic rounding (``"eapu"``,
    unbiased: E[pulses] = ratio) or round-to-nearest (``"deterministic"``); ratios below
    ``threshold`` get none."""
    if mode == "eapu":
        base = torch.floor(ratio)
        extra = torch.rand(ratio.shape, generator=generator, device=ratio.device, dtype=ratio.dtype) < (ratio - base)
        n = base + extra.to(ratio.dtype)
    else:
        n = torch.round(ratio)
    if threshold > 0:
        n = torch.where(ratio < threshold, torch.zeros_like(n), n)
    return n


@torch.no_grad()
def _apply_pulses(layer: CIMLayer, grad_in_out: torch.Tensor, lr: float, mode: str, threshold: float, pulse_levels: float,
                  stuck: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> tuple[int, int, int]:
    """Write one step's update into an analog layer's conductances. Returns (pulses,
    weights with a desired update, weights written)."""
    engine = layer.engine
    dev = engine.spec.device
    step_g = pulse_levels * (dev.g_max - dev.g_min) / (dev.n_levels - 1)  # siemens per pulse
    dw = -lr * grad_in_out  # (in, out), weight units
    dw_pulse = engine.w_scale * step_g / engine.denominator  # (out,), weight units per pulse
    ratio = dw.abs() / dw_pulse
    n = pulse_counts(ratio, mode, threshold, generator)
    sign = torch.sign(dw)
    g_pos, g_neg = engine.g_pos[0], engine.g_neg[0]  # (in, out): one slice (differential)
    d = g_pos - g_neg
    # write noise of the cell that holds the weight's magnitude
    sigma = programming_sigma(torch.maximum(g_pos, g_neg), dev.g_max, dev.programming_noise.coefficients)
    noise = torch.randn(d.shape, generator=generator, device=d.device, dtype=d.dtype) * sigma * n.sqrt()
    d_new = d + sign * n * step_g + torch.where(n > 0, noise, torch.zeros_like(noise))
    span = dev.g_max - dev.g_min
    d_new = d_new.clamp(-span, span)
    new_pos = dev.g_min + d_new.clamp_min(0.0)
    new_neg = dev.g_min + (-d_new).clamp_min(0.0)
    stuck_pos, stuck_neg = stuck
    written = n > 0
    if bool(written.any()):  # endurance: the most-written cell took max(n) pulses this step
        engine.spend_write_cycles(int(n.max()))
    engine.g_pos[0] = torch.where(written & ~stuck_pos, new_pos, g_pos)
    engine.g_neg[0] = torch.where(written & ~stuck_neg, new_neg, g_neg)
    return int(n.sum()), int((dw != 0).sum()), int(written.sum())


@torch.no_grad()
def _sync_weight(layer: CIMLayer) -> None:
    """Set the layer's float weight to the instance's programmed weight (at t0, no read noise)
    and mark the instance current, so the next forward does not re-program it."""
    engine = layer.engine
    w_norm = (engine.g_pos[0] - engine.g_neg[0]) / engine.denominator
    w = (w_norm * engine.w_scale).t().reshape(layer.weight.shape)
    layer.weight.copy_(w)
    engine._weight_version = layer.weight._version


def eapu_train(
    model: nn.Module,
    chip: Chip | str,
    data: Any,
    *,
    steps: int | None = None,
    epochs: float = 1.0,
    batch_size: int = 64,
    lr: float = 0.02,
    mode: str = "eapu",
    threshold: float = 0.0,
    pulse_levels: float = 1.0,
    seed: int = 0,
    program_seed: int = 0,
    loss_fn: LossFn | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    validate_every: int | None = None,
    overrides: Any = None,
) -> EaPUResult:
    """Train ``model`` on chip ``chip`` with on-chip updates (see the module docstring).

    Args:
        model: a float model; it is converted and programmed once (instance ``program_seed``)
            and that instance is trained in place.
        data: as for :func:`cimflow.train.hwa_finetune`.
        lr: SGD step size of the desired updates.
        mode: ``"eapu"`` (probabilistic pulses) or ``"deterministic"`` (round to pulses).
        threshold: skip updates smaller than this many pulses (0: none skipped).
        pulse_levels: conductance levels one pulse moves a cell.
        seed: seeds batch order, pulse draws and write noise.
        validate: ``score(cim_model)`` every ``validate_every`` steps (recorded only).
    """
    if mode not in MODES:
        raise CimflowError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise CimflowError(f"lr must be a positive number, got {lr!r}")
    if not pulse_levels > 0 or threshold < 0:
        raise CimflowError(f"pulse_levels must be positive and threshold >= 0, got {pulse_levels!r}, {threshold!r}")
    train = as_batches(data, batch_size)
    loss_fn = loss_fn or train.loss_fn
    if steps is None:
        steps = max(1, int(math.ceil(epochs * train.batches_per_epoch)))
    started = time.perf_counter()
    chip = resolve_chip(chip)
    cim, _ = convert_model(model, chip, overrides=overrides)
    all_layers = cim_layers(cim)
    layers = [(name, layer) for name, layer in all_layers if isinstance(layer, CIMLayer)]
    if len(layers) != len(all_layers):
        raise CimflowError("eapu_train supports Linear and Conv layers on arrays; keep embedding tables on the host or digital")
    for name, layer in layers:
        _check_layer(name, layer)
    program_model(cim, program_seed)
    result = EaPUResult(cim_model=cim)
    analog = [(n, layer) for n, layer in layers if layer.engine.spec.kind == "analog"]
    stuck: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in analog:
        masks = layer.engine.stuck_masks()
        assert masks is not None  # an analog layer, programmed above
        stuck[name] = (masks[0][0], masks[1][0])
        _sync_weight(layer)
        write = layer.engine.spec.device.write
        result.program_pulses += layer.engine.write_pulses
        result.write_energy_j += layer.engine.write_pulses * write.energy_j
        result.write_time_s += layer.engine.write_pulses * write.latency_s
    generator = torch.Generator().manual_seed(seed)
    pulse_gen = torch.Generator().manual_seed(seed + 7919)
    others = [p for p in cim.parameters() if not any(p is layer.weight for _, layer in analog)]
    digital_opt = torch.optim.SGD(others, lr=lr)

    step = 0
    cim.train()
    while step < steps:
        for inputs, target in train.epoch(generator):
            loss = loss_fn(cim(*inputs), target)
            digital_opt.zero_grad(set_to_none=True)
            for _, layer in analog:
                layer.weight.grad = None
            loss.backward()
            pulses = 0
            for name, layer in analog:
                if layer.weight.grad is None:
                    continue
                grad = layer.weight.grad.reshape(layer.weight.shape[0], -1).t()
                n, candidates, written = _apply_pulses(layer, grad, lr, mode, threshold, pulse_levels, stuck[name], pulse_gen)
                write = layer.engine.spec.device.write
                layer.engine.write_pulses += n
                result.update_energy_j += n * write.energy_j
                result.write_time_s += n * write.latency_s
                pulses += n
                result.candidate_updates += candidates
                result.written_updates += written
                layer.engine._refresh()
                _sync_weight(layer)
            before = {id(p): p.detach().clone() for p in others}
            digital_opt.step()
            for _, layer in layers:
                if layer.engine.spec.kind == "digital":
                    changed = int((layer.weight.detach() != before[id(layer.weight)]).sum())
                    result.digital_bit_writes += changed * (layer.engine.spec.weight_bits or 8)
            result.update_pulses += pulses
            step += 1
            result.history.append({"step": float(step), "loss": float(loss.detach()), "pulses": float(pulses)})
            if validate is not None and validate_every and step % validate_every == 0:
                cim.eval()
                result.history.append({"step": float(step), "score": float(validate(cim))})
                cim.train()
            if step >= steps:
                break
    cim.eval()
    result.steps = step
    result.write_energy_j += result.update_energy_j
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["MODES", "EaPUResult", "eapu_train", "pulse_counts"]
