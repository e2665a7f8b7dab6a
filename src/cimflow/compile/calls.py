"""What capture records about one operator call, however it was captured (fx node or eager
call): light tensor summaries, references to the op that produced a value, the call itself,
the emitter that turns calls into uniquely named :class:`~cimflow.compile.graph.Op` s, user
source locations, and the finishing touches every capture path applies to its ops."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cimflow.compile.graph import Op, OpKind
from cimflow.compile.operators import _target_label


@dataclass(frozen=True)
class _TensorInfo:
    """Shape and dtype of one tensor seen during capture."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _summarize(value: Any) -> Any:
    """A light, picklable summary of a runtime value: tensors become :class:`_TensorInfo`."""
    if isinstance(value, torch.Tensor):
        return _TensorInfo(tuple(int(dim) for dim in value.shape), _dtype_name(value.dtype))
    if isinstance(value, torch.Size):
        return tuple(int(dim) for dim in value)
    if isinstance(value, (list, tuple)):
        return [_summarize(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _summarize(item) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return _dtype_name(value)
    return f"<{type(value).__name__}>"


def _tensor_infos(summary: Any) -> list[_TensorInfo]:
    """All tensor infos inside a summary, depth first."""
    if isinstance(summary, _TensorInfo):
        return [summary]
    if isinstance(summary, list):
        return [info for item in summary for info in _tensor_infos(item)]
    if isinstance(summary, dict):
        return [info for item in summary.values() for info in _tensor_infos(item)]
    return []


def _first_tensor(summary: Any) -> _TensorInfo | None:
    infos = _tensor_infos(summary)
    return infos[0] if infos else None


@dataclass(frozen=True)
class _Ref:
    """A value an op reads: produced by op ``op`` (an activation) or, when ``op`` is None,
    derived only from the parameters/buffers ``roots`` (possibly none: a constant)."""

    op: str | None
    roots: tuple[str, ...]
    value: Any

    @property
    def tensor(self) -> _TensorInfo | None:
        return _first_tensor(self.value)


@dataclass
class _Call:
    """One operator call, independent of how it was captured (fx node or eager call)."""

    style: str  # "module" | "function" | "method"
    target: Any  # module path (module), callable (function) or method name (method)
    module: nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    name: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Positional argument ``index`` or keyword ``name``."""
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)

    def refs(self) -> list[_Ref]:
        return list(_iter_refs((self.args, self.kwargs)))

    def activation_refs(self) -> list[_Ref]:
        return [ref for ref in self.refs() if ref.op is not None]


def _iter_refs(obj: Any) -> Iterator[_Ref]:
    if isinstance(obj, _Ref):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _iter_refs(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _iter_refs(item)


def _plain_arg(obj: Any) -> Any:
    """JSON-friendly description of a call argument (activations as ``%op``)."""
    if isinstance(obj, _Ref):
        if obj.op is not None:
            return f"%{obj.op}"
        return "param:" + ",".join(obj.roots) if obj.roots else "<constant>"
    if isinstance(obj, (list, tuple)):
        return [_plain_arg(item) for item in obj]
    if isinstance(obj, dict):
        return {str(key): _plain_arg(item) for key, item in obj.items()}
    if isinstance(obj, slice):
        return f"slice({_plain_arg(obj.start)}, {_plain_arg(obj.stop)}, {_plain_arg(obj.step)})"
    if obj is Ellipsis:
        return "..."
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(obj)
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


class _Emitter:
    """Turns calls into ops with unique names, keeping track of parameter counts."""

    def __init__(self, param_numel: dict[str, int]) -> None:
        self.ops: list[Op] = []
        self.by_name: dict[str, Op] = {}
        self.taken: set[str] = set()
        self.param_numel = param_numel

    def unique(self, wanted: str) -> str:
        name = wanted or "op"
        counter = 1
        while name in self.taken:
            name = f"{wanted}_{counter}"
            counter += 1
        self.taken.add(name)
        return name

    def root_params(self, refs: list[_Ref]) -> int:
        """Parameters (not buffers) that the constant operands derive from."""
        roots = {root for ref in refs if ref.op is None for root in ref.roots}
        return sum(self.param_numel.get(root, 0) for root in roots)

    def emit(self, call: _Call, kind: OpKind, op_type: str, *, name: str | None = None,
             inputs: list[str] | None = None, output: Any = None, weight_shape: Any = None,
             mvm_count: int = 0, macs: int = 0, params: int | None = None,
             attributes: dict[str, Any] | None = None, target: str | None = None) -> Op:
        """Append one op built from ``call`` (fields given here override the call's)."""
        activation = call.activation_refs()
        if inputs is None:
            inputs = list(dict.fromkeys(ref.op for ref in activation if ref.op is not None))
            input_shapes = [list(ref.tensor.shape) if ref.tensor else None for ref in activation]
        else:  # composite parts: shapes of the ops they read
            shapes = [self.by_name[n].output_shape if n in self.by_name else None for n in inputs]
            input_shapes = [list(shape) if shape is not None else None for shape in shapes]
        summary = call.output if output is None else output
        out_info = _first_tensor(summary)
        attrs: dict[str, Any] = {"input_shapes": input_shapes}
        outputs = _tensor_infos(summary)
        if len(outputs) > 1:
            attrs["output_shapes"] = [list(info.shape) for info in outputs]
        if not out_info and summary is not None and not isinstance(summary, str):
            attrs["value"] = _plain_arg(summary)
        attrs.update(call.extra)
        attrs.update(attributes or {})
        op = Op(
            name=self.unique(name or call.name),
            kind=kind,
            target=target or _target_label(call.style, call.target),
            op_type=op_type,
            inputs=inputs,
            output_shape=out_info.shape if out_info else None,
            output_dtype=out_info.dtype if out_info else "",
            weight_shape=weight_shape,
            mvm_count=mvm_count,
            macs=macs,
            params=self.root_params(call.refs()) if params is None else params,
            source_location=call.source,
            attributes=attrs,
        )
        self.ops.append(op)
        self.by_name[op.name] = op
        return op


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_COMPILE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_internal_file(filename: str) -> bool:
    return (filename.startswith(_TORCH_DIR) or filename.startswith(_COMPILE_DIR)
            or filename.startswith("<eval_with_key") or filename.startswith("<frozen")
            or f"{os.sep}contextlib.py" in filename)


def _user_location(frame: Any) -> str:
    """``file:line`` of the innermost frame outside torch and cimflow.compile."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_internal_file(filename):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


_STACK_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _location_from_stack_trace(stack: str | None) -> str:
    """Last user frame of an fx/export ``stack_trace`` string."""
    if not stack:
        return ""
    frames = [(path, line) for path, line in _STACK_FRAME.findall(stack)
              if not _is_internal_file(path)]
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _param_numel(model: nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters(remove_duplicate=False)}


def _host_warning(graph_ops: list[Op]) -> list[str]:
    host = [op for op in graph_ops if op.kind == OpKind.HOST]
    if not host:
        return []
    listed = "; ".join(f"{op.name} ({op.target}) at {op.source_location or 'unknown location'}"
                       for op in host[:20])
    more = f" and {len(host) - 20} more" if len(host) > 20 else ""
    return [f"{len(host)} operator(s) cimflow does not model will run on the host: {listed}{more}"]


def _prune_unused_data_movement(ops: list[Op]) -> list[Op]:
    """Drop data-movement ops nobody reads (export's unused tuple items, stray size())."""
    while True:
        used = {name for op in ops for name in op.inputs}
        kept = [op for op in ops if op.kind != OpKind.DATA_MOVEMENT or op.name in used]
        if len(kept) == len(ops):
            return ops
        ops = kept
