"""Import an ONNX model as an equivalent ``torch.fx.GraphModule`` built from torch layers.

The supported operators (:data:`SUPPORTED_ONNX_OPS`) map onto torch as follows; weights are
copied from the ONNX initializers:

=====================  =====================================================================
ONNX                   torch
=====================  =====================================================================
Gemm                   ``nn.Linear`` (alpha folded into the weight, beta·C into the bias)
                       when B is an initializer; ``torch.matmul`` otherwise
MatMul                 ``nn.Linear(bias=False)`` when B is a 2-D initializer; else
                       ``torch.matmul`` (a parameter operand stays a static MVM in capture)
Conv                   ``nn.Conv1d/2d/3d`` (asymmetric pads become an ``F.pad`` before it)
Relu/Sigmoid/Tanh      ``nn.ReLU`` / ``nn.Sigmoid`` / ``nn.Tanh``
Add/Mul                ``operator.add`` / ``operator.mul`` (initializers become buffers)
Softmax                ``nn.Softmax`` (opset >= 13 semantics; older opsets via flatten-to-2D)
Reshape                ``torch.reshape`` (0 copies the input dimension, -1 is inferred)
Flatten                ``torch.flatten`` to 2-D at ``axis``
Transpose              ``Tensor.permute``
Concat                 ``torch.cat``
MaxPool/AveragePool    ``nn.MaxPoolNd`` / ``nn.AvgPoolNd``
GlobalAveragePool      ``nn.AdaptiveAvgPoolNd(1)``
BatchNormalization     ``nn.BatchNormNd`` in eval mode with the running statistics copied
Gather                 ``nn.Embedding`` when the data is a 2-D initializer gathered on axis
                       0 (an embedding lookup); else advanced indexing
Constant/Identity/     constants, aliases; Dropout is the identity at inference
Dropout
=====================  =====================================================================

Any other operator (or custom domain) is refused with one :class:`CompileError` listing
every unsupported operator in the file and the supported set.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from cimflow.compile.example_inputs import zeros_input
from cimflow.compile.onnx_file import import_onnx, load_onnx
from cimflow.errors import CompileError

__all__ = ["SUPPORTED_ONNX_OPS", "load_onnx", "onnx_to_module"]

#: ONNX operators (default domain) the importer converts.
SUPPORTED_ONNX_OPS = (
    "Gemm", "MatMul", "Conv", "Relu", "Sigmoid", "Tanh", "Add", "Mul", "Softmax", "Reshape",
    "Flatten", "Transpose", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
    "BatchNormalization", "Gather", "Constant", "Identity", "Dropout",
)

# ONNX TensorProto element types -> torch dtypes.
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _sanitize(name: str, fallback: str) -> str:
    cleaned = re.sub(r"\W", "_", name or "").strip("_") or fallback
    return f"n_{cleaned}" if cleaned[0].isdigit() else cleaned


class _Converter:
    """State of one ONNX -> fx conversion."""

    def __init__(self, model: Any, source: str) -> None:
        onnx = import_onnx()
        self.onnx = onnx
        self.numpy_helper = onnx.numpy_helper
        self.source = source
        self.opset = next((imp.version for imp in model.opset_import
                           if imp.domain in ("", "ai.onnx")), 13)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - ranks are a convenience
            inferred = model
        self.graph_proto = model.graph
        self.ranks: dict[str, int] = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
            inferred.graph.output
        ):
            tensor_type = info.type.tensor_type
            if tensor_type.HasField("shape"):
                self.ranks[info.name] = len(tensor_type.shape.dim)
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.consts: dict[str, torch.Tensor] = {}
        self.const_nodes: dict[str, fx.Node] = {}
        self.taken: set[str] = set(dir(self.root))
        for init in model.graph.initializer:
            self.consts[init.name] = self._to_tensor(init)

    # ------------------------------------------------------------------ helpers
    def _to_tensor(self, proto: Any) -> torch.Tensor:
        array = self.numpy_helper.to_array(proto)
        return torch.from_numpy(array.copy())

    def unique(self, name: str, fallback: str) -> str:
        base = _sanitize(name, fallback)
        candidate, counter = base, 1
        while candidate in self.taken:
            candidate = f"{base}_{counter}"
            counter += 1
        self.taken.add(candidate)
        return candidate

    def const(self, name: str) -> torch.Tensor | None:
        return self.consts.get(name)

    def value(self, name: str, where: str) -> fx.Node:
        """The fx node for ONNX value ``name`` (initializers become buffers)."""
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            if name not in self.const_nodes:
                attr = self.unique(name, "const")
                self.root.register_buffer(attr, self.consts[name].clone())
                self.const_nodes[name] = self.graph.get_attr(attr)
            return self.const_nodes[name]
        raise CompileError(f"{self.source}: {where} reads {name!r}, which no earlier node produces")

    def rank(self, name: str, default: int | None = None) -> int | None:
        if name in self.consts:
            return self.consts[name].dim()
        return self.ranks.get(name, default)

    def attrs(self, node: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr in node.attribute:
            value = self.onnx.helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, self.onnx.TensorProto):
                value = self._to_tensor(value)
            elif isinstance(value, list):
                value = [item.decode() if isinstance(item, bytes) else item for item in value]
            out[attr.name] = value
        return out

    def add_module(self, name: str, module: nn.Module) -> str:
        attr = self.unique(name, type(module).__name__.lower())
        self.root.add_module(attr, module)
        return attr

    # ------------------------------------------------------------------ conversion
    def convert(self) -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
        self._check_supported()
        examples: list[torch.Tensor] = []
        for info in self.graph_proto.input:
            if info.name in self.consts:
                continue  # old IR: initializers listed as inputs
            placeholder = self.graph.placeholder(self.unique(info.name, "input"))
            self.env[info.name] = placeholder
            examples.append(self._example(info))
        for index, node in enumerate(self.graph_proto.node):
            label = f"{self.source}: node {index} {node.name!r} ({node.op_type})"
            before = set(self.graph.nodes)
            self._convert_node(node, index, label)
            for created in self.graph.nodes:
                if created not in before and created.op not in ("placeholder", "get_attr"):
                    created.meta["cimflow_source"] = label
        results = [self.value(out.name, "the graph output") for out in self.graph_proto.output]
        self.graph.output(results[0] if len(results) == 1 else tuple(results))
        module = fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        module.meta["cimflow_capture_method"] = "onnx"
        module.meta["cimflow_source"] = self.source
        module.eval()
        return module, tuple(examples)

    def _check_supported(self) -> None:
        unsupported: dict[str, int] = {}
        for node in self.graph_proto.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            if key not in SUPPORTED_ONNX_OPS:
                unsupported[key] = unsupported.get(key, 0) + 1
        if unsupported:
            listed = ", ".join(f"{op} (x{count})" for op, count in sorted(unsupported.items()))
            raise CompileError(
                f"{self.source} uses ONNX operators cimflow cannot import: {listed}. Supported: "
                f"{', '.join(SUPPORTED_ONNX_OPS)}. Export the model from PyTorch (a .py file or "
                "a torch.export .pt2) instead, or simplify the ONNX graph."
            )

    def _example(self, info: Any) -> torch.Tensor:
        tensor_type = info.type.tensor_type
        dtype = _DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise CompileError(
                f"{self.source}: input {info.name!r} has ONNX element type "
                f"{tensor_type.elem_type}, which cimflow cannot create; allowed: "
                f"{sorted(str(d).removeprefix('torch.') for d in _DTYPES.values())}"
            )
        shape = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
                 for dim in tensor_type.shape.dim]
        return zeros_input(shape, dtype, f"{self.source}: input {info.name!r}")

    def _unsupported(self, label: str, what: str) -> CompileError:
        return CompileError(f"{label}: {what} is not supported by the ONNX importer")

    def _convert_node(self, node: Any, index: int, label: str) -> None:
        op = node.op_type
        attrs = self.attrs(node)
        inputs = list(node.input)
        name = node.name or f"{op.lower()}_{index}"
        handler = getattr(self, f"_op_{op}")
        result = handler(node, inputs, attrs, name, label)
        if result is not None:
            self.env[node.output[0]] = result

    # ------------------------------------------------------------------ operators
    def _op_Constant(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str,
                     label: str) -> None:
        if "value" in attrs:
            tensor = attrs["value"]
        elif "value_float" in attrs:
            tensor = torch.tensor(attrs["value_float"], dtype=torch.float32)
        elif "value_floats" in attrs:
            tensor = torch.tensor(attrs["value_floats"], dtype=torch.float32)
        elif "value_int" in attrs:
            tensor = torch.tensor(attrs["value_int"], dtype=torch.int64)
        elif "value_ints" in attrs:
            tensor = torch.tensor(attrs["value_ints"], dtype=torch.int64)
        else:
            raise self._unsupported(label, f"a Constant with attributes {sorted(attrs)}")
        self.consts[node.output[0]] = tensor
        return None

    def _op_Identity(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str,
                     label: str) -> fx.Node | None:
        if inputs[0] in self.consts and inputs[0] not in self.env:
            self.consts[node.output[0]] = self.consts[inputs[0]]
            return None
        return self.value(inputs[0], label)

    def _op_Dropout(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str,
                    label: str) -> fx.Node:
        if len(node.output) > 1 and node.output[1]:
            raise self._unsupported(label, "Dropout's mask output")
        return self.value(inputs[0], label)

    def _call_module(self, name: str, module: nn.Module, *args: fx.Node) -> fx.Node:
        attr = self.add_module(name, module)
        return self.graph.call_module(attr, args)

    def _linear(self, name: str, weight_kn: torch.Tensor, bias: torch.Tensor | None,
                x: fx.Node) -> fx.Node:
        """nn.Linear computing x @ weight_kn (+ bias); weight_kn has shape (K, N)."""
        k, n = weight_kn.shape
        layer = nn.Linear(int(k), int(n), bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight_kn.t().to(torch.float32))
            if bias is not None:
                layer.bias.copy_(bias.to(torch.float32).reshape(-1).expand(int(n)))
        return self._call_module(name, layer, x)

    def _op_Gemm(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str,
                 label: str) -> fx.Node:
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        a = self.value(inputs[0], label)
        if attrs.get("transA", 0):
            a = self.graph.call_function(torch.transpose, (a, 0, 1))
        b_const = self.const(inputs[1])
        c_name = inputs[2] if len(inputs) > 2 and inputs[2] else None
        c_const = self.const(c_name) if c_name else None
        if b_const is not None and b_const.dim() == 2:
            weight = b_const.t() if attrs.get("transB", 0) else b_const
            n = weight.shape[1]
            bias = None
            if c_const is not None and c_const.numel() in (1, n):
                bias = beta * c_const.to(torch.float32)
            out = self._linear(name, alpha * weight.to(torch.float32), bias, a)
            if c_name and bias is None:
                c = self.value(c_name, label)
                out = self.graph.call_function(operator.add, (out, self._scaled(c, beta)))
            return out
        b = self.value(inputs[1], label)
        if attrs.get("transB", 0):
            b = self.graph.call_function(torch.transpose, (b, 0, 1))
        out = self.graph.call_function(torch.matmul, (a, b))
        if alpha != 1.0:
            out = self.graph.call_function(operator.mul, (out, alpha))
        if c_name:
            out = self.graph.call_function(operator.add, (out, self._scaled(self.value(c_name, label), beta)))
        return out

    def _scaled(self, node: fx.Node, factor: float) -> fx.Node:
        return node if factor == 1.0 else self.graph.call_function(operator.mul, (node, factor))

    def _op_MatMul(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str,
                   label: str) -> fx.Node:
        b_const = self.const(inputs[1])
        if b_const is not None and b_const.dim() == 2 and inputs[0] not in self.consts:
            return self._linear(name, b_const.to(torch.float32), None, self.value(inputs[0], label))
        return self.graph.call_function(torch.matmul, (self.value(inputs[0], label),
                                                       self.value(inputs[1], label)))

    def _pads(self, attrs: dict[str, Any], spatial: int, label: str) -> tuple[list[int], list[int] | None]:
        """Symmetric padding per spatial dim, or (zeros, F.pad list) when asymmetric."""
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID", ""):
            raise self._unsupported(label, f"auto_pad={auto_pad!r} (give explicit pads)")
        pads = list(attrs.get("pads", [0] * (2 * spatial))) if auto_pad != "VALID" else [0] * (2 * spatial)
        begins, ends = pads[:spatial], pads[spatial:]
        if begins == ends:
            return begins, None
        torch_pad: list[int] = []
        for begin, end in zip(reversed(begins), reversed(ends), strict=False):
            torch_pad += [int(begin), int(end)]
        return [0] * spatial, torch_pad

    def _op_Conv(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str,
                 label: str) -> fx.Node:
        weight = self.const(inputs[1])
        if weight is None:
            raise self._unsupported(label, "Conv with a weight that is not an initializer")
        spatial = weight.dim() - 2
        if spatial not in (1, 2, 3):
            raise self._unsupported(label, f"Conv with {spatial} spatial dimensions")
        groups = int(attrs.get("group", 1))
        padding, torch_pad = self._pads(attrs, spatial, label)
        bias = self.const(inputs[2]) if len(inputs) > 2 and inputs[2] else None
        if len(inputs) > 2 and inputs[2] and bias is None:
            raise self._unsupported(label, "Conv with a bias that is not an initializer")
        cls: Any = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial - 1]  # one of three signatures, chosen at run time
        layer = cls(
            in_channels=int(weight.shape[1]) * groups,
            out_channels=int(weight.shape[0]),
            kernel_size=tuple(int(k) for k in weight.shape[2:]),
            stride=tuple(attrs.get("strides", [1] * spatial)),
            padding=tuple(int(p) for p in padding),
            dilation=tuple(attrs.get("dilations", [1] * spatial)),
            groups=groups,
            bias=bias is not None,
        )
        with torch.no_grad():
            layer.weight.copy_(weight.to(torch.float32))
            if bias is not None:
                layer.bias.copy_(bias.to(torch.float32))
        x = self.value(inputs[0], label)
        if torch_pad is not None:
            x = self.graph.call_function(F.pad, (x, torch_pad))
        return self._call_module(name, layer, x)

    def _activation(self, module: nn.Module, inputs: list[str], name: str, label: str) -> fx.Node:
        return self._call_module(name, module, self.value(inputs[0], label))

    def _op_Relu(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        return self._activation(nn.ReLU(), inputs, name, label)

    def _op_Sigmoid(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        return self._activation(nn.Sigmoid(), inputs, name, label)

    def _op_Tanh(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        return self._activation(nn.Tanh(), inputs, name, label)

    def _binary(self, fn: Any, inputs: list[str], label: str) -> fx.Node:
        return self.graph.call_function(fn, (self.value(inputs[0], label), self.value(inputs[1], label)))

    def _op_Add(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        return self._binary(operator.add, inputs, label)

    def _op_Mul(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        return self._binary(operator.mul, inputs, label)

    def _flatten_2d(self, x: fx.Node, axis: int, rank: int | None, label: str) -> fx.Node:
        """ONNX Flatten: (prod(dims[:axis]), prod(dims[axis:]))."""
        if axis < 0:
            if rank is None:
                raise self._unsupported(label, "a negative axis on a tensor of unknown rank")
            axis += rank
        if axis == 0:
            return self.graph.call_function(torch.reshape, (x, (1, -1)))
        tail = self.graph.call_function(torch.flatten, (x, axis))
        if axis == 1:
            return tail
        return self.graph.call_function(torch.flatten, (tail, 0, axis - 1))

    def _op_Flatten(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        return self._flatten_2d(self.value(inputs[0], label), int(attrs.get("axis", 1)),
                                self.rank(inputs[0]), label)

    def _op_Softmax(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        x = self.value(inputs[0], label)
        rank = self.rank(inputs[0])
        if self.opset >= 13:
            return self._call_module(name, nn.Softmax(dim=int(attrs.get("axis", -1))), x)
        axis = int(attrs.get("axis", 1))
        if axis == -1 or (rank is not None and axis == rank - 1):
            return self._call_module(name, nn.Softmax(dim=-1), x)
        flat = self._flatten_2d(x, axis, rank, label)
        soft = self._call_module(name, nn.Softmax(dim=-1), flat)
        return self.graph.call_function(torch.reshape, (soft, self.graph.call_method("size", (x,))))

    def _op_Reshape(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        shape = self.const(inputs[1])
        if shape is None:
            raise self._unsupported(label, "Reshape with a shape that is not a constant")
        x = self.value(inputs[0], label)
        allow_zero = bool(attrs.get("allowzero", 0))
        target: list[Any] = []
        for position, dim in enumerate(int(v) for v in shape.reshape(-1).tolist()):
            if dim == 0 and not allow_zero:
                target.append(self.graph.call_method("size", (x, position)))
            else:
                target.append(dim)
        return self.graph.call_function(torch.reshape, (x, target))

    def _op_Transpose(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        perm = attrs.get("perm")
        if perm is None:
            rank = self.rank(inputs[0])
            if rank is None:
                raise self._unsupported(label, "Transpose without perm on a tensor of unknown rank")
            perm = list(reversed(range(rank)))
        return self.graph.call_method("permute", (self.value(inputs[0], label), *[int(p) for p in perm]))

    def _op_Concat(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        parts = [self.value(item, label) for item in inputs if item]
        return self.graph.call_function(torch.cat, (parts,), {"dim": int(attrs["axis"])})

    def _pool_common(self, node: Any, attrs: dict[str, Any], label: str) -> tuple[int, list[int], list[int] | None]:
        kernel = [int(k) for k in attrs.get("kernel_shape", [])]
        if not kernel:
            raise self._unsupported(label, "a pool without kernel_shape")
        if len(node.output) > 1 and node.output[1]:
            raise self._unsupported(label, "MaxPool's Indices output")
        padding, torch_pad = self._pads(attrs, len(kernel), label)
        return len(kernel), padding, torch_pad

    def _op_MaxPool(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        spatial, padding, torch_pad = self._pool_common(node, attrs, label)
        if spatial not in (1, 2, 3):
            raise self._unsupported(label, f"MaxPool with {spatial} spatial dimensions")
        cls = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[spatial - 1]
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        layer = cls(kernel, stride=tuple(attrs.get("strides", [1] * spatial)), padding=tuple(padding),
                    dilation=tuple(attrs.get("dilations", [1] * spatial)),
                    ceil_mode=bool(attrs.get("ceil_mode", 0)))
        x = self.value(inputs[0], label)
        if torch_pad is not None:
            x = self.graph.call_function(F.pad, (x, torch_pad), {"value": -math.inf})
        return self._call_module(name, layer, x)

    def _op_AveragePool(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        spatial, padding, torch_pad = self._pool_common(node, attrs, label)
        if spatial not in (1, 2, 3):
            raise self._unsupported(label, f"AveragePool with {spatial} spatial dimensions")
        if torch_pad is not None:
            raise self._unsupported(label, "AveragePool with asymmetric pads")
        cls: Any = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[spatial - 1]  # one of three signatures, chosen at run time
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        layer = cls(kernel, stride=tuple(attrs.get("strides", [1] * spatial)), padding=tuple(padding),
                    ceil_mode=bool(attrs.get("ceil_mode", 0)),
                    count_include_pad=bool(attrs.get("count_include_pad", 0)))
        return self._call_module(name, layer, self.value(inputs[0], label))

    def _op_GlobalAveragePool(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        rank = self.rank(inputs[0], 4) or 4
        cls = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d, 5: nn.AdaptiveAvgPool3d}.get(rank)
        if cls is None:
            raise self._unsupported(label, f"GlobalAveragePool on a rank-{rank} tensor")
        return self._call_module(name, cls(1), self.value(inputs[0], label))

    def _op_BatchNormalization(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        if len([out for out in node.output if out]) > 1:
            raise self._unsupported(label, "BatchNormalization in training mode (extra outputs)")
        scale, bias, mean, var = (self.const(item) for item in inputs[1:5])
        if scale is None or bias is None or mean is None or var is None:
            raise self._unsupported(label, "BatchNormalization with non-initializer statistics")
        rank = self.rank(inputs[0], 4) or 4
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
        if cls is None:
            raise self._unsupported(label, f"BatchNormalization on a rank-{rank} tensor")
        layer = cls(int(scale.numel()), eps=float(attrs.get("epsilon", 1e-5)),
                    momentum=1.0 - float(attrs.get("momentum", 0.9)))
        # affine and tracking running statistics, the defaults
        assert layer.weight is not None and layer.bias is not None
        assert layer.running_mean is not None and layer.running_var is not None
        with torch.no_grad():
            layer.weight.copy_(scale.to(torch.float32))
            layer.bias.copy_(bias.to(torch.float32))
            layer.running_mean.copy_(mean.to(torch.float32))
            layer.running_var.copy_(var.to(torch.float32))
        layer.eval()
        return self._call_module(name, layer, self.value(inputs[0], label))

    def _op_Gather(self, node: Any, inputs: list[str], attrs: dict[str, Any], name: str, label: str) -> fx.Node:
        axis = int(attrs.get("axis", 0))
        table = self.const(inputs[0])
        if table is not None and table.dim() == 2 and axis == 0 and inputs[1] not in self.consts:
            layer = nn.Embedding(int(table.shape[0]), int(table.shape[1]))
            with torch.no_grad():
                layer.weight.copy_(table.to(torch.float32))
            return self._call_module(name, layer, self.value(inputs[1], label))
        data = self.value(inputs[0], label)
        index_const = self.const(inputs[1])
        if index_const is not None and index_const.dim() == 0:
            index: Any = int(index_const.item())
        else:
            index = self.value(inputs[1], label)
        if axis < 0:
            rank = self.rank(inputs[0])
            if rank is None:
                raise self._unsupported(label, "Gather with a negative axis on a tensor of unknown rank")
            axis += rank
        key = tuple([slice(None)] * axis + [index])
        return self.graph.call_function(operator.getitem, (data, key))


def onnx_to_module(model: Any, source: str = "model.onnx") -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
    """Convert an ``onnx.ModelProto`` to an fx GraphModule plus zero example inputs.

    The module's ``meta["cimflow_capture_method"]`` is ``"onnx"`` so that
    :func:`cimflow.compile.capture.capture` records where the graph came from; each fx
    node's ``meta["cimflow_source"]`` names the ONNX node it came from.
    """
    return _Converter(model, source).convert()
