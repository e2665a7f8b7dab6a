"""Layers back into an exported graph: ``aten.linear``/``aten.conv*``/``aten.embedding`` calls
on a module's own weights become calls of an ``nn.Linear``/``nn.ConvNd``/``nn.Embedding``.

A ``torch.export`` program is a flat graph of ATen calls whose weights are attributes, so
nothing in it is a layer that :func:`cimflow.sim.convert_model` could swap for a CIM layer.
:func:`lift_weight_layers` rebuilds those layers (sharing the same Parameter objects, at
the module path the export recorded: ``fc1``, ``features.0``), so a ``.pt2`` compiles,
simulates and estimates like the model it came from. A call is lifted only when the
export's ``nn_module_stack`` says it ran inside a torch.nn layer of that type whose
``weight`` (and ``bias``) it reads; anything else stays as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["lift_weight_layers"]

_ATEN = torch.ops.aten
_CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _layer_path(node: fx.Node) -> tuple[str, str] | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, module_type = list(stack.values())[-1]
    type_name = module_type if isinstance(module_type, str) else getattr(module_type, "__qualname__", "")
    return str(path), str(type_name)


def _attr(root: nn.Module, node: Any, expected: str) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr" or node.target != expected:
        return None
    try:
        return root.get_parameter(expected)
    except AttributeError:
        return None


def _build_layer(node: fx.Node, root: nn.Module, path: str, type_name: str) -> nn.Module | None:
    """The layer this call is, or None when it is not one we can rebuild exactly."""
    target = node.target
    weight_name, bias_name = f"{path}.weight", f"{path}.bias"
    if target == _ATEN.linear.default and type_name.endswith("Linear"):
        weight = _attr(root, node.args[1], weight_name)
        bias_node = node.args[2] if len(node.args) > 2 else None
        bias = _attr(root, bias_node, bias_name) if bias_node is not None else None
        if weight is None or weight.dim() != 2 or (bias_node is not None and bias is None):
            return None
        layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                     device="meta")
    elif target in (_ATEN.conv1d.default, _ATEN.conv2d.default, _ATEN.conv3d.default) and \
            type_name.endswith(("Conv1d", "Conv2d", "Conv3d")):
        weight = _attr(root, node.args[1], weight_name)
        bias_node = node.args[2] if len(node.args) > 2 else None
        bias = _attr(root, bias_node, bias_name) if bias_node is not None else None
        if weight is None or (bias_node is not None and bias is None):
            return None
        spatial = weight.dim() - 2
        defaults = [1, 0, 1, 1]
        stride, padding, dilation, groups = [
            node.args[i] if len(node.args) > i else defaults[i - 3] for i in range(3, 7)]
        if not isinstance(groups, int) or not all(
                isinstance(v, (int, list, tuple)) for v in (stride, padding, dilation)):
            return None
        conv: Any = _CONV_TYPES[spatial]  # stride/padding/dilation: ints or lists, checked above
        layer = conv(weight.shape[1] * groups, weight.shape[0],
                                     tuple(weight.shape[2:]), stride=stride, padding=padding,
                                     dilation=dilation, groups=groups, bias=bias is not None,
                                     device="meta")
    elif target == _ATEN.embedding.default and type_name.endswith("Embedding"):
        weight = _attr(root, node.args[0], weight_name)
        padding_idx = node.args[2] if len(node.args) > 2 else -1
        if weight is None or weight.dim() != 2 or not isinstance(padding_idx, int):
            return None
        layer = nn.Embedding(weight.shape[0], weight.shape[1],
                             padding_idx=padding_idx if padding_idx >= 0 else None, device="meta")
        bias = None
    else:
        return None
    layer.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return layer


def lift_weight_layers(module: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule equal to ``module`` whose weight-layer calls are ``call_module`` nodes.

    Each lifted layer sits at the module path the export recorded, holding the same
    Parameter objects, so parameter names (``fc1.weight``) are unchanged. The result is a
    plain ``fx.GraphModule`` (train/eval work on it, unlike ``ExportedProgram.module()``).
    """
    graph = module.graph
    layers: dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        found = _layer_path(node)
        if found is None or not found[0]:
            continue
        path, type_name = found
        layer = layers[path] if path in layers else _build_layer(node, module, path, type_name)
        if layer is None:
            continue
        layers[path] = layer
        data = node.args[1] if node.target == _ATEN.embedding.default else node.args[0]
        with graph.inserting_before(node):
            replacement = graph.call_module(path, (data,))
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    if not layers:
        lifted = fx.GraphModule(module, graph, class_name="ExportedModel")
    else:
        root = nn.Module()
        for path, layer in layers.items():
            _install(root, path, layer)
        for node in graph.nodes:
            if node.op == "get_attr" and node.users:
                _copy_attr(module, root, str(node.target))
        graph.eliminate_dead_code()
        lifted = fx.GraphModule(root, graph, class_name="ExportedModel")
    meta = getattr(module, "meta", None)
    lifted.meta.update(meta if isinstance(meta, dict) else {})
    lifted.meta["cimflow_capture_method"] = "export"
    lifted.eval()
    return lifted


def _owner(root: nn.Module, parents: list[str]) -> nn.Module:
    """The module at ``parents`` under ``root``, creating empty containers on the way."""
    owner = root
    for part in parents:
        child = getattr(owner, part, None)
        if not isinstance(child, nn.Module):
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    return owner


def _install(root: nn.Module, path: str, layer: nn.Module) -> None:
    *parents, leaf = path.split(".")
    _owner(root, parents).add_module(leaf, layer)


def _copy_attr(source: nn.Module, root: nn.Module, target: str) -> None:
    *parents, leaf = target.split(".")
    value = source
    for part in target.split("."):
        value = getattr(value, part)
    owner = _owner(root, parents)
    if hasattr(owner, leaf):
        return
    if isinstance(value, nn.Parameter):
        owner.register_parameter(leaf, value)
    elif isinstance(value, torch.Tensor):
        owner.register_buffer(leaf, value)
    elif isinstance(value, nn.Module):
        owner.add_module(leaf, value)
    else:
        setattr(owner, leaf, value)
