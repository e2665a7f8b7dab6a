"""Shape propagation: running a traced graph (or the model) once on the example inputs, on
the model's device or on meta tensors, and recording a summary of every value."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from cimflow.compile.calls import _summarize
from cimflow.compile.example_inputs import _tree_map_tensors
from cimflow.errors import CompileError


@contextlib.contextmanager
def _inference_mode_flags(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode for the capture; restore each flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@dataclass
class _RunPlan:
    """How to run the model for shapes: on meta tensors or on its own device."""

    on_meta: bool
    swap: dict[int, torch.Tensor]  # id(original parameter/buffer) -> meta replacement
    names: dict[int, str]  # id(tensor the run sees) -> qualified parameter/buffer name
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _named_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(model.named_parameters()) + list(model.named_buffers())


def _has_meta_state(model: nn.Module) -> bool:
    return any(tensor.is_meta for _, tensor in _named_state(model))


def _meta_plan(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _RunPlan:
    """Every parameter, buffer and input as a meta tensor: shapes only, nothing computed."""
    to_meta = lambda t: torch.empty_like(t, device="meta")  # noqa: E731
    swap: dict[int, torch.Tensor] = {}
    names: dict[int, str] = {}
    for name, tensor in _named_state(model):
        replacement = to_meta(tensor)
        if isinstance(tensor, nn.Parameter):
            replacement = nn.Parameter(replacement, requires_grad=False)
        swap[id(tensor)] = replacement
        names[id(replacement)] = name
    return _RunPlan(True, swap, names, _tree_map_tensors(args, to_meta),
                    _tree_map_tensors(kwargs, to_meta))


def _device_plan(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _RunPlan:
    """Run as is; CPU inputs follow the parameters when those all sit on one other device."""
    if _has_meta_state(model):
        return _meta_plan(model, args, kwargs)
    state = _named_state(model)
    names = {id(tensor): name for name, tensor in state}
    devices = {tensor.device for _, tensor in state}
    if len(devices) == 1:
        device = next(iter(devices))
        if device.type != "cpu":
            move = lambda t: t.to(device) if t.device.type == "cpu" else t  # noqa: E731
            return _RunPlan(False, {}, names, _tree_map_tensors(args, move),
                            _tree_map_tensors(kwargs, move))
    return _RunPlan(False, {}, names, args, kwargs)


@contextlib.contextmanager
def _swapped_state(model: nn.Module, swap: dict[int, torch.Tensor]) -> Iterator[None]:
    """Temporarily put ``swap[id(t)]`` in place of every parameter/buffer ``t`` of ``model``.

    (Like torch.func.functional_call, without importing torch._dynamo; tied weights stay
    tied because the swap is keyed by tensor identity.)
    """
    saved: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        if swap:
            for module in model.modules():
                stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
                for store in stores:
                    for key, value in list(store.items()):
                        if value is not None and id(value) in swap:
                            saved.append((store, key, value))
                            store[key] = swap[id(value)]
        yield
    finally:
        for store, key, value in reversed(saved):
            store[key] = value


def _run_with_plan(model: nn.Module, plan: _RunPlan, fn: Callable[..., Any]) -> Any:
    """Call ``fn(*plan.args, **plan.kwargs)`` with the plan's state swapped into ``model``."""
    with torch.no_grad(), _swapped_state(model, plan.swap):
        return fn(*plan.args, **plan.kwargs)


class _ValueRecorder(fx.Interpreter):
    """Runs a graph once and stores a summary of every node's value in ``node.meta``."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        super().__init__(module, garbage_collect_values=True, graph=graph)
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:  # noqa: D102
        self.current = n
        result = super().run_node(n)
        n.meta["cimflow_value"] = _summarize(result)
        return result


def _bind_placeholders(graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any],
                       pytree_inputs: bool) -> list[Any]:
    """Example inputs in placeholder order."""
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if pytree_inputs:
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if len(leaves) != len(placeholders):
            raise CompileError(
                f"the exported model takes {len(placeholders)} input tensor(s) "
                f"({', '.join(str(p.target) for p in placeholders)}); the example inputs hold "
                f"{len(leaves)}"
            )
        return leaves
    names = [str(node.target).lstrip("*") for node in placeholders]
    if len(args) > len(placeholders):
        raise CompileError(
            f"model.forward takes {len(placeholders)} argument(s) ({', '.join(names)}); "
            f"{len(args)} example inputs were given"
        )
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise CompileError(
            f"example inputs name argument(s) {unknown} that model.forward does not take; "
            f"it takes: {', '.join(names)}"
        )
    bound: list[Any] = []
    for index, (node, name) in enumerate(zip(placeholders, names, strict=True)):
        if index < len(args):
            bound.append(args[index])
        elif name in kwargs:
            bound.append(kwargs[name])
        elif node.args:
            bound.append(node.args[0])
        else:
            raise CompileError(
                f"no example input for argument {name!r} of model.forward; pass one for each of: "
                + ", ".join(names)
            )
    return bound


class _PropagationFailure(Exception):
    """Running the graph on the example inputs failed (wraps the error and the failing node)."""

    def __init__(self, error: BaseException, node: fx.Node | None, plan: _RunPlan) -> None:
        super().__init__(str(error))
        self.error = error
        self.node = node
        self.plan = plan


PROPAGATE_ON = ("auto", "meta", "device")


def _propagate(model: nn.Module, graph: fx.Graph, args: tuple[Any, ...], kwargs: dict[str, Any],
               pytree_inputs: bool, propagate_on: str) -> _RunPlan:
    """Fill ``node.meta["cimflow_value"]`` for every node by running the graph once.

    ``propagate_on="auto"`` runs on meta tensors when the model holds any (nothing is
    allocated: 10^8-row tables cost nothing) and on the model's own device otherwise (exact,
    and a ResNet-50 forward on a CPU is ~0.1 s). ``"meta"`` always propagates on meta tensors
    (no arithmetic at all, for models whose forward is expensive), falling back to the device
    when an operator cannot run on meta (data-dependent shapes). The first use of some meta
    kernels (batch norm, ...) imports torch._dynamo, about 1 s once per process.

    Raises:
        _PropagationFailure: the graph does not run on the example inputs.
    """
    has_meta = _has_meta_state(model)
    if propagate_on == "meta" and not has_meta:
        plans = [_meta_plan(model, args, kwargs), _device_plan(model, args, kwargs)]
    else:
        plans = [_device_plan(model, args, kwargs)]
    failure: _PropagationFailure | None = None
    for plan in plans:
        recorder = _ValueRecorder(model, graph)
        bound = _bind_placeholders(graph, plan.args, plan.kwargs, pytree_inputs)
        try:
            _run_with_plan(model, _RunPlan(plan.on_meta, plan.swap, plan.names, tuple(bound), {}),
                           recorder.run)
            return plan
        except CompileError:
            raise
        except Exception as error:  # noqa: BLE001 - reported by the caller
            failure = _PropagationFailure(error, recorder.current, plan)
    assert failure is not None
    raise failure


_META_NOTE = ("the model has parameters on the meta device: shapes were propagated on meta "
              "tensors, so index values in the example inputs were not checked")
