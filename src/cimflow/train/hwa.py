"""Hardware-aware (HWA) fine-tuning: train a model while it runs on simulated chip instances.

Each step of :func:`hwa_finetune`:

1. programs a fresh chip instance (:func:`cimflow.train.noise.sample_instance`: programming
   noise, stuck cells and drift exponents drawn from the chip's device model, a new seed
   per step; by default from cached per-cell draws, :mod:`cimflow.train.draws`) and ages
   it to a random time, log-uniform between the device's ``t0`` and ``t_max``;
2. runs forward on it (read noise, DAC and ADC quantization) and backward with
   straight-through gradients to the ordinary float weights;
3. takes an optimizer step and clips the weights of analog layers to ``clip_sigma``
   standard deviations per column (:mod:`cimflow.train.clip`).

Options: learned DAC input ranges per layer (``learn_input_range``; LSQ-style gradient,
the range is a parameter ``engine.input_range_log``), drift compensation while training
(``compensation``), and model selection on a validation score.

``inject_noise=False`` runs the same loop on the float model without the chip (plain
fine-tuning, the baseline HWA is compared with).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.errors import CimflowError
from cimflow.physics import derive_seed
from cimflow.sim.convert import cim_layers, compensate_model, convert_model
from cimflow.sim.draw_pool import use_pooled_read_noise
from cimflow.sim.layers import CIMLayer
from cimflow.train.clip import clip_weights
from cimflow.train.data import LossFn, TrainData, as_batches
from cimflow.train.draws import InstanceDraws
from cimflow.train.noise import keep_programmed, sample_instance, step_seed
from cimflow.units import parse_duration


@dataclass
class HWAResult:
    """What :func:`hwa_finetune` returns.

    Attributes:
        model: the fine-tuned float model (same class and ``state_dict`` keys as the input):
            convert and program it like any model.
        cim_model: the converted model that was trained (it holds learned input ranges, if any).
        input_ranges: learned DAC input range per layer name (empty unless ``learn_input_range``).
        history: per logged step ``{"step", "loss", "t_fraction"}`` and, at validation
            steps, ``"score"``.
        steps: optimizer steps taken.
        seconds: wall-clock training time.
        best_step: step whose weights were kept (validation), or None (the last step's).
        best_score: validation score of ``best_step``.
    """

    model: nn.Module
    cim_model: nn.Module | None
    input_ranges: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    best_step: int | None = None
    best_score: float | None = None


def _t_max_seconds(t_max: float | str | None) -> float | None:
    if t_max is None:
        return None
    seconds = parse_duration(t_max)
    if seconds <= 0:
        raise CimflowError(f"t_max must be a positive duration (e.g. '1d'), got {t_max!r}")
    return seconds


def _is_converted(model: nn.Module) -> bool:
    return bool(cim_layers(model))


@torch.no_grad()
def initial_input_ranges(model: nn.Module, train: TrainData, batches: int = 4, seed: int = 0) -> dict[str, float]:
    """Largest |input| each matrix layer of a programmed converted model sees over a few
    training batches (the starting point of learned input ranges)."""
    seen: dict[str, float] = {}
    hooks = []
    for name, layer in cim_layers(model):
        if isinstance(layer, CIMLayer):
            def hook(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                seen[name] = max(seen.get(name, 0.0), float(args[0].detach().abs().amax()))

            hooks.append(layer.register_forward_pre_hook(hook))
    try:
        for k, (inputs, _) in enumerate(train.epoch(torch.Generator().manual_seed(seed))):
            if k >= batches:
                break
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return {name: max(value, 1e-6) for name, value in seen.items()}


def enable_learned_input_ranges(model: nn.Module, ranges: Mapping[str, float]) -> list[nn.Parameter]:
    """Give the named matrix layers of a converted model learned input ranges (see
    :meth:`cimflow.sim.engine.CrossbarEngine.enable_learned_input_range`) starting at
    ``ranges[name]``. Call it before loading a state dict that holds ``engine.input_range_log``."""
    params = []
    for name, layer in cim_layers(model):
        if isinstance(layer, CIMLayer) and name in ranges:
            params.append(layer.engine.enable_learned_input_range(float(ranges[name])))
    return params


def learned_input_ranges(model: nn.Module) -> dict[str, float]:
    """The learned input range of every matrix layer that has one."""
    out = {}
    for name, layer in cim_layers(model):
        learned = layer.engine.learned_input_range if isinstance(layer, CIMLayer) else None
        if learned is not None:
            out[name] = learned
    return out


def _optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay)
    raise CimflowError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def _float_copy(original: nn.Module, trained: nn.Module) -> nn.Module:
    """A copy of the float ``original`` holding the trained weights (engine-only keys dropped)."""
    out = copy.deepcopy(original)
    keys = set(out.state_dict())
    out.load_state_dict({k: v for k, v in trained.state_dict().items() if k in keys})
    out.eval()
    return out


def hwa_finetune(
    model: nn.Module,
    chip: Chip | str | None,
    data: Any,
    *,
    steps: int | None = None,
    epochs: float = 1.0,
    batch_size: int = 64,
    lr: float = 1e-3,
    t_max: float | str | None = "1d",
    t_min: float | str | None = None,
    resample_every: int = 1,
    clip_sigma: float | None = 3.0,
    learn_input_range: bool = False,
    input_range_lr: float = 1e-2,
    compensation: str | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    regularizer: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor] | None = None,
    inject_noise: bool = True,
    validate: Callable[[nn.Module], float] | None = None,
    validate_every: int | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    overrides: Mapping[Any, Any] | None = None,
    plan: Any = None,
    hot_rows: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cached_draws: bool = True,
) -> HWAResult:
    """Fine-tune ``model`` on ``data`` with the noise of ``chip`` in the loop (see the module
    docstring).

    Args:
        model: a float model (converted here with ``overrides`` / ``plan`` / ``hot_rows``,
            never modified) or an already converted model (trained in place).
        chip: preset name, YAML path or Chip (None only for an already converted model or
            ``inject_noise=False``).
        data: DigitsData, a RecDataset, a pair of tensors ``(x, y)`` or a re-iterable of
            batches ``(input_1, ..., input_k, target)`` (:func:`cimflow.train.data.as_batches`).
        steps: optimizer steps (default: ``epochs`` passes over the data).
        batch_size, lr, optimizer (``"adam"`` | ``"sgd"``), weight_decay: the optimizer.
        t_max: each step's instance is aged to a log-uniform time in [t0, t_max] (seconds or
            ``"1d"``, ``"1y"``; None: no drift in training). ``t_min`` (default: each device's
            ``t0``) moves the lower end; ``t_min == t_max`` trains at one time.
        resample_every: program a fresh instance at a fresh time every this many steps (1:
            every step, exact). Larger values amortize programming, the dearest part of a step
            on a CPU: in between, the forward runs on the last programmed instance (weights
            at most ``resample_every - 1`` steps old; read noise still drawn on every forward)
            and gradients reach the current weights straight through.
        clip_sigma: clip analog layers' weights to this many standard deviations per column
            after every step (None: no clipping).
        learn_input_range: learn one DAC input range per matrix layer (initialized at the
            largest input seen on 4 batches), with its own ``input_range_lr`` (on log(range)).
        compensation: drift compensation while training (``"global"``, ``"per_column"``, None).
        seed: seeds the instances, the times and the batch order.
        loss_fn: ``loss(output, target)``; default: cross-entropy for class labels, BCE with
            logits for a RecDataset, MSE for float targets.
        regularizer: ``penalty(model, inputs)`` added to the loss (e.g. the L2 penalty on the
            embedding rows a batch touches that DLRM training uses).
        inject_noise: False trains the float model without the chip (plain fine-tuning).
        validate: ``score(model) -> float`` (higher is better) called every
            ``validate_every`` steps and at the end; the best step's weights are kept. It gets
            the converted model (HWA) or the float model (plain) and may program and drift it.
        progress: ``progress(step, steps)`` after each step.
        cached_draws: take each step's per-cell draws (programming noise, stuck cells, drift
            exponents) from per-layer pools of cached draws at a random offset
            (:class:`cimflow.train.draws.InstanceDraws`: every instance has the device
            model's distribution, at a fraction of the cost), and the training forwards' read
            noise from a pool too (:func:`cimflow.sim.draw_pool.use_pooled_read_noise`);
            False: draw every instance and read from fresh generators, as ``cimflow.program``
            and inference do.
    """
    train = as_batches(data, batch_size)
    loss_fn = loss_fn or train.loss_fn
    if steps is None:
        if not train.batches_per_epoch:
            raise CimflowError("give steps=N: the number of batches per epoch of this data is unknown")
        steps = max(1, int(math.ceil(epochs * train.batches_per_epoch)))
    if steps < 1:
        raise CimflowError(f"steps must be at least 1, got {steps}")
    if isinstance(resample_every, bool) or not isinstance(resample_every, int) or resample_every < 1:
        raise CimflowError(f"resample_every must be an integer >= 1, got {resample_every!r}")
    if clip_sigma is not None and not clip_sigma > 0:
        raise CimflowError(f"clip_sigma must be positive (or None for no clipping), got {clip_sigma!r}")
    t_max_s = _t_max_seconds(t_max)
    t_min_s = _t_max_seconds(t_min)
    started = time.perf_counter()

    converted_input = _is_converted(model)
    if not inject_noise:
        if converted_input:
            raise CimflowError("plain fine-tuning (inject_noise=False) needs the float model, not a converted one")
        net, cim = copy.deepcopy(model), None
    elif converted_input:
        net = cim = model
    else:
        if chip is None:
            raise CimflowError("hwa_finetune needs a chip (preset name, YAML path or Chip) to convert the model")
        if plan is None:
            chip = resolve_chip(chip)
        cim, _ = convert_model(model, chip, overrides=overrides, plan=plan, hot_rows=hot_rows)
        net = cim

    generator = torch.Generator().manual_seed(seed)
    time_gen = torch.Generator().manual_seed(seed + 1)
    draws = InstanceDraws(seed) if cached_draws else None
    if cim is not None:
        compensate_model(cim, compensation)
        sample_instance(cim, step_seed(seed, -1), None, time_gen)
        if cached_draws:  # the training reads' noise in bulk too (inference reads keep their generator)
            for name, layer in cim_layers(cim):
                if isinstance(layer, CIMLayer):
                    use_pooled_read_noise(layer.engine, derive_seed(seed, name, "hwa-read-pool"))
    groups: list[dict[str, Any]] = [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    if learn_input_range:
        if cim is None:
            raise CimflowError("learn_input_range needs the chip in the loop (inject_noise=True)")
        existing = learned_input_ranges(cim)
        fresh = {k: v for k, v in initial_input_ranges(cim, train, seed=seed).items() if k not in existing}
        enable_learned_input_ranges(cim, fresh)
        range_params = [layer.engine.input_range_log for _, layer in cim_layers(cim)
                        if isinstance(layer, CIMLayer) and layer.engine.input_range_log is not None]
        ids = {id(p) for p in range_params}
        groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in ids]
        groups.append({"params": range_params, "lr": input_range_lr, "weight_decay": 0.0})
    opt = _optimizer(optimizer, groups, weight_decay)

    result = HWAResult(model=model, cim_model=cim)
    best_state, best_score, best_step = None, -math.inf, None

    def run_validation(step: int) -> None:
        nonlocal best_state, best_score, best_step
        net.eval()
        score = float(validate(net))  # type: ignore[misc]
        net.train()
        result.history.append({"step": float(step), "score": score})
        if score > best_score:
            best_score, best_step = score, step
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    step, fraction = 0, 0.0
    net.train()
    while step < steps:
        for inputs, target in train.epoch(generator):
            if cim is not None:
                if step % resample_every == 0:
                    fraction = sample_instance(cim, step_seed(seed, step), t_max_s, time_gen, t_min_s, draws)
                else:
                    keep_programmed(cim)
            out = net(*inputs)
            loss = loss_fn(out, target)
            objective = loss if regularizer is None else loss + regularizer(net, inputs)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            if cim is not None and clip_sigma is not None:
                clip_weights(cim, clip_sigma, count=False)
            step += 1
            result.history.append({"step": float(step), "loss": float(loss.detach()), "t_fraction": fraction})
            if progress is not None:
                progress(step, steps)
            if validate is not None and validate_every and step % validate_every == 0 and step < steps:
                run_validation(step)
            if step >= steps:
                break
    if validate is not None:
        run_validation(step)
        if best_state is not None:
            net.load_state_dict(best_state)
        result.best_step, result.best_score = best_step, best_score
    net.eval()
    if cim is not None and cached_draws:
        for _, layer in cim_layers(cim):
            if isinstance(layer, CIMLayer):
                use_pooled_read_noise(layer.engine, None)
    result.steps = step
    result.seconds = time.perf_counter() - started
    if cim is not None:
        result.input_ranges = learned_input_ranges(cim)
        result.model = cim if converted_input else _float_copy(model, cim)
    else:
        result.model = net
    return result


def plain_finetune(model: nn.Module, data: Any, **kwargs: Any) -> HWAResult:
    """The same loop as :func:`hwa_finetune` on the float model, without the chip (the baseline)."""
    kwargs.pop("chip", None)
    return hwa_finetune(model, None, data, inject_noise=False, **kwargs)


__all__ = ["HWAResult", "enable_learned_input_ranges", "hwa_finetune", "initial_input_ranges", "learned_input_ranges", "plain_finetune"]
