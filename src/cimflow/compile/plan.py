"""The Plan: the single source of truth that simulation and cost estimation both read.

A plan records, for every operator of the captured graph, the substrate that runs it
(an array kind of the chip, the digital vector unit, or the host), how a static weight
matrix is tiled onto arrays, its replication, the cores it sits on, and its cycles; plus
the schedule and the whole chip description, so a saved plan is self-contained.
JSON round-trips exactly (:meth:`Plan.to_json` / :meth:`Plan.from_json`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cimflow.chip.io import chip_from_dict
from cimflow.chip.spec import Chip
from cimflow.compile.graph import Graph
from cimflow.errors import CompileError, DataError
from cimflow.fileio import atomic_write_text, dumps_json
from cimflow.mapping.tiling import TileGrid
from cimflow.readers import read_text_bounded

PLAN_SCHEMA_VERSION = 1
#: Largest plan file :meth:`Plan.load` reads (a plan of a 10,000-operator model is a few MB).
MAX_PLAN_BYTES = 256 << 20

ARRAY = "array"
DIGITAL_UNIT = "digital_unit"
HOST = "host"
SUBSTRATES = (ARRAY, DIGITAL_UNIT, HOST)


@dataclass
class OpPlan:
    """Where and how one operator runs.

    ``substrate`` is ``"array"`` (then ``array_kind`` names the chip's array kind and
    ``tiles`` the tiling), ``"digital_unit"`` or ``"host"``. ``arrays`` counts one copy;
    the chip holds ``arrays * replication``. ``cycles`` are per inference at the chip
    clock, after replication. ``reason`` says why this substrate was chosen.
    """

    name: str
    kind: str
    op_type: str
    substrate: str
    array_kind: str | None = None
    module: str | None = None
    weight_shape: tuple[int, ...] | None = None
    tiles: TileGrid | None = None
    arrays: int = 0
    replication: int = 1
    utilization: float = 0.0
    cores: list[int] = field(default_factory=list)
    mvm_count: int = 0
    macs: int = 0
    cycles: int = 0
    latency_s: float = 0.0
    reason: str = ""
    source_location: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiles"] = self.tiles.to_dict() if self.tiles else None
        d["weight_shape"] = list(self.weight_shape) if self.weight_shape else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpPlan:
        data = dict(data)
        if data.get("tiles") is not None:
            data["tiles"] = TileGrid(**data["tiles"])
        if data.get("weight_shape") is not None:
            data["weight_shape"] = tuple(data["weight_shape"])
        if data.get("substrate") not in SUBSTRATES:
            raise CompileError(f"op {data.get('name')!r}: substrate {data.get('substrate')!r} is not one of {SUBSTRATES}")
        if data["substrate"] == ARRAY and (data.get("array_kind") is None or data.get("tiles") is None):
            raise CompileError(f"op {data.get('name')!r} is on arrays but names no array_kind or tiles; compile the model again")
        return cls(**data)

    def placed_kind(self) -> str:
        """``array_kind`` of an op on arrays (every such op has one)."""
        if self.array_kind is None:
            raise CompileError(f"op {self.name!r} is not on an array (substrate {self.substrate!r})")
        return self.array_kind

    def tile_grid(self) -> TileGrid:
        """``tiles`` of an op on arrays (every such op has them)."""
        if self.tiles is None:
            raise CompileError(f"op {self.name!r} has no tiling (substrate {self.substrate!r})")
        return self.tiles


@dataclass
class Schedule:
    """Timing of one inference.

    ``layer_by_layer_s``: ops one after another. ``pipelined_interval_s``: the bottleneck
    stage, i.e. the time between inferences when every op is a pipeline stage;
    ``critical_path_s``: the longest dependency chain (the latency of one inference
    when independent ops overlap). Throughputs are inferences per second.
    """

    mode: str
    layer_by_layer_s: float
    critical_path_s: float
    pipelined_interval_s: float
    critical_path: list[str]
    bottleneck: str | None

    @property
    def latency_s(self) -> float:
        return self.critical_path_s if self.mode == "pipelined" else self.layer_by_layer_s

    @property
    def throughput_per_s(self) -> float:
        interval = self.pipelined_interval_s if self.mode == "pipelined" else self.layer_by_layer_s
        return 1.0 / interval if interval > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_s"] = self.latency_s
        d["throughput_per_s"] = self.throughput_per_s
        return d


@dataclass
class Placement:
    """Tiles on cores: ``core_usage[core][array_kind]`` arrays used, and the inter-core
    traffic of one inference in bytes x hops (cores on a 2-D mesh, Manhattan hops)."""

    mesh: tuple[int, int]
    core_usage: list[dict[str, int]]
    traffic_byte_hops: float
    traffic_bytes: float

    def to_dict(self) -> dict[str, Any]:
        return {"mesh": list(self.mesh), "core_usage": self.core_usage, "traffic_byte_hops": self.traffic_byte_hops,
                "traffic_bytes": self.traffic_bytes}


@dataclass
class Plan:
    """A compiled model on a chip."""

    chip: Chip
    graph: Graph
    ops: list[OpPlan]
    schedule: Schedule
    placement: Placement
    model_name: str = ""
    warnings: list[str] = field(default_factory=list)
    schema_version: int = PLAN_SCHEMA_VERSION

    def op(self, name: str) -> OpPlan:
        for o in self.ops:
            if o.name == name:
                return o
        raise CompileError(f"the plan has no op {name!r}")

    def array_ops(self) -> list[OpPlan]:
        return [o for o in self.ops if o.substrate == ARRAY]

    def arrays_used(self) -> dict[str, int]:
        """Arrays used per array kind (copies included)."""
        used: dict[str, int] = {}
        for o in self.array_ops():
            used[o.placed_kind()] = used.get(o.placed_kind(), 0) + o.arrays * o.replication
        return used

    def module_targets(self) -> dict[str, str]:
        """Module name -> array kind for every module-backed op placed on arrays."""
        return {o.module: o.placed_kind() for o in self.array_ops() if o.module}

    def totals(self) -> dict[str, Any]:
        by_sub: dict[str, int] = {}
        for o in self.ops:
            by_sub[o.substrate] = by_sub.get(o.substrate, 0) + 1
        return {
            "ops": len(self.ops),
            "ops_by_substrate": by_sub,
            "arrays_used": self.arrays_used(),
            "arrays_on_chip": {k: self.chip.arrays_on_chip(k) for k in self.chip.arrays},
            "macs": sum(o.macs for o in self.ops),
            "array_macs": sum(o.macs for o in self.array_ops()),
            "latency_s": self.schedule.latency_s,
            "throughput_per_s": self.schedule.throughput_per_s,
            "traffic_byte_hops": self.placement.traffic_byte_hops,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model_name": self.model_name,
            "chip": self.chip.model_dump(mode="json", exclude_none=True),
            "graph": self.graph.to_dict(),
            "ops": [o.to_dict() for o in self.ops],
            "schedule": {k: v for k, v in asdict(self.schedule).items()},
            "placement": self.placement.to_dict(),
            "warnings": list(self.warnings),
            "totals": self.totals(),
        }

    def to_json(self, indent: int | None = 1) -> str:
        """Strict JSON (a non-finite number is written as null, never a NaN token)."""
        return dumps_json(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically."""
        atomic_write_text(path, self.to_json(), what="plan")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise CompileError(f"a plan must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != PLAN_SCHEMA_VERSION:
            raise CompileError(f"plan schema version {version!r} is not supported (this cimflow reads version {PLAN_SCHEMA_VERSION}); "
                               "compile the model again")
        try:
            placement = data["placement"]
            return cls(
                chip=chip_from_dict(data["chip"], origin="plan.chip"),
                graph=Graph.from_dict(data["graph"]),
                ops=[OpPlan.from_dict(o) for o in data["ops"]],
                schedule=Schedule(**data["schedule"]),
                placement=Placement(tuple(placement["mesh"]), placement["core_usage"], placement["traffic_byte_hops"],
                                    placement["traffic_bytes"]),
                model_name=data.get("model_name", ""),
                warnings=list(data.get("warnings", [])),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise CompileError(f"malformed plan: {err!r}; compile the model again") from None

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CompileError(f"a plan file must be JSON ({err})") from None
        except RecursionError:
            raise CompileError("a plan file nests too deeply to be a plan; compile the model again") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise CompileError(f"plan file {str(path)!r} does not exist")
        try:
            text = read_text_bounded(path, MAX_PLAN_BYTES, what="plan file")
        except DataError as err:
            raise CompileError(str(err)) from None
        return cls.from_json(text)
