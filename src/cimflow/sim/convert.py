"""Whole-model transforms: replace mappable layers by CIM layers, program, drift, calibrate."""

from __future__ import annotations

import copy
import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.errors import ChipSpecError, MappingError, SimulationError
from cimflow.sim.layers import CIMConv, CIMLayer, CIMLinear

#: Layers cimflow maps onto arrays.
MAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Parameterized layers that are vector operations (run on the digital unit, never refused).
VECTOR_LAYERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.PReLU, nn.RMSNorm,
)

HOST = "host"
DIGITAL = "digital"


@dataclass
class LayerTarget:
    """Where one layer goes: an array kind of a chip, or the host."""

    chip: Chip | None
    array_kind: str | None

    @property
    def on_host(self) -> bool:
        return self.chip is None


@dataclass
class ConversionReport:
    """What :func:`convert_model` did: mapped layers, host layers and why."""

    mapped: dict[str, str] = field(default_factory=dict)  # layer name -> "chip:array_kind"
    host: dict[str, str] = field(default_factory=dict)  # layer name -> reason


def _matches(key: Any, name: str, module: nn.Module) -> bool:
    if isinstance(key, type):
        return isinstance(module, key)
    if not isinstance(key, str):
        raise MappingError(f"override keys must be a layer name, a glob pattern, 're:<regex>' or a module type; got {key!r}")
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    return key == name or fnmatch.fnmatchcase(name, key)


def _resolve_target(value: Any, chip: Chip, name: str) -> LayerTarget:
    if value is None or value == HOST or value == "keep":
        return LayerTarget(None, None)
    if value == DIGITAL:
        if chip.roles.digital is None:
            raise MappingError(f"layer {name!r}: override 'digital' needs a digital CIM array, and chip {chip.name!r} has none (roles.digital); use 'host' to keep it in float")
        return LayerTarget(chip, chip.roles.digital)
    if isinstance(value, str) and value in chip.arrays:
        return LayerTarget(chip, value)
    try:
        other = resolve_chip(value)
    except ChipSpecError as err:
        raise MappingError(
            f"layer {name!r}: override {value!r} is not 'host', 'digital', an array kind of {chip.name!r} "
            f"({', '.join(sorted(chip.arrays))}) or a chip ({err})"
        ) from None
    return LayerTarget(other, other.roles.mvm)


def _target_for(name: str, module: nn.Module, chip: Chip, overrides: Mapping[Any, Any]) -> LayerTarget:
    chosen = None
    for key, value in overrides.items():  # the last matching rule wins, like CSS
        if _matches(key, name, module):
            chosen = (value,)
    if chosen is not None:
        return _resolve_target(chosen[0], chip, name)
    return LayerTarget(chip, chip.roles.mvm)


def _unsupported_reason(module: nn.Module) -> str | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
        return f"grouped convolution (groups={module.groups}) is not mapped yet"
    if isinstance(module, MAPPABLE):
        return None
    if isinstance(module, VECTOR_LAYERS):
        return None
    has_matrix = any(p.dim() >= 2 for p in module.parameters(recurse=False))
    if has_matrix:
        return f"{type(module).__name__} holds a weight matrix cimflow cannot map onto arrays"
    return None


def convert_model(
    model: nn.Module, chip: Chip | str, overrides: Mapping[Any, Any] | None = None,
    allow_host: bool = False, inplace: bool = False,
) -> tuple[nn.Module, ConversionReport]:
    """Replace every nn.Linear / nn.Conv1d / nn.Conv2d by its CIM layer on ``chip``.

    ``overrides`` maps a layer name, a glob (``"features.*"``), ``"re:<regex>"`` or a module
    type to ``"digital"`` (the chip's digital CIM arrays), ``"host"`` (keep in float on the
    host), an array kind of the chip, or another chip (preset name, YAML path, Chip). Layers
    that hold a weight matrix cimflow cannot map are refused with a :class:`MappingError`
    unless ``allow_host`` is true; then they stay on the host and the report lists them.
    """
    if not isinstance(model, nn.Module):
        raise MappingError(f"convert needs a torch.nn.Module, got {type(model).__name__}")
    base_chip = resolve_chip(chip)
    overrides = dict(overrides or {})
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    refused = []
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, CIMLayer):
            raise MappingError(f"layer {name!r} is already a CIM layer: convert the original float model")
        reason = _unsupported_reason(module)
        target = _target_for(name, module, base_chip, overrides) if isinstance(module, MAPPABLE) or reason else None
        if reason is not None:
            if target is not None and target.on_host:
                report.host[name] = f"{type(module).__name__}: host by override"
                continue
            refused.append(f"{name} ({reason})")
            report.host[name] = reason
            continue
        if target is None:
            continue
        if target.on_host:
            report.host[name] = f"{type(module).__name__}: host by override"
            continue
        spec = target.chip.array(target.array_kind)
        layer = CIMLinear(module, spec, target.array_kind, name) if isinstance(module, nn.Linear) else CIMConv(module, spec, target.array_kind, name)
        layer.chip_name = target.chip.name
        replacements.append((name, layer))
        report.mapped[name] = f"{target.chip.name}:{target.array_kind}"
    if refused and not allow_host:
        raise MappingError(
            "cannot map these layers onto the chip: " + "; ".join(refused)
            + ". Pass allow_host=True (CLI: --allow-host) to run them on the host in float, or override them with 'host'"
        )
    if refused:
        warnings.warn("running on the host (not mapped): " + "; ".join(refused), stacklevel=3)
    for name, layer in replacements:
        _set_submodule(model, name, layer)
    model._cimflow_report = report  # type: ignore[attr-defined]
    return model, report


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise MappingError("the model itself is a single layer: wrap it in nn.Sequential to convert it")
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def cim_layers(model: nn.Module) -> list[tuple[str, CIMLayer]]:
    """The CIM layers of a converted model, by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CIMLayer)]


def _require_converted(model: nn.Module) -> list[tuple[str, CIMLayer]]:
    layers = cim_layers(model)
    if not layers:
        raise SimulationError("the model has no CIM layers: call cimflow.convert(model, chip) first")
    return layers


def program_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """Program one chip instance: sample every layer's programming noise, stuck cells and
    drift exponents once from ``seed``, and reset the time since programming."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SimulationError(f"seed must be an integer, got {seed!r}")
    with torch.no_grad():
        for _, layer in _require_converted(model):
            layer.program(seed)
    return model


def drift_model(model: nn.Module, t_seconds: float) -> nn.Module:
    """Move a programmed instance to ``t_seconds`` after programming."""
    with torch.no_grad():
        for _, layer in _require_converted(model):
            layer.engine.set_time(t_seconds)
    return model


def calibrate_model(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Set calibrated input ranges and percentile ADC ranges from a few batches of data.

    Each batch is passed to the model as ``model(*batch)`` if it is a tuple or list, else
    ``model(batch)``. Layers whose chip asks for neither mode are unaffected.
    """
    layers = _require_converted(model)
    for _, layer in layers:
        if not layer.engine.programmed:
            raise SimulationError("program the model (cimflow.program) before calibrating it")
        layer.engine.begin_calibration()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
                seen += 1
    finally:
        for _, layer in layers:
            layer.engine.end_calibration() if seen else layer.engine.begin_calibration()
            layer.engine._calibrating = False
    if not seen:
        raise SimulationError("calibrate got no batches: pass an iterable of input batches")
    return model
