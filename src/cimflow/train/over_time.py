"""A model's metric over chip instances and times after programming, with and without drift
compensation (what ``cimflow simulate`` prints and plots).

The metric is the model file's ``evaluate(model) -> float`` when it has one (the task
metric, higher is better), else the relative output error against the float model on the
example inputs, ``||y_chip - y_float|| / ||y_float||`` over every output tensor (lower is
better). Each instance is programmed once and aged through the times in order; at every
time it is evaluated without compensation and with it (the same instance, so the two
series differ only by the compensation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cimflow.chip.io import resolve_chip
from cimflow.chip.spec import Chip
from cimflow.compile.example_inputs import run_example_inputs
from cimflow.errors import CimflowError, SimulationError
from cimflow.sim.convert import (
    compensate_model,
    convert_model,
    drift_model,
    program_model,
)
from cimflow.sim.engine import check_compensation_mode
from cimflow.units import format_duration, parse_duration


@dataclass
class OverTimeResult:
    """Metric vs time after programming; ``series`` as in the run report's ``accuracy.series``:
    ``{"label", "compensation", "points": [{"t", "t_seconds", "mean", "std", "values"}]}``."""

    metric: str
    higher_is_better: bool
    fp32: float
    chip: str
    instances: int
    series: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "fp32": self.fp32, "chip": self.chip,
                "instances": self.instances, "series": self.series}


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.detach().float()]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def relative_output_error(reference: Any, output: Any) -> float:
    """``||output - reference|| / ||reference||`` over all output tensors (0 for a zero reference and output)."""
    ref, out = _tensors(reference), _tensors(output)
    if not ref or len(ref) != len(out):
        raise CimflowError("the model's outputs hold no tensors to compare (or a different number of them on the chip)")
    num = sum(float((o - r).square().sum()) for o, r in zip(out, ref, strict=True))
    den = sum(float(r.square().sum()) for r in ref)
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))


def _finite(value: float, what: str) -> float:
    """``value``, or a SimulationError when it is NaN or infinite (never averaged silently)."""
    if not math.isfinite(value):
        raise SimulationError(
            f"{what} is {value}: the outputs are not finite numbers (check the model's weights and "
            "inputs, and the chip's ranges: ADC/DAC ranges, conductances, drift)")
    return value


def parse_times(times: str | Sequence[str | float]) -> list[tuple[str, float]]:
    """``"1s,1h,1d"`` (or a list) -> [(label, seconds)], in the order given."""
    items = [t.strip() for t in times.split(",")] if isinstance(times, str) else list(times)
    items = [t for t in items if t != ""]
    if not items:
        raise CimflowError("give at least one time after programming, e.g. --times 1s,1d,1y")
    out = []
    for item in items:
        seconds = parse_duration(item)
        out.append((item if isinstance(item, str) else format_duration(seconds), seconds))
    return out


def accuracy_over_time(
    model: nn.Module, chip: Chip | str, times: str | Sequence[str | float], instances: int = 5,
    compensation: str | None = "global", evaluate: Callable[[nn.Module], float] | None = None,
    example_inputs: Any = None, seed: int = 0, progress: Callable[[], None] | None = None,
) -> OverTimeResult:
    """Metric of ``model`` on ``instances`` chip instances (seeds ``seed``..) at each of ``times``
    after programming, without and (unless ``compensation`` is None) with drift compensation."""
    if instances < 1:
        raise CimflowError(f"instances must be at least 1, got {instances}")
    mode = check_compensation_mode(compensation)
    chip = resolve_chip(chip)
    points = parse_times(times)
    if evaluate is None and example_inputs is None:
        raise CimflowError("give evaluate(model) -> float or example inputs to compare outputs against the float model")
    model.eval()
    if example_inputs is not None:  # the same input check as compile and estimate
        reference = run_example_inputs(model, example_inputs)
    if evaluate is not None:
        metric, higher = "metric (evaluate)", True
        fp32 = _finite(float(evaluate(model)), "evaluate(model) on the float model")
    else:
        metric, higher = "relative output error", False
        fp32 = 0.0
    cim, _ = convert_model(model, chip)
    cim.eval()

    def score() -> float:
        if evaluate is not None:
            return float(evaluate(cim))
        with torch.no_grad():
            return relative_output_error(reference, _call(cim, example_inputs))

    modes: list[str | None] = [None] + ([mode] if mode is not None else [])
    values: dict[str | None, dict[str, list[float]]] = {m: {label: [] for label, _ in points} for m in modes}
    for k in range(instances):
        program_model(cim, seed + k)
        for label, t in points:
            drift_model(cim, t)
            for m in modes:
                compensate_model(cim, m)
                values[m][label].append(_finite(score(), f"the {metric} of chip instance {seed + k} at {label} "
                                                           f"after programming ({m or 'no'} compensation)"))
            if progress is not None:
                progress()
        compensate_model(cim, None)
    result = OverTimeResult(metric, higher, fp32, chip.name, instances)
    for m in modes:
        label = "no compensation" if m is None else f"{m.replace('_', '-')} drift compensation"
        result.series.append({"label": label, "compensation": m, "points": [
            {"t": t_label, "t_seconds": t, "mean": statistics.fmean(values[m][t_label]), "std": statistics.pstdev(values[m][t_label]),
             "values": values[m][t_label]} for t_label, t in points]})
    return result


__all__ = ["OverTimeResult", "accuracy_over_time", "parse_times", "relative_output_error"]
