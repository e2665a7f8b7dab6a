"""The torch.fx capture path: cimflow's tracer, fx nodes -> calls -> ops, graphs from
torch.export or the ONNX importer used as they are, and the error that says which op the
example inputs do not fit."""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from cimflow.compile.calls import (
    _Call,
    _Emitter,
    _first_line,
    _first_tensor,
    _host_warning,
    _iter_refs,
    _location_from_stack_trace,
    _param_numel,
    _prune_unused_data_movement,
    _Ref,
    _user_location,
)
from cimflow.compile.classify import _classify
from cimflow.compile.example_inputs import _describe_inputs
from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.compile.operators import _target_label, is_leaf_module
from cimflow.compile.shapes import (
    _META_NOTE,
    _has_meta_state,
    _propagate,
    _PropagationFailure,
    _run_with_plan,
    _RunPlan,
)
from cimflow.errors import CompileError


class _CaptureTracer(fx.Tracer):
    """fx tracer with cimflow's leaf set; records each node's user source location."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:  # noqa: D102
        return is_leaf_module(m)

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:  # noqa: D102
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind not in ("placeholder", "output", "get_attr"):
            node.meta["cimflow_source"] = _user_location(sys._getframe(1))
        return node


def _ancestor_inputs(node: fx.Node) -> list[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    found: list[fx.Node] = []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            found.append(current)
        stack.extend(current.all_input_nodes)
    return sorted(found, key=lambda n: n.name)


def _fx_call(node: fx.Node, refs: dict[fx.Node, _Ref], root: nn.Module) -> _Call:
    def to_ref(item: Any) -> Any:
        if isinstance(item, fx.Node):
            return refs.get(item, _Ref(None, (), item.meta.get("cimflow_value")))
        return item

    args = fx.node.map_aggregate(node.args, to_ref)
    kwargs = fx.node.map_aggregate(dict(node.kwargs), to_ref)
    source = node.meta.get("cimflow_source") or _location_from_stack_trace(node.meta.get("stack_trace"))
    extra: dict[str, Any] = {}
    name = node.name
    module_stack = node.meta.get("nn_module_stack")
    if module_stack:
        path, module_type = list(module_stack.values())[-1]
        extra["module_path"] = path
        extra["module_class"] = module_type if isinstance(module_type, str) else getattr(
            module_type, "__name__", str(module_type))
    style = {"call_module": "module", "call_function": "function", "call_method": "method"}[node.op]
    module = root.get_submodule(str(node.target)) if style == "module" else None
    if style == "module":
        name = str(node.target)
    return _Call(style, node.target, module, tuple(args), dict(kwargs),
                 node.meta.get("cimflow_value"), name, source, extra)


def _build_from_fx(root: nn.Module, graph: fx.Graph, method: str, warnings_out: list[str]) -> Graph:
    em = _Emitter(_param_numel(root))
    refs: dict[fx.Node, _Ref] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    module_mvm_paths: dict[str, int] = {}
    for node in graph.nodes:
        value = node.meta.get("cimflow_value")
        if node.op == "placeholder":
            first = _first_tensor(value)
            op = Op(name=em.unique(node.name), kind=OpKind.INPUT, target=str(node.target),
                    op_type="input", output_shape=first.shape if first else None,
                    output_dtype=first.dtype if first else "",
                    source_location=node.meta.get("cimflow_source", ""))
            em.ops.append(op)
            inputs.append(op.name)
            refs[node] = _Ref(op.name, (), value)
            continue
        if node.op == "get_attr":
            refs[node] = _Ref(None, (str(node.target),), value)
            continue
        if node.op == "output":
            def to_ref(n: Any) -> Any:
                return refs.get(n) if isinstance(n, fx.Node) else n

            output_ops = [ref.op for ref in _iter_refs(fx.node.map_aggregate(node.args, to_ref)) if ref and ref.op]
            op = Op(name=em.unique("output"), kind=OpKind.OUTPUT, target="output",
                    op_type="output", inputs=list(dict.fromkeys(output_ops)))
            em.ops.append(op)
            outputs.append(op.name)
            continue
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            continue  # torch.export's input guard function
        call = _fx_call(node, refs, root)
        activation = call.activation_refs()
        if not activation and call.style != "module":
            roots = tuple(dict.fromkeys(root for ref in call.refs() for root in ref.roots))
            refs[node] = _Ref(None, roots, value)
            continue
        produced = _classify(call, em)
        refs[node] = _Ref(produced, (), value)
        last = em.ops[-1]
        path = call.extra.get("module_path")
        if method == "export" and last.kind == OpKind.STATIC_MVM and path:
            module_mvm_paths[path] = module_mvm_paths.get(path, 0) + 1
    ops = _prune_unused_data_movement(em.ops)
    ops = _rename_export_mvms(ops, module_mvm_paths, outputs) if method == "export" else ops
    graph_warnings = warnings_out + _host_warning(ops)
    return Graph(ops=ops, inputs=inputs, outputs=outputs, capture_method=method,
                 warnings=graph_warnings)


def _rename_export_mvms(ops: list[Op], paths: dict[str, int], outputs: list[str]) -> list[Op]:
    """Name an exported static MVM after its module path when that module has only one."""
    taken = {op.name for op in ops}
    renames: dict[str, str] = {}
    for op in ops:
        path = op.attributes.get("module_path")
        if op.kind == OpKind.STATIC_MVM and path and paths.get(path) == 1 and path not in taken:
            renames[op.name] = path
            taken.add(path)
    for op in ops:
        op.name = renames.get(op.name, op.name)
        op.inputs = [renames.get(name, name) for name in op.inputs]
    return ops


def _input_mismatch_error(failure: _PropagationFailure, args: tuple[Any, ...],
                          kwargs: dict[str, Any], names: list[str]) -> CompileError:
    error = failure.error
    cause = error.__cause__ if error.__cause__ is not None else error
    where = ""
    reads = ""
    node = failure.node
    if node is not None:
        what = str(node.target) if node.op == "call_module" else _target_label(
            "method" if node.op == "call_method" else "function", node.target)
        location = node.meta.get("cimflow_source") or _location_from_stack_trace(
            node.meta.get("stack_trace"))
        where = f" at op {node.name!r} ({what}{', ' + location if location else ''})"
        sources = _ancestor_inputs(node)
        if sources:
            reads = " That op reads model input(s): " + ", ".join(
                str(p.target) for p in sources) + "."
    meta_note = (" (on meta tensors, because the model has parameters on the meta device)"
                 if failure.plan.on_meta else "")
    return CompileError(
        f"The example inputs do not fit the model: running it failed{where} with "
        f"{_first_line(cause)}{meta_note}.{reads} Example inputs given: "
        f"{_describe_inputs(args, kwargs, names)}. Pass example inputs with the shapes and "
        "dtypes model.forward expects (the same you would use for one inference batch)."
    )


def _eager_error(model: nn.Module, plan: _RunPlan) -> BaseException | None:
    try:
        _run_with_plan(model, plan, lambda *a, **k: model(*a, **k))
    except Exception as error:  # noqa: BLE001 - reported to the user
        return error
    return None


def _capture_graph_module(model: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any],
                          propagate_on: str) -> Graph:
    graph = model.graph
    meta = model.meta if isinstance(getattr(model, "meta", None), dict) else {}
    method = meta.get("cimflow_capture_method")
    if method is None:
        uses_aten = any(isinstance(node.target, torch._ops.OpOverload) for node in graph.nodes)
        method = "export" if uses_aten else "fx"
    pytree_inputs = isinstance(graph._codegen, fx.graph._PyTreeCodeGen)
    try:
        _propagate(model, graph, args, kwargs, pytree_inputs, propagate_on)
    except _PropagationFailure as failure:
        names = [str(n.target) for n in graph.nodes if n.op == "placeholder"]
        raise _input_mismatch_error(failure, args, kwargs, names) from failure.error
    notes = list(meta.get("cimflow_warnings", []))
    if _has_meta_state(model):
        notes.append(_META_NOTE)
    return _build_from_fx(model, graph, method, notes)
