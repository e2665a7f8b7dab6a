"""The typed operator graph that capture produces and every later compile pass reads.

A :class:`Graph` is a list of :class:`Op` in topological order. Each op carries what the
partitioner and the cost model need to decide where it runs and what it costs:

* its **kind** (:class:`OpKind`): a matrix-vector multiply against a *static* weight matrix
  (the only thing a CIM array can hold), a matrix multiply between two activations
  (attention), vector work, pure data movement, graph inputs/outputs, or an unknown
  operator that must run on the host;
* for static MVMs the **logical weight matrix** ``weight_shape = (rows, columns)``: rows are
  the length of one input vector (array rows needed), columns the length of one output
  vector (array columns needed);
* **counts for the example inputs**: ``mvm_count`` (input vectors multiplied per forward),
  ``macs`` (multiply-accumulates per forward) and ``params`` (parameters the op owns);
* where it came from: ``target`` (module path or function name) and ``source_location``.

Everything serializes to plain JSON-compatible dicts (:meth:`Graph.to_dict`) and back.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from cimflow.errors import CompileError
from cimflow.fileio import dumps_json

__all__ = ["OpKind", "Op", "Graph", "CAPTURE_METHODS"]

#: How a graph was obtained: torch.fx symbolic tracing, a recorded eager run (module hooks
#: plus a torch-function mode), a torch.export program, or an imported ONNX file.
CAPTURE_METHODS = ("fx", "module_traversal", "export", "onnx")


class OpKind(str, enum.Enum):  # noqa: UP042 - a StrEnum would change str()/f-strings of members, which messages print
    """What kind of work an operator is, as far as placement on a CIM chip is concerned.

    * ``static_mvm``: activation times a fixed weight matrix (Linear, ConvNd as im2col MVM,
      Embedding/EmbeddingBag as one-hot/multi-hot MVM against the table, matmul/einsum/linear
      with a parameter operand). Can be programmed into arrays.
    * ``dynamic_matmul``: a matrix product whose operands are both activations (attention
      Q·Kᵀ and A·V, bmm, the DLRM pairwise dot interaction). Cannot be pre-programmed.
    * ``vector``: elementwise, activation functions, normalization, pooling, softmax,
      residual add/mul, reductions.
    * ``data_movement``: reshape/view/permute/cat/split/index/size queries, dropout (identity
      at inference); no arithmetic.
    * ``input`` / ``output``: graph boundary.
    * ``host``: an operator cimflow does not know; it runs on the host processor.
    """

    STATIC_MVM = "static_mvm"
    DYNAMIC_MATMUL = "dynamic_matmul"
    VECTOR = "vector"
    DATA_MOVEMENT = "data_movement"
    INPUT = "input"
    OUTPUT = "output"
    HOST = "host"

    def __str__(self) -> str:  # "static_mvm", not "OpKind.STATIC_MVM"
        return self.value


def _plain(value: Any) -> Any:
    """Convert a value to its JSON-compatible form (tuples become lists, enums strings)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _shape_or_none(value: Any) -> tuple[int, ...] | None:
    """A shape as a tuple of ints, or None."""
    if value is None:
        return None
    return tuple(int(dim) for dim in value)


@dataclass
class Op:
    """One operator of a captured model.

    Attributes:
        name: unique name in its graph (qualified module path for module calls, else the
            torch.fx node name).
        kind: what kind of work this is (:class:`OpKind`).
        target: qualified module path for module calls, else the function or method name
            (``"torch.matmul"``, ``"Tensor.view"``, ``"aten.conv2d.default"``).
        op_type: short type, e.g. ``"Linear"``, ``"Conv2d"``, ``"EmbeddingBag"``, ``"relu"``,
            ``"matmul"``, ``"softmax"``.
        inputs: names of the ops whose outputs this op consumes (activations only; weights
            and constants derived only from parameters are folded into the op).
        output_shape: shape of the (first) output tensor for the example inputs, or None.
        output_dtype: dtype of that tensor (``"float32"``), or ``""`` when not a tensor.
        weight_shape: for ``static_mvm``, the logical matrix ``(rows, columns)``: input
            vector length x output vector length. Conv: ``(C_in/groups*prod(kernel), C_out)``.
            Embedding tables: ``(num_embeddings, embedding_dim)``. None otherwise.
        mvm_count: matrix-vector products per forward for the example inputs (Linear:
            product of leading dims; Conv: batch x output positions; EmbeddingBag (sum/mean):
            number of bags; Embedding: number of indices; dynamic matmuls: rows of the left
            operand over all batch dims).
        macs: multiply-accumulates per forward for the example inputs (0 for vector and
            data-movement ops; their element count is in ``attributes["elements"]``).
        params: number of parameters this op owns (buffers excluded).
        source_location: ``file:line`` of the user code that created the op (fx/export), the
            module path (module traversal), or the ONNX node (onnx).
        attributes: JSON-compatible details (stride, padding, kernel_size, groups, bias, mode,
            ``input_shapes``, ...).
    """

    name: str
    kind: OpKind
    target: str
    op_type: str
    inputs: list[str] = field(default_factory=list)
    output_shape: tuple[int, ...] | None = None
    output_dtype: str = ""
    weight_shape: tuple[int, ...] | None = None
    mvm_count: int = 0
    macs: int = 0
    params: int = 0
    source_location: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.kind = OpKind(self.kind)
        except ValueError as error:
            allowed = ", ".join(kind.value for kind in OpKind)
            raise CompileError(
                f"op {self.name!r}: kind {self.kind!r} is not one of: {allowed}"
            ) from error
        self.inputs = [str(name) for name in self.inputs]
        self.output_shape = _shape_or_none(self.output_shape)
        self.weight_shape = _shape_or_none(self.weight_shape)
        self.mvm_count = int(self.mvm_count)
        self.macs = int(self.macs)
        self.params = int(self.params)
        self.attributes = _plain(dict(self.attributes))

    def to_dict(self) -> dict[str, Any]:
        """This op as a JSON-compatible dict."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "target": self.target,
            "op_type": self.op_type,
            "inputs": list(self.inputs),
            "output_shape": _plain(self.output_shape),
            "output_dtype": self.output_dtype,
            "weight_shape": _plain(self.weight_shape),
            "mvm_count": self.mvm_count,
            "macs": self.macs,
            "params": self.params,
            "source_location": self.source_location,
            "attributes": _plain(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Op:
        """Rebuild an op from :meth:`to_dict` output; unknown or missing keys are errors."""
        expected = {
            "name", "kind", "target", "op_type", "inputs", "output_shape", "output_dtype",
            "weight_shape", "mvm_count", "macs", "params", "source_location", "attributes",
        }
        if not isinstance(data, dict):
            raise CompileError(f"an op must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - expected)
        missing = sorted({"name", "kind", "target", "op_type"} - set(data))
        label = data.get("name", "<unnamed>")
        if unknown:
            raise CompileError(
                f"op {label!r}: unknown keys {unknown}; allowed keys: {sorted(expected)}"
            )
        if missing:
            raise CompileError(f"op {label!r}: missing keys {missing}")
        return cls(**data)


@dataclass
class Graph:
    """A captured model: ops in topological order plus how they were captured.

    Attributes:
        ops: operators in topological order (every op's inputs appear before it).
        inputs: names of the ``input`` ops (model inputs, in forward-argument order).
        outputs: names of the ``output`` ops.
        capture_method: one of ``"fx"``, ``"module_traversal"``, ``"export"``, ``"onnx"``.
        warnings: things a user should know about this capture (fallbacks, host ops).
    """

    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    capture_method: str
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.capture_method not in CAPTURE_METHODS:
            raise CompileError(
                f"capture_method {self.capture_method!r} is not one of {list(CAPTURE_METHODS)}"
            )
        self._index: dict[str, int] = {}
        for position, op in enumerate(self.ops):
            if op.name in self._index:
                raise CompileError(f"graph has two ops named {op.name!r}; op names must be unique")
            for source in op.inputs:
                if source not in self._index:
                    raise CompileError(
                        f"op {op.name!r} consumes {source!r}, which is not an earlier op; "
                        "ops must be listed in topological order"
                    )
            self._index[op.name] = position
        for label, names, kind in (("inputs", self.inputs, OpKind.INPUT),
                                   ("outputs", self.outputs, OpKind.OUTPUT)):
            for name in names:
                if name not in self._index or self.ops[self._index[name]].kind != kind:
                    raise CompileError(f"graph {label} lists {name!r}, which is not an {kind} op")

    # ----------------------------------------------------------------- queries
    def op(self, name: str) -> Op:
        """The op called ``name``; CompileError naming close matches if there is none."""
        if name not in self._index:
            raise CompileError(
                f"no op named {name!r} in the graph; ops are: "
                + ", ".join(op.name for op in self.ops[:20])
                + (" ..." if len(self.ops) > 20 else "")
            )
        return self.ops[self._index[name]]

    def by_kind(self, kind: OpKind | str) -> list[Op]:
        """The ops of one kind, in topological order."""
        wanted = OpKind(kind)
        return [op for op in self.ops if op.kind == wanted]

    def unknown_ops(self) -> list[Op]:
        """Ops cimflow does not know (kind ``host``); each has its ``source_location``."""
        return self.by_kind(OpKind.HOST)

    def consumers(self, name: str) -> list[Op]:
        """The ops that read the output of op ``name``."""
        self.op(name)
        return [op for op in self.ops if name in op.inputs]

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of the whole graph for the example inputs."""
        return sum(op.macs for op in self.ops)

    @property
    def total_params(self) -> int:
        """Parameters owned by the ops of the graph."""
        return sum(op.params for op in self.ops)

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """The graph as a plain JSON-compatible dict."""
        return {
            "format": "cimflow.graph/1",
            "capture_method": self.capture_method,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "warnings": list(self.warnings),
            "ops": [op.to_dict() for op in self.ops],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        """Rebuild a graph from :meth:`to_dict` output."""
        if not isinstance(data, dict) or data.get("format") != "cimflow.graph/1":
            raise CompileError(
                "not a cimflow graph: expected a JSON object with \"format\": \"cimflow.graph/1\""
            )
        return cls(
            ops=[Op.from_dict(item) for item in data.get("ops", [])],
            inputs=list(data.get("inputs", [])),
            outputs=list(data.get("outputs", [])),
            capture_method=data.get("capture_method", ""),
            warnings=list(data.get("warnings", [])),
        )

    def to_json(self, indent: int | None = 1) -> str:
        """The graph as strict JSON (see :meth:`to_dict`; a non-finite number is written as null)."""
        return dumps_json(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Graph:
        """Rebuild a graph from a JSON string or from the dict :meth:`to_dict` returns."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as error:
                raise CompileError(f"graph JSON is malformed: {error}") from error
            except RecursionError:
                raise CompileError("graph JSON nests too deeply to be a graph") from None
        if not isinstance(data, dict):
            raise CompileError(f"graph JSON must be an object (as Graph.to_dict writes it), not {type(data).__name__}")
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __len__(self) -> int:
        return len(self.ops)

    def summary(self) -> dict[str, int]:
        """Number of ops of each kind (kinds with no op are left out)."""
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind.value] = counts.get(op.kind.value, 0) + 1
        return counts
