"""Sensitivity-driven partitioning (layer-granular mixed analog/digital, after the idea of
TSMC's Nature 2025 mixed-precision CIM): measure how much each layer alone suffers on the
analog substrate, then move the most sensitive layers to digital CIM until an accuracy
budget is met, with as few digital arrays as that takes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.compile.pipeline import compile_model
from cimflow.compile.rules import DIGITAL, HOST
from cimflow.errors import CompileError
from cimflow.sim.convert import convert_model, drift_model, program_model

Metric = Callable[[nn.Module], float]


@dataclass
class SensitivityResult:
    """What the partition measured and decided.

    ``sensitivity[layer]``: the metric loss with only that layer analog (others float).
    ``moved``: layers sent to digital CIM, most sensitive first. ``rules``: placement rules
    that reproduce the decision (pass them to :func:`cimflow.compile`). ``history``: the
    metric loss after each move (first entry: all analog).
    """

    reference: float
    sensitivity: dict[str, float]
    moved: list[str]
    rules: dict[str, str]
    history: list[float]
    budget: float
    met: bool
    digital_arrays: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def output_error_metric(inputs: Any, reference_model: nn.Module) -> tuple[Metric, float]:
    """A metric for when there is no task metric: minus the relative output error
    ``||y - y_ref|| / ||y_ref||`` on ``inputs`` (0 is perfect)."""
    with torch.no_grad():
        ref = _run(reference_model, inputs)

    def metric(model: nn.Module) -> float:
        with torch.no_grad():
            y = _run(model, inputs)
        return -float((y - ref).norm() / ref.norm().clamp_min(1e-30))

    return metric, 0.0


def _run(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out[0]


def partition_by_sensitivity(
    model: nn.Module, chip: Chip | str, inputs: Any = None, metric: Metric | None = None, budget: float = 0.01,
    rules: Mapping[Any, Any] | None = None, seeds: tuple[int, ...] = (0,), t: float | None = None,
) -> SensitivityResult:
    """Choose which layers go to the chip's digital CIM arrays.

    ``metric(model) -> float`` scores a model (higher is better, e.g. accuracy on
    calibration data); ``budget`` is the largest allowed drop from the float model. With no
    metric, the relative output error on ``inputs`` is used and ``budget`` bounds it.
    Each candidate is scored as the mean over chip instances ``seeds`` (at ``t`` seconds
    after programming, when given).
    """
    chip = resolve_chip(chip)
    if chip.roles.digital is None:
        raise CompileError(f"chip {chip.name!r} has no digital CIM array (roles.digital): there is nowhere to move sensitive layers")
    if metric is None:
        if inputs is None:
            raise CompileError("partition_by_sensitivity needs a metric or calibration inputs")
        metric, reference = output_error_metric(inputs, model)
    else:
        reference = metric(model)
    base_rules = dict(rules or {})
    plan = compile_model(model, chip, rules=base_rules, replicate=False)
    analog = [o.module for o in plan.array_ops() if o.module and chip.arrays[o.placed_kind()].kind == "analog"]
    if not analog:
        raise CompileError(f"no layer of this model is on an analog array of {chip.name!r}: nothing to partition")

    def loss(extra: Mapping[str, str]) -> float:
        cim, _ = convert_model(model, chip, overrides={**base_rules, **extra}, allow_host=True)
        scores = []
        for seed in seeds:
            program_model(cim, seed)
            if t is not None:
                drift_model(cim, t)
            scores.append(metric(cim))
        return reference - sum(scores) / len(scores)

    sensitivity = {}
    for name in analog:
        others = {other: HOST for other in analog if other != name}
        sensitivity[name] = loss(others)
    order = sorted(analog, key=lambda n: sensitivity[n], reverse=True)
    moved: list[str] = []
    history = [loss({})]
    while history[-1] > budget and len(moved) < len(order):
        moved.append(order[len(moved)])
        history.append(loss({n: DIGITAL for n in moved}))
    final_rules = {**base_rules, **{n: DIGITAL for n in moved}}
    final_plan = compile_model(model, chip, rules=final_rules, replicate=False)
    digital_arrays = sum(o.arrays for o in final_plan.array_ops() if o.array_kind == chip.roles.digital)
    met = history[-1] <= budget
    notes = [] if met else [f"the budget {budget:g} is not met even with every analog layer on digital CIM (loss {history[-1]:.4g})"]
    return SensitivityResult(reference, sensitivity, moved, {n: DIGITAL for n in moved}, history, budget, met, digital_arrays, notes)
