"""Whole-model transforms: replace mappable layers by CIM layers, program, drift, calibrate,
compensate drift."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.compile.pipeline import compile_model, wrap_single_layer
from cimflow.compile.plan import Plan
from cimflow.compile.rules import DIGITAL, DIGITAL_UNIT, HOST, matching_rule
from cimflow.errors import ChipSpecError, MappingError, SimulationError
from cimflow.sim.embedding import CIMEmbeddingBag
from cimflow.sim.engine import CrossbarEngine, check_compensation_mode
from cimflow.sim.layers import CIMConv, CIMLayer, CIMLinear

#: Layers cimflow maps onto arrays.
MATRIX_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
MAPPABLE = MATRIX_LAYERS + (nn.Embedding, nn.EmbeddingBag)
#: Parameterized layers that are vector operations (run on the digital unit, never refused).
VECTOR_LAYERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.PReLU, nn.RMSNorm,
)

@dataclass
class ConversionReport:
    """What :func:`convert_model` did: mapped layers, host layers and why."""

    mapped: dict[str, str] = field(default_factory=dict)  # layer name -> "chip:array_kind"
    host: dict[str, str] = field(default_factory=dict)  # layer name -> reason


def _type_names(module: nn.Module) -> tuple[str, ...]:
    return tuple(cls.__name__ for cls in type(module).__mro__)


def _split_overrides(overrides: Mapping[Any, Any], chip: Chip) -> tuple[dict, dict]:
    """Overrides the plan can express (host, digital, an array kind of ``chip``) and those
    that send a layer to another chip (applied on top of the plan)."""
    plan_rules, foreign = {}, {}
    for key, value in overrides.items():
        if value in (None, HOST, "keep", DIGITAL, DIGITAL_UNIT) or (isinstance(value, str) and value in chip.arrays):
            plan_rules[key] = value
        else:
            try:
                other = resolve_chip(value)
            except ChipSpecError as err:
                raise MappingError(
                    f"override {key!r}: {value!r} is not 'host', 'digital', an array kind of {chip.name!r} "
                    f"({', '.join(sorted(chip.arrays))}) or a chip ({err})"
                ) from None
            foreign[key] = other
    return plan_rules, foreign


def _unsupported_reason(module: nn.Module) -> str | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
        return f"grouped convolution (groups={module.groups}) is not mapped yet"
    if isinstance(module, nn.EmbeddingBag) and module.mode not in ("sum", "mean"):
        return f"EmbeddingBag mode {module.mode!r} cannot be pooled in an array (sum or mean only)"
    if isinstance(module, MAPPABLE):
        return None
    if isinstance(module, VECTOR_LAYERS):
        return None
    has_matrix = any(p.dim() >= 2 for p in module.parameters(recurse=False))
    if has_matrix:
        return f"{type(module).__name__} holds a weight matrix cimflow cannot map onto arrays"
    return None


def convert_model(
    model: nn.Module, chip: Chip | str | Path, overrides: Mapping[Any, Any] | None = None,
    allow_host: bool = False, inplace: bool = False, plan: Plan | None = None,
    hot_rows: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """Execute a plan: replace every nn.Linear / nn.Conv1d / nn.Conv2d the plan puts on
    arrays by its CIM layer.

    Without ``plan``, the model is compiled for ``chip`` first (placement only, no example
    inputs), with ``overrides`` as placement rules: a layer name, a glob
    (``"features.*"``), ``"re:<regex>"`` or a module type mapped to ``"digital"`` (the
    chip's digital CIM arrays), ``"host"`` (keep in float), an array kind of the chip -
    or another chip (preset name, YAML path, Chip), which sends the layer to that chip's
    MVM arrays. ``hot_rows`` maps an embedding layer's name to the row ids served exactly
    from the digital tier (see :mod:`cimflow.compile.tiers`). Layers that hold a weight matrix cimflow cannot map are refused with a
    :class:`MappingError` unless ``allow_host`` is true; then they stay on the host and
    the report lists them.
    """
    if not isinstance(model, nn.Module):
        raise MappingError(f"convert needs a torch.nn.Module, got {type(model).__name__}")
    model = wrap_single_layer(model)  # a bare nn.Linear: named as compile names it
    base_chip = plan.chip if plan is not None else resolve_chip(chip)
    plan_rules, foreign = _split_overrides(dict(overrides or {}), base_chip)
    if plan is None:
        plan = compile_model(model, base_chip, rules=plan_rules, replicate=False)
    on_arrays = plan.module_targets()
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    refused = []
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, (CIMLayer, CIMEmbeddingBag)):
            raise MappingError(f"layer {name!r} is already a CIM layer: convert the original float model")
        types = _type_names(module)
        host_rule = matching_rule(plan_rules, name, types)
        on_host_by_rule = host_rule is not None and host_rule[1] in (None, HOST, "keep")
        reason = _unsupported_reason(module)
        if reason is not None:
            if on_host_by_rule:
                report.host[name] = f"{type(module).__name__}: host by override"
                continue
            refused.append(f"{name} ({reason})")
            report.host[name] = reason
            continue
        if not isinstance(module, MAPPABLE):
            continue
        foreign_rule = matching_rule(foreign, name, types) if foreign else None
        if foreign_rule is not None:
            target_chip, kind = foreign_rule[1], foreign_rule[1].roles.mvm
        elif name in on_arrays:
            target_chip, kind = base_chip, on_arrays[name]
        else:
            planned = next((o for o in plan.ops if o.name == name), None)
            why = "host by override" if on_host_by_rule else (
                planned.reason if planned is not None else "not in the plan (forward did not call it on the example inputs)")
            report.host[name] = f"{type(module).__name__}: {why}"
            continue
        spec = target_chip.array(kind)
        layer: CIMLayer | CIMEmbeddingBag
        if isinstance(module, nn.Linear):
            layer = CIMLinear(module, spec, kind, name)
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            layer = CIMEmbeddingBag(module, spec, kind, name, hot_rows=(hot_rows or {}).get(name))
        else:
            layer = CIMConv(module, spec, kind, name)
        layer.chip_name = target_chip.name
        replacements.append((name, layer))
        report.mapped[name] = f"{target_chip.name}:{kind}"
    if refused and not allow_host:
        raise MappingError(
            "cannot map these layers onto the chip: " + "; ".join(refused)
            + ". Pass allow_host=True (CLI: --allow-host) to run them on the host in float, or override them with 'host'"
        )
    if refused:
        warnings.warn("running on the host (not mapped): " + "; ".join(refused), stacklevel=3)
    for name, replacement in replacements:
        _set_submodule(model, name, replacement)
    model._cimflow_report = report  # type: ignore[assignment]  # a plain attribute, not a submodule
    model._cimflow_plan = plan  # type: ignore[assignment]  # a plain attribute, not a submodule
    return model, report


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise MappingError("the model itself is a single layer: wrap it in nn.Sequential to convert it")
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def cim_layers(model: nn.Module) -> list[tuple[str, CIMLayer | CIMEmbeddingBag]]:
    """The CIM layers (matrix layers and embedding tables) of a converted model, by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (CIMLayer, CIMEmbeddingBag))]


def _require_converted(model: nn.Module) -> list[tuple[str, CIMLayer | CIMEmbeddingBag]]:
    layers = cim_layers(model)
    if not layers:
        raise SimulationError("the model has no CIM layers: call cimflow.convert(model, chip) first")
    return layers


def program_model(
    model: nn.Module, seed: int = 0, verify_iterations: int | None = None, verify_tolerance: float | None = None,
) -> nn.Module:
    """Program one chip instance: sample every layer's programming noise, stuck cells and
    drift exponents once from ``seed``, and reset the time since programming.

    ``verify_iterations`` (when given) sets program-and-verify for this and later
    programmings: cells further than ``verify_tolerance`` (a fraction of ``g_max``; None:
    the cell's own programming sigma) from their target are programmed again, up to that
    many times; 0 turns it off. Each layer counts its pulses in ``write_pulses``
    (:func:`write_pulses`)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SimulationError(f"seed must be an integer, got {seed!r}")
    layers = _require_converted(model)
    if verify_iterations is not None:
        for _, layer in layers:
            _array_state(layer).set_program_verify(verify_iterations, verify_tolerance)
    with torch.no_grad():
        for _, layer in layers:
            layer.program(seed)
    return model


def _array_state(layer: CIMLayer | CIMEmbeddingBag) -> Any:
    """What holds a CIM layer's programmed instance: its engine, or the embedding bag itself."""
    return layer.engine if isinstance(layer, CIMLayer) else layer


def write_pulses(model: nn.Module) -> dict[str, int]:
    """Programming pulses each CIM layer's current instance cost (one per cell, plus
    program-and-verify re-programs and on-chip updates), by layer name. Multiply by the
    device's ``write.energy_j`` / ``write.latency_s`` for the write cost."""
    return {name: int(_array_state(layer).write_pulses) for name, layer in _require_converted(model)}


def compensate_model(model: nn.Module, mode: str | None = "global") -> nn.Module:
    """Turn drift compensation on for every analog layer of a converted model (or off with
    None / ``"none"``).

    A reference read (every row driven at full input) measures each column's conductance
    sum at programming time and at the current time after programming; each layer's
    analog partial sums are multiplied by reference(t0) / reference(t) ahead of the ADC (the
    converter's full scale scaled by the inverse, the digital output by the factor): one
    factor per layer (``"global"``) or one per output column (``"per_column"``). The factor is re-read
    whenever the model is drifted (:func:`drift_model`), and uses the instance's real
    conductances (programming noise, stuck cells, drift, IR drop), not the ideal weights.
    Digital arrays do not drift and are left alone."""
    mode = check_compensation_mode(mode)
    with torch.no_grad():
        for _, layer in _require_converted(model):
            _array_state(layer).set_compensation(mode)
    return model


def drift_model(model: nn.Module, t_seconds: float) -> nn.Module:
    """Move a programmed instance to ``t_seconds`` after programming."""
    with torch.no_grad():
        for _, layer in _require_converted(model):
            layer.set_time(t_seconds)
    return model


def calibrate_model(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Set calibrated input ranges and ADC ranges (``expected``: mean + sigmas standard
    deviations of the partial sums seen; ``percentile``) from a few batches of data.

    Each batch is passed to the model as ``model(*batch)`` if it is a tuple or list, else
    ``model(batch)``. Layers whose chip asks for neither mode are unaffected. Embedding
    tables on arrays whose ADC range is ``percentile`` or ``expected`` get their range from the pooled
    partial sums seen.
    """
    layers = [_array_state(m) for _, m in _require_converted(model)]
    for layer in layers:
        if not (layer.programmed if isinstance(layer, CrossbarEngine) else layer.seed is not None):
            raise SimulationError("program the model (cimflow.program) before calibrating it")
        layer.begin_calibration()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
                seen += 1
    finally:
        for layer in layers:
            layer.end_calibration() if seen else layer.begin_calibration()
            layer._calibrating = False
    if not seen:
        raise SimulationError("calibrate got no batches: pass an iterable of input batches")
    return model
