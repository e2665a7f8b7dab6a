"""The vocabulary of the chip validation (:mod:`cimflow.cost.validation`): the tolerance, the
metrics a paper reports and a cost report predicts, a published figure, the benchmark
workloads, a benchmark (chip, operating point, workload, figures) and one result row.

Re-exported from :mod:`cimflow.cost.validation` (import them from there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cimflow.chip.spec import Chip
from cimflow.cost.kind_cost import CostOptions
from cimflow.cost.report_types import CostReport
from cimflow.errors import CimflowError

#: The agreement the validation asks of every predicted figure (relative error).
TOLERANCE = 0.20

DERIVED = "derived"
PREDICTED = "predicted"


# ----------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class Metric:
    """A figure a paper reports and the cost report predicts: ``value(report)`` in ``unit``."""

    label: str
    unit: str
    value: Callable[[CostReport], float]


#: Every metric a validation row may compare, by key (the ``metric`` of a row).
METRICS: dict[str, Metric] = {
    "tops_w": Metric("TOPS/W", "TOPS/W", lambda r: r.tops_per_w),
    "tops_mm2": Metric("TOPS/mm^2", "TOPS/mm^2", lambda r: r.tops_per_mm2),
    "tops": Metric("TOPS", "TOPS", lambda r: r.tops),
    "tops_sustained": Metric("sustained TOPS", "TOPS", lambda r: r.tops_sustained),
    "power_w": Metric("power", "W", lambda r: r.power_w),
    "energy_per_inference_j": Metric("energy per inference", "J", lambda r: r.energy_j),
    "energy_per_query_j": Metric("energy per query", "J", lambda r: r.energy_per_query_j),
    "latency_s": Metric("latency", "s", lambda r: r.latency_s),
    "qps": Metric("queries per second", "1/s", lambda r: r.qps),
    "qps_per_w": Metric("queries per joule", "1/J", lambda r: r.qps_per_w),
    "area_mm2": Metric("area", "mm^2", lambda r: r.area_mm2),
}


@dataclass(frozen=True)
class Reported:
    """One published figure of a benchmark.

    Attributes:
        metric: a key of :data:`METRICS` (``"tops_w"``, ``"power_w"``, ...).
        value: the published number, in the metric's unit.
        derived: ``True`` when a preset parameter was computed from this very figure (the
            row is then reported but not counted towards the tolerance verdict).
        source: where the number comes from (citation keys of the preset); empty: the
            benchmark's ``reported_source``.
    """

    metric: str
    value: float
    derived: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise CimflowError(f"reported figure: unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not (
                math.isfinite(self.value) and self.value > 0):
            raise CimflowError(f"reported {self.metric}: the value must be a finite number > 0, got {self.value!r}")

    @property
    def basis(self) -> str:
        return DERIVED if self.derived else PREDICTED


# ----------------------------------------------------------------------------- workloads

@dataclass(frozen=True)
class LinearMVM:
    """One full-array MVM per array: ``nn.Linear(in_features, out_features, bias=False)`` on
    ``batch`` input vectors."""

    in_features: int
    out_features: int
    batch: int

    def describe(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias=False) x {self.batch} vectors"

    def build(self) -> tuple[Any, Any]:
        import torch
        from torch import nn

        return nn.Linear(self.in_features, self.out_features, bias=False), torch.zeros(self.batch, self.in_features)


@dataclass(frozen=True)
class ModelWorkload:
    """Any model: ``factory()`` returns ``(module, example_input)``; ``batch`` queries per
    inference (the estimate's batch size)."""

    description: str
    batch: int
    factory: Callable[[], tuple[Any, Any]]

    def describe(self) -> str:
        return self.description

    def build(self) -> tuple[Any, Any]:
        return self.factory()


Workload = LinearMVM | ModelWorkload


# ----------------------------------------------------------------------------- benchmarks and rows

@dataclass(frozen=True)
class ChipBenchmark:
    """One published chip (or operating point) and the measurement that reproduces it.

    Attributes:
        name: row name, e.g. ``"neurram@4b/6b"``.
        preset: the validation preset, ``"validation/<name>"``.
        workload: :class:`LinearMVM` or :class:`ModelWorkload`.
        reported: the published figures, one :class:`Reported` per metric.
        derived_parameters: the preset fields computed from reported figures, each with the
            figure (empty only when nothing was derived from any reported figure).
        reported_source: where the reported figures come from (citation keys of the preset).
        notes: conditions, caveats and cross-checks.
        overrides: dotted field path -> value, or a function of the loaded preset returning
            them: the operating point (empty: the preset as shipped).
        options: cost options of the estimate (``None``: ``CostOptions()``).
    """

    name: str
    preset: str
    workload: Workload
    reported: tuple[Reported, ...]
    derived_parameters: tuple[str, ...]
    reported_source: str
    notes: str = ""
    overrides: Mapping[str, Any] | Callable[[Chip], Mapping[str, Any]] = field(default_factory=dict)
    options: CostOptions | None = None

    def __post_init__(self) -> None:
        metrics = [r.metric for r in self.reported]
        if not metrics:
            raise CimflowError(f"chip benchmark {self.name!r}: give at least one reported figure")
        if len(set(metrics)) != len(metrics):
            raise CimflowError(f"chip benchmark {self.name!r}: metric reported twice in {metrics}")

    def figure(self, metric: str) -> Reported | None:
        return next((r for r in self.reported if r.metric == metric), None)


@dataclass
class ValidationRow:
    """Reported vs predicted value of one metric of one chip or operating point.

    ``error = predicted / reported - 1``; ``within_tolerance`` is ``|error| <= TOLERANCE``;
    ``derived`` rows (the prediction used the reported figure) are not counted by
    :func:`summarize`'s verdict.
    """

    chip: str
    metric: str
    unit: str
    predicted: float
    reported: float
    derived: bool
    error: float
    within_tolerance: bool
    preset: str
    workload: str
    source: str
    derived_parameters: list[str]
    notes: str

    @property
    def basis(self) -> str:
        return DERIVED if self.derived else PREDICTED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
