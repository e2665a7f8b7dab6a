"""Module traversal: the fallback capture that runs the model once eagerly, with forward
hooks on its leaf modules and a ``TorchFunctionMode`` recording the torch functions called
between them; edges follow tensor identity."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cimflow.compile.calls import (
    _Call,
    _Emitter,
    _first_line,
    _first_tensor,
    _host_warning,
    _param_numel,
    _prune_unused_data_movement,
    _Ref,
    _summarize,
    _user_location,
)
from cimflow.compile.classify import _classify, _module_attributes, _static_base
from cimflow.compile.example_inputs import _describe_inputs, _forward_arg_names, _iter_tensors
from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.compile.operators import (
    _STATIC_MODULES,
    _TO_HOST_FUNCS,
    _target_label,
    canonical_op_name,
    is_leaf_module,
)
from cimflow.compile.shapes import _META_NOTE, _device_plan, _run_with_plan
from cimflow.errors import CompileError


class _TraversalRecorder(TorchFunctionMode):
    """Records leaf-module calls (hooks) and torch functions called between them."""

    def __init__(self, emitter: _Emitter, param_ids: dict[int, str], leaf_names: dict[int, str]) -> None:
        super().__init__()
        self.em = emitter
        self.param_ids = param_ids
        self.leaf_names = leaf_names
        self.producer: dict[int, tuple[str, torch.Tensor]] = {}
        self.constant: dict[int, tuple[tuple[str, ...], torch.Tensor]] = {}
        self.depth = 0
        self.active = False
        self.running: list[str] = []
        self.left_torch: list[str] = []
        self.module_calls: dict[str, int] = {}

    # ------------------------------------------------------------------ tensors
    def ref(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = id(value)
            if key in self.producer and self.producer[key][1] is value:
                return _Ref(self.producer[key][0], (), _summarize(value))
            if key in self.param_ids:
                return _Ref(None, (self.param_ids[key],), _summarize(value))
            if key in self.constant and self.constant[key][1] is value:
                return _Ref(None, self.constant[key][0], _summarize(value))
            return _Ref(None, (), _summarize(value))
        if isinstance(value, torch.Size):
            return tuple(int(d) for d in value)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return [self.ref(item) for item in value]
        if isinstance(value, (list, tuple)):
            return type(value)(self.ref(item) for item in value)
        if isinstance(value, dict):
            return {key: self.ref(item) for key, item in value.items()}
        return value

    def produce(self, result: Any, op_name: str) -> None:
        for tensor in _iter_tensors(result):
            self.producer[id(tensor)] = (op_name, tensor)
            self.constant.pop(id(tensor), None)

    def mark_constant(self, result: Any, roots: tuple[str, ...]) -> None:
        for tensor in _iter_tensors(result):
            if id(tensor) not in self.param_ids:
                self.constant[id(tensor)] = (roots, tensor)
                self.producer.pop(id(tensor), None)

    # ------------------------------------------------------------------ calls
    def record(self, style: str, target: Any, module: nn.Module | None, args: tuple[Any, ...],
               kwargs: dict[str, Any], result: Any, name: str, source: str) -> None:
        call = _Call(style, target, module, tuple(self.ref(list(args))), self.ref(dict(kwargs)),
                     _summarize(result), name, source)
        if not call.activation_refs() and style != "module":
            roots = tuple(dict.fromkeys(root for ref in call.refs() for root in ref.roots))
            self.mark_constant(result, roots)
            return
        produced = _classify(call, self.em)
        self.produce(result, produced)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self.active or self.depth > 0:
            return result
        if canonical_op_name(func) == "setitem" and args and isinstance(args[0], torch.Tensor):
            self.record("function", func, None, args, kwargs, args[0], "setitem",
                        _user_location(sys._getframe(1)))
            return result
        if not any(True for _ in _iter_tensors(result)):
            name = canonical_op_name(func)
            if name in _TO_HOST_FUNCS and any(True for _ in _iter_tensors((args, kwargs))):
                self.left_torch.append(f"{_target_label('function', func)} at "
                                       f"{_user_location(sys._getframe(1))}")
            return result
        name = canonical_op_name(func)
        self.record("function", func, None, args, kwargs, result, name,
                    _user_location(sys._getframe(1)))
        return result

    # ------------------------------------------------------------------ hooks
    def pre_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.depth += 1
        self.running.append(self.leaf_names.get(id(module), type(module).__name__))

    def post_hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self.depth -= 1
        path = self.running.pop()
        if not self.active or self.depth > 0:
            return
        count = self.module_calls.get(path, 0)
        self.module_calls[path] = count + 1
        name = path if count == 0 else f"{path}:{count}"
        self.active = False  # the bookkeeping below must not record itself
        try:
            self.record("module", path, module, tuple(args), dict(kwargs), output, name,
                        _user_location(sys._getframe(1)) or path)
        finally:
            self.active = True


def _capture_by_traversal(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                          reason: str) -> Graph:
    plan = _device_plan(model, args, kwargs)
    param_ids = dict(plan.names)
    leaves = {id(module): name or type(module).__name__
              for name, module in model.named_modules() if is_leaf_module(module)}
    em = _Emitter(_param_numel(model))
    recorder = _TraversalRecorder(em, param_ids, leaves)
    names = _forward_arg_names(model)
    inputs: list[str] = []

    def register_inputs(*run_args: Any, **run_kwargs: Any) -> None:
        bound = list(enumerate(run_args)) + list(run_kwargs.items())
        for key, value in bound:
            label = names[key] if isinstance(key, int) and key < len(names) else (
                key if isinstance(key, str) else f"input_{key}")
            tensors = list(_iter_tensors(value))
            info = _first_tensor(_summarize(tensors[0])) if tensors else None
            op = Op(name=em.unique(label), kind=OpKind.INPUT, target=label, op_type="input",
                    output_shape=info.shape if info else None,
                    output_dtype=info.dtype if info else "")
            em.ops.append(op)
            inputs.append(op.name)
            recorder.produce(value, op.name)

    def run(*run_args: Any, **run_kwargs: Any) -> Any:
        register_inputs(*run_args, **run_kwargs)
        recorder.active = True
        try:
            with recorder:
                return model(*run_args, **run_kwargs)
        finally:
            recorder.active = False

    handles = []
    for module in model.modules():
        if id(module) in leaves:
            handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(recorder.post_hook, with_kwargs=True))
    try:
        result = _run_with_plan(model, plan, run)
    except Exception as error:  # noqa: BLE001
        inside = f" inside module {recorder.running[-1]!r}" if recorder.running else ""
        on_meta = (" on meta tensors (the model has parameters on the meta device, and code that "
                   "reads tensor values, such as data-dependent control flow, cannot run there)"
                   if plan.on_meta else "")
        raise CompileError(
            f"cannot capture the model: {reason}, and running it eagerly on the example inputs"
            f"{on_meta} failed{inside} with {_first_line(error)}. Example inputs given: "
            f"{_describe_inputs(args, kwargs, names)}. Check that the example inputs have the "
            "shapes and dtypes model.forward expects; if they do, make forward traceable by "
            "torch.fx (no Python control flow on tensor values; move such code into a leaf "
            "module or a torch.fx.wrap-ped function) or wrap the model in a module that is."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    produced = [recorder.ref(tensor) for tensor in _iter_tensors(result)]
    output = Op(name=em.unique("output"), kind=OpKind.OUTPUT, target="output", op_type="output",
                inputs=list(dict.fromkeys(ref.op for ref in produced if ref.op)))
    em.ops.append(output)
    notes = [
        f"captured by module traversal because {reason}: the model ran once eagerly with hooks "
        "on its leaf modules and a torch-function mode for the calls between them; edges follow "
        "tensor identity (the op that produced each tensor), and control flow is fixed to the "
        "path these example inputs took"
    ]
    if recorder.left_torch:
        notes.append("values left torch (host round trips, data-dependent control flow) at: "
                     + "; ".join(recorder.left_torch[:10]))
    if plan.on_meta:
        notes.append(_META_NOTE)
    idle = _add_layers_not_run(model, recorder.module_calls, em, output)
    if idle:
        notes.append(
            "weight layers not run on the example inputs' path (other inputs may take it): "
            + ", ".join(idle) + "; they are placed on the chip with no MVMs counted"
        )
    ops = _prune_unused_data_movement(em.ops)
    return Graph(ops=ops, inputs=inputs, outputs=[output.name], capture_method="module_traversal",
                 warnings=notes + _host_warning(ops))


def _add_layers_not_run(model: nn.Module, called: dict[str, int], em: _Emitter,
                        output: Op) -> list[str]:
    """Ops (zero counts) for weight layers the example inputs' path skipped, so a branch
    taken by other inputs still has its weights on the chip; returns their names."""
    added = []
    position = em.ops.index(output)
    for path, module in model.named_modules():
        if not path or path in called or not isinstance(module, _STATIC_MODULES):
            continue
        weight = tuple(module.weight.shape)
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            shape = (weight[0], weight[1])
        else:  # Linear (out, in) and ConvNd (out, in/groups, *kernel): im2col rows x columns
            shape = (math.prod(weight[1:]), weight[0])
        attributes = {**_module_attributes(module), "input_shapes": [], "not_run": True}
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            attributes["group_weight_shape"] = [shape[0], shape[1] // max(module.groups, 1)]
        op = Op(name=em.unique(path), kind=OpKind.STATIC_MVM, target=path,
                op_type=_static_base(module), weight_shape=shape,
                params=sum(p.numel() for p in module.parameters()), source_location=path,
                attributes=attributes)
        em.ops.insert(position, op)
        position += 1
        em.by_name[op.name] = op
        added.append(op.name)
    return added
