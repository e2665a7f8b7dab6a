"""The search space of ``cimflow explore``: a YAML file, validated (pydantic, bounded).

A space file names a base chip (preset or chip YAML), a workload, the parameters to vary
(chip fields and mapping choices, each from a fixed vocabulary with physical bounds), the
objectives and the constraints. Anything unknown or empty is refused with one line that
names what is wrong and what is allowed. Example (``examples/explore_hybrid_recsys.yaml``)::

    name: hybrid-recsys
    base: hybrid-rram-sram-28nm
    workload: {kind: recsys, shape: criteo-kaggle, skew: 1.05}
    accuracy: {instances: 3, times: [1d]}
    parameters:
      - {name: adc_bits, values: [5, 6, 7, 8]}
      - {name: cores, low: 8, high: 32, step: 8}
    objectives: [{name: qps_per_w}, {name: qps}]
    constraints:
      - {name: area_mm2, max: base}        # the base chip's area for this workload
      - {name: auc_loss, max: 0.002}
"""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from cimflow.errors import ChipSpecError, CimflowError

#: bounds of a space file (it is a few hundred bytes; these only stop hostile input)
MAX_SPACE_BYTES = 1 << 16
MAX_PARAMETERS = 32
MAX_VALUES = 256
MAX_TRIALS = 100_000


class SpaceError(CimflowError):
    """A space file is invalid (unknown parameter, empty range, unknown objective ...)."""


#: name -> (what it sets, scope, lowest, highest, integer?). Scope "array": one array kind of the
#: chip (``array:`` a kind name or a role: embedding, mvm, digital); "chip": the whole chip;
#: "mapping": how the workload is compiled onto the chip; "choice": a categorical of names.
PARAMETERS: dict[str, tuple[str, str, float, float, bool]] = {
    "cell_bits": ("bits per cell of an analog array's device (levels = 2^bits)", "array", 1, 8, True),
    "array_rows": ("rows of an array kind", "array", 16, 1 << 16, True),
    "array_cols": ("columns of an array kind", "array", 16, 1 << 16, True),
    "adc_bits": ("ADC resolution of an analog array", "array", 1, 16, True),
    "adc_sharing": ("columns sharing one ADC (time-multiplexed)", "array", 1, 1 << 16, True),
    "dac_bits": ("input bits of an array kind (DAC or bit-serial, sign included)", "array", 1, 16, True),
    "max_active_rows": ("rows driven in one read of an analog array", "array", 1, 1 << 16, True),
    "arrays": ("arrays of one kind per core", "array", 1, 100_000, True),
    "technology": ("device technology of an array kind (device block of the first shipped preset with it)", "choice", 0, 0, False),
    "cores": ("cores on the chip", "chip", 1, 100_000, True),
    "sram_arrays": ("digital SRAM CIM macros per core (the SRAM tier: MLPs and hot rows)", "chip", 1, 100_000, True),
    "dram_gib": ("DRAM tier capacity, GiB", "chip", 0, 1 << 20, False),
    "preset": ("the base chip, a shipped preset name", "choice", 0, 0, False),
    "replicate": ("replicate bottleneck operators into spare arrays (true/false)", "choice", 0, 0, False),
    "hot_tier_fraction": ("share of the spare SRAM the hot embedding rows may use, 0 to 1", "mapping", 0, 1, False),
    "rules": ("a named set of placement rules from rule_sets", "choice", 0, 0, False),
}
ROLES = ("embedding", "mvm", "digital")

#: objective name -> (default direction, workloads it exists for, what it is)
OBJECTIVES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "qps_per_w": ("maximize", ("recsys", "digits", "model"), "queries (inferences) per joule, system model"),
    "qps": ("maximize", ("recsys", "digits", "model"), "queries (inferences) per second, system model"),
    "energy_per_inference_j": ("minimize", ("recsys", "digits", "model"), "joules per query"),
    "area_mm2": ("minimize", ("recsys", "digits", "model"), "chip area, mm^2"),
    "accuracy": ("maximize", ("recsys", "digits", "model"), "the workload's metric on chip (AUC, top-1, or evaluate())"),
    "accuracy_loss": ("minimize", ("recsys", "digits", "model"), "float metric minus the on-chip metric"),
    "auc": ("maximize", ("recsys",), "AUC on chip (MovieLens-100k DLRM)"),
    "auc_loss": ("minimize", ("recsys",), "fp32 AUC minus the on-chip AUC"),
    "top1": ("maximize", ("digits",), "top-1 accuracy on chip (digits CNN)"),
    "top1_loss": ("minimize", ("digits",), "fp32 top-1 minus the on-chip top-1"),
}
ACCURACY_OBJECTIVES = frozenset({"accuracy", "accuracy_loss", "auc", "auc_loss", "top1", "top1_loss"})
SAMPLERS = ("auto", "nsga2", "tpe", "grid", "random")


def _allowed(names: Any) -> str:
    return ", ".join(sorted(names))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Parameter(_Strict):
    """One dimension of the space: ``values`` (a list), or ``low``/``high`` (``step``, ``log``)."""

    name: str
    array: str | None = Field(default=None, description="array kind or role (embedding, mvm, digital) for array parameters")
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Parameter:
        if self.name not in PARAMETERS:
            raise ValueError(f"unknown parameter {self.name!r}; known parameters: {_allowed(PARAMETERS)}")
        _, scope, lo, hi, integer = PARAMETERS[self.name]
        if self.array is not None and scope != "array" and self.name != "technology":
            raise ValueError(f"parameter {self.name!r} applies to the whole chip: remove 'array'")
        if self.values is not None:
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError(f"parameter {self.name!r}: give either values or low/high, not both")
            if not self.values:
                raise ValueError(f"parameter {self.name!r}: values is empty; give at least one value")
            if len(self.values) > MAX_VALUES:
                raise ValueError(f"parameter {self.name!r}: {len(self.values)} values; at most {MAX_VALUES}")
            if len({repr(v) for v in self.values}) != len(self.values):
                raise ValueError(f"parameter {self.name!r}: values repeat; list each once")
            for v in self.values:
                _check_value(self.name, v)
            return self
        if scope == "choice":
            raise ValueError(f"parameter {self.name!r} is a choice: give 'values' (a list)")
        if self.low is None or self.high is None:
            raise ValueError(f"parameter {self.name!r}: give values: [...] or low and high")
        if not self.low <= self.high:
            raise ValueError(f"parameter {self.name!r}: empty range (low {self.low:g} > high {self.high:g})")
        if self.low < lo or self.high > hi:
            raise ValueError(f"parameter {self.name!r}: range [{self.low:g}, {self.high:g}] is outside the allowed [{lo:g}, {hi:g}]")
        whole = self.low == int(self.low) and self.high == int(self.high) and (self.step is None or self.step == int(self.step))
        if integer and not whole:
            raise ValueError(f"parameter {self.name!r} is a whole number: low, high and step must be integers")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError(f"parameter {self.name!r}: log scale needs low > 0 and no step")
        if self.step is not None and (self.high - self.low) / self.step > 1e6:
            raise ValueError(f"parameter {self.name!r}: more than a million steps; use a larger step")
        return self

    @property
    def key(self) -> str:
        """The name trials store this parameter under (``rram_emb.adc_bits``, ``cores``)."""
        return f"{self.array}.{self.name}" if self.array is not None else self.name

    @property
    def integer(self) -> bool:
        return PARAMETERS[self.name][4]

    def grid(self) -> list[Any] | None:
        """Every value of a discrete parameter, or None for a continuous one."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        if self.integer or self.step is not None:
            step = self.step or 1
            n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
            vals = [self.low + i * step for i in range(n)]
            return [int(v) for v in vals] if self.integer else vals
        return None


def _check_value(name: str, value: Any) -> None:
    _, scope, lo, hi, integer = PARAMETERS[name]
    if name == "replicate":
        if not isinstance(value, bool):
            raise ValueError(f"parameter 'replicate': values must be true or false, got {value!r}")
        return
    if scope == "choice":
        if not isinstance(value, str) or not value:
            raise ValueError(f"parameter {name!r}: values must be names (strings), got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"parameter {name!r}: values must be numbers, got {value!r}")
    if integer and value != int(value):
        raise ValueError(f"parameter {name!r} is a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"parameter {name!r}: value {value!r} is outside the allowed [{lo:g}, {hi:g}]")


class Objective(_Strict):
    name: str
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; known objectives: {_allowed(OBJECTIVES)}")
        return self

    @property
    def sense(self) -> Literal["maximize", "minimize"]:
        if self.direction is not None:
            return self.direction
        return "maximize" if OBJECTIVES[self.name][0] == "maximize" else "minimize"


class Constraint(_Strict):
    """``name`` <= ``max`` and/or >= ``min``; ``max: base`` is the base chip's own value."""

    name: str
    max: float | Literal["base"] | None = None
    min: float | Literal["base"] | None = None

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown constraint {self.name!r}; constrainable values: {_allowed(OBJECTIVES)}")
        if self.max is None and self.min is None:
            raise ValueError(f"constraint {self.name!r}: give max or min")
        if isinstance(self.max, float) and isinstance(self.min, float) and self.min > self.max:
            raise ValueError(f"constraint {self.name!r}: empty range (min {self.min:g} > max {self.max:g})")
        return self


class Workload(_Strict):
    """What runs on the designs: the DLRM RecSys job, the digits CNN, or a model file."""

    kind: Literal["recsys", "digits", "model"]
    shape: Literal["custom", "criteo-kaggle", "dlrm-v2"] = "criteo-kaggle"
    tables: list[int] = Field(default_factory=lambda: [1_000_000] * 4, min_length=1, max_length=1000)
    dim: int = Field(default=64, ge=1, le=4096)
    pooling: int = Field(default=4, ge=1, le=10_000)
    skew: float = Field(default=1.05, ge=0, le=5)
    batch: int = Field(default=256, ge=1, le=65_536)
    sample_queries: int = Field(default=1024, ge=16, le=1 << 20)
    file: str | None = Field(default=None, description="model: a Python model file (model(), example_inputs(), optional evaluate())")

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.kind == "model" and not self.file:
            raise ValueError("workload kind 'model' needs file: a Python file with model() and example_inputs()")
        if self.kind != "model" and self.file is not None:
            raise ValueError(f"workload kind {self.kind!r} takes no file (only kind 'model' does)")
        if any(t < 1 or t > 10**12 for t in self.tables):
            raise ValueError("workload tables: each table needs 1 to 1e12 rows")
        return self


class Accuracy(_Strict):
    instances: int = Field(default=3, ge=1, le=100, description="chip instances (programming seeds) per design")
    times: list[str] = Field(default_factory=lambda: ["1d"], min_length=1, max_length=8, description="times after programming")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class Space(_Strict):
    """A whole space file."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: str = Field(min_length=1, description="preset name or chip YAML path (relative to the space file)")
    workload: Workload
    accuracy: Accuracy = Field(default_factory=Accuracy)
    parameters: list[Parameter] = Field(min_length=1, max_length=MAX_PARAMETERS)
    objectives: list[Objective] = Field(min_length=1, max_length=4)
    constraints: list[Constraint] = Field(default_factory=list, max_length=16)
    rule_sets: dict[str, dict[str, str]] = Field(default_factory=dict, description="named placement rule sets for the 'rules' parameter")
    sampler: Literal["auto", "nsga2", "tpe", "grid", "random"] = "auto"
    trials: int = Field(default=40, ge=1, le=MAX_TRIALS)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    #: the digest of the file as written (relative paths unresolved), so a moved folder still resumes
    _written_digest: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> Space:
        keys = [p.key for p in self.parameters]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"parameter {sorted(dup)[0]!r} is given twice; give each once")
        for used in self.used_names():
            kinds = OBJECTIVES[used][1]
            if self.workload.kind not in kinds:
                raise ValueError(f"{used!r} does not exist for workload {self.workload.kind!r} (it needs {' or '.join(kinds)}); "
                                 f"use 'accuracy' or 'accuracy_loss'")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("an objective is given twice; give each once")
        for p in self.parameters:
            if p.name == "rules":
                for v in p.values or []:
                    if v not in self.rule_sets:
                        raise ValueError(f"parameter 'rules': {v!r} is not in rule_sets (known: {_allowed(self.rule_sets) or 'none'})")
        return self

    def used_names(self) -> list[str]:
        """The objectives' and the constraints' names."""
        return [o.name for o in self.objectives] + [c.name for c in self.constraints]

    def needs_accuracy(self) -> bool:
        return any(name in ACCURACY_OBJECTIVES for name in self.used_names())

    def accuracy_is_objective(self) -> bool:
        return any(o.name in ACCURACY_OBJECTIVES for o in self.objectives)

    def grid_size(self) -> int | None:
        """Designs in the space when every parameter is discrete, else None."""
        grids = [p.grid() for p in self.parameters]
        if any(g is None for g in grids):
            return None
        return math.prod(len(g) for g in grids if g is not None)

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.key: list(p.grid() or []) for p in self.parameters}

    def digest(self) -> str:
        """A hash of everything that defines the study (not ``trials``, which a resume may raise)."""
        if self._written_digest is not None:
            return self._written_digest
        data = self.model_dump(mode="json", exclude={"trials"})
        return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]

    def designs(self) -> list[dict[str, Any]]:
        """Every design of a discrete space (for tests and small spaces)."""
        grid = self.grid_space()
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _format(err: ValidationError, origin: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{origin}: invalid space file: " + "; ".join(parts)


def space_from_dict(data: Any, origin: str = "<space>") -> Space:
    """Validate a mapping as a :class:`Space`; one line names what is wrong and what is allowed."""
    if not isinstance(data, dict):
        raise SpaceError(f"{origin}: a space file must be a mapping (name, base, workload, parameters, objectives ...)")
    try:
        return Space.model_validate(data)
    except ValidationError as err:
        raise SpaceError(_format(err, origin)) from None


def parse_space_yaml(text: str, origin: str = "<space>") -> Space:
    """Parse a space file's text: bounded like a chip file (size, depth, nodes, aliases,
    duplicate keys, with the chip reader's checks), safe loader only."""
    from cimflow.chip.io import parse_yaml_bounded

    if len(text) > MAX_SPACE_BYTES:
        raise SpaceError(f"{origin}: the space file is {len(text):,} characters; at most {MAX_SPACE_BYTES:,} are allowed")
    try:
        data, _ = parse_yaml_bounded(text, origin)
    except ChipSpecError as err:
        raise SpaceError(str(err).replace("the chip description", "the space file")) from None
    return space_from_dict(data, origin)


def load_space(path: str | Path) -> Space:
    """Read and validate a space file; a relative ``base`` chip path is resolved against its folder."""
    from cimflow.errors import DataError
    from cimflow.readers import read_text_bounded

    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"space file {str(path)!r} does not exist; see examples/explore_*.yaml")
    try:
        text = read_text_bounded(path, MAX_SPACE_BYTES, "space file")
    except DataError as err:
        raise SpaceError(str(err)) from None
    space = parse_space_yaml(text, str(path))
    space._written_digest = space.digest()
    for attr, value in (("base", space.base), ("file", space.workload.file)):
        if value and (value.endswith((".yaml", ".yml", ".py", ".pt2", ".onnx")) or "/" in value):
            resolved = Path(value) if Path(value).is_absolute() else (path.parent / value)
            if attr == "base":
                space.base = str(resolved)
            else:
                space.workload.file = str(resolved)
    return space


__all__ = ["ACCURACY_OBJECTIVES", "OBJECTIVES", "PARAMETERS", "ROLES", "SAMPLERS", "Accuracy", "Constraint", "Objective",
           "Parameter", "Space", "SpaceError", "Workload", "load_space", "parse_space_yaml", "space_from_dict"]
