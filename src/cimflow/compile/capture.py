"""Capture: a PyTorch model plus example inputs -> a typed operator :class:`Graph`.

How a model is captured, in order of preference:

1. **torch.fx** symbolic tracing (``capture_method="fx"``) with cimflow's own leaf set: the
   supported layers (Linear, ConvNd, Embedding, EmbeddingBag, activations, norms, pooling,
   Dropout, Flatten, Softmax, MultiheadAttention, ...) stay single call_module nodes; every
   other module is traced into so that its matmuls and elementwise work appear. Each node's
   output shape and dtype come from one run of the traced graph on the example inputs
   (a torch.fx Interpreter, like ``torch.fx.passes.shape_prop.ShapeProp``).
2. **Module traversal** (``capture_method="module_traversal"``) when fx cannot trace the
   model (data-dependent control flow, non-torch calls on proxies) or when the traced graph
   does not run although the eager model does: the model runs once eagerly with forward
   hooks on the leaf modules and a ``TorchFunctionMode`` recording the torch functions
   called between them. Edges follow tensor identity (which op produced each tensor);
   control flow is fixed to the path these example inputs took. A ``CaptureFallbackWarning``
   says why fx failed and ``Graph.warnings`` says how the graph was built.
3. A ``torch.fx.GraphModule`` is used as it is: one from ``torch.export``
   (``ExportedProgram.module()``, ATen operators, ``capture_method="export"``) or from the
   ONNX importer (``capture_method="onnx"``).

Models whose parameters live on the ``meta`` device (e.g. DLRM-v2 with 204M-row embedding
tables) are captured by propagating shapes on meta tensors: every parameter and buffer is
swapped for a meta tensor for the duration of the run and the example inputs are
moved to meta, so nothing is allocated and index values are not checked.

``nn.MultiheadAttention`` cannot be traced into by torch.fx (its forward branches on tensor
properties), so it stays a leaf and is expanded into a composite of six ops:
``<path>.q_proj``, ``<path>.k_proj``, ``<path>.v_proj`` (static MVMs on slices of
``in_proj_weight``), ``<path>.scores`` (Q·Kᵀ, dynamic matmul), ``<path>.softmax`` (vector)
and ``<path>.context`` (A·V, dynamic matmul), then ``<path>.out_proj`` (static MVM).

Classification (see :class:`cimflow.compile.graph.OpKind`):

* ``static_mvm``: Linear, Conv1d/2d/3d (im2col), Embedding (one-hot MVM: one per index),
  EmbeddingBag (multi-hot MVM: one per bag for sum/mean, one per lookup for max), and
  ``linear``/``matmul``/``mm``/``addmm``/``einsum``/``conv*``/``embedding*`` functions whose
  weight operand derives only from parameters or buffers (``x @ self.w``, ``self.w.t()``).
* ``dynamic_matmul``: the same matrix functions (and ``bmm``, ``baddbmm``,
  ``scaled_dot_product_attention``) when both operands are activations: attention Q·Kᵀ and
  A·V, and the DLRM pairwise dot interaction ``torch.bmm(T, T.transpose(1, 2))``.
* ``vector``: activation functions, normalizations, pooling, softmax, elementwise
  arithmetic (residual add, gating mul), reductions, comparisons; the ``tril``/``triu``
  masking and index selection after the DLRM interaction are ``vector``/``data_movement``.
* ``data_movement``: view/reshape/flatten/permute/transpose/cat/stack/split/getitem/
  contiguous/size/getattr/dtype casts/padding, Dropout (identity at inference).
* ``host``: anything else (e.g. ``torch.fft.fft``, an ``fx.wrap``-ed Python function, an
  LSTM); each is listed in ``Graph.warnings`` with its source location.

Computations that depend only on parameters and constants (``self.w.t()``, ``torch.arange``)
are folded into the ops that consume them and do not appear as ops.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

from cimflow.compile.graph import Graph, Op, OpKind
from cimflow.errors import CompileError

__all__ = [
    "capture",
    "load_model_file",
    "CaptureFallbackWarning",
    "is_leaf_module",
    "canonical_op_name",
    "MODEL_FILE_SUFFIXES",
]

#: File types :func:`load_model_file` accepts.
MODEL_FILE_SUFFIXES = (".py", ".pt2", ".onnx")


class CaptureFallbackWarning(UserWarning):
    """torch.fx could not capture the model; cimflow fell back to module traversal."""


# ============================================================================ module tables


def _nn_classes(*names: str) -> tuple[type, ...]:
    """The torch.nn classes (from torch.nn or its submodules) that exist in this torch."""
    from torch.nn.modules import batchnorm, dropout, instancenorm, padding, pooling

    found = []
    for name in names:
        for namespace in (nn, batchnorm, dropout, instancenorm, padding, pooling):
            cls = getattr(namespace, name, None)
            if isinstance(cls, type):
                found.append(cls)
                break
    return tuple(found)


_STATIC_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.EmbeddingBag)
_VECTOR_MODULES = _nn_classes(
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
    "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Hardshrink",
    "Softshrink", "Softplus", "Softsign", "Tanhshrink", "LogSigmoid", "Threshold", "GLU",
    "Softmax", "Softmax2d", "LogSoftmax", "Softmin", "_BatchNorm", "LayerNorm", "GroupNorm",
    "_InstanceNorm", "RMSNorm", "LocalResponseNorm", "_MaxPoolNd", "_AvgPoolNd",
    "_AdaptiveAvgPoolNd", "_AdaptiveMaxPoolNd", "_LPPoolNd", "Upsample",
    "UpsamplingNearest2d", "UpsamplingBilinear2d", "CosineSimilarity", "PairwiseDistance",
)
_DATA_MODULES = _nn_classes(
    "Flatten", "Unflatten", "Identity", "_DropoutNd", "PixelShuffle", "PixelUnshuffle",
    "ChannelShuffle", "_ConstantPadNd", "_ReflectionPadNd", "_ReplicationPadNd",
    "_CircularPadNd",
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_KNOWN_LEAVES = _STATIC_MODULES + _VECTOR_MODULES + _DATA_MODULES + (nn.MultiheadAttention,)

# Public attributes of modules worth recording (values must be plain data).
_MODULE_ATTRIBUTES = (
    "in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride",
    "padding", "dilation", "groups", "padding_mode", "num_embeddings", "embedding_dim",
    "mode", "padding_idx", "include_last_offset", "max_norm", "num_features", "eps",
    "momentum", "affine", "track_running_stats", "normalized_shape", "elementwise_affine",
    "num_groups", "p", "dim", "start_dim", "end_dim", "output_size", "ceil_mode",
    "count_include_pad", "return_indices", "negative_slope", "approximate", "inplace",
    "scale_factor", "upscale_factor", "embed_dim", "num_heads", "batch_first",
)


def is_leaf_module(module: nn.Module) -> bool:
    """Whether capture keeps ``module`` as one op instead of tracing into it.

    The supported layers are leaves; so is any other torch.nn module without children
    (e.g. LSTM, ConvTranspose2d: they become ``host`` ops). torch.nn modules with children
    (TransformerEncoderLayer, ...) and all user modules are traced into.
    """
    if isinstance(module, _KNOWN_LEAVES):
        return True
    if isinstance(module, _CONTAINERS):
        return False
    from_torch_nn = type(module).__module__.startswith("torch.nn.")
    return from_torch_nn and next(module.children(), None) is None


# ============================================================================ function tables

_VECTOR_FUNCS = frozenset(
    """relu relu6 leaky_relu prelu rrelu elu selu celu gelu silu mish sigmoid tanh hardtanh
    hardswish hardsigmoid hardshrink softshrink softplus softsign tanhshrink logsigmoid
    log_sigmoid threshold glu softmax log_softmax softmin layer_norm batch_norm group_norm
    instance_norm rms_norm local_response_norm normalize max_pool1d max_pool2d max_pool3d
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    lp_pool1d lp_pool2d interpolate upsample upsample_nearest2d upsample_bilinear2d add sub
    rsub mul div floor_divide remainder fmod neg pos pow sqrt rsqrt exp exp2 expm1 log log2
    log10 log1p abs sign sin cos erf erfc reciprocal square clamp clip clamp_min clamp_max
    minimum maximum fmin fmax where masked_fill mean sum prod max min amax amin argmax argmin
    var std var_mean std_mean norm logsumexp cumsum cumprod lt gt le ge eq ne logical_and
    logical_or logical_not logical_xor and or xor invert bitwise_and bitwise_or bitwise_not
    tril triu lerp addcmul addcdiv cosine_similarity pairwise_distance dist floor ceil round
    trunc frac isnan isinf nan_to_num sort topk any all baddbmm_bias""".split()
)
_DATA_FUNCS = frozenset(
    """view reshape flatten unflatten permute transpose t swapaxes swapdims movedim
    contiguous cat concat concatenate stack hstack vstack split split_with_sizes chunk
    tensor_split unbind getitem setitem size sym_size getattr dim numel len squeeze unsqueeze
    expand expand_as broadcast_to repeat tile repeat_interleave narrow select slice
    index_select gather take_along_dim take masked_select nonzero to type type_as float half
    double bfloat16 int long bool char byte short clone detach alias view_as reshape_as roll
    flip fliplr flipud rot90 pad constant_pad_nd dropout dropout1d dropout2d dropout3d
    alpha_dropout feature_dropout feature_alpha_dropout identity zeros_like ones_like
    empty_like full_like new_zeros new_ones new_empty new_full copy lift_fresh_copy
    pixel_shuffle pixel_unshuffle channel_shuffle unfold as_strided diagonal diag_embed
    fill index scatter index_put index_add index_copy triu_indices tril_indices
    embedding_renorm T mT H mH real imag data shape dtype device ndim""".split()
)
_MATRIX_FUNCS = frozenset(
    """matmul mm bmm baddbmm addmm addbmm einsum linear conv1d conv2d conv3d convolution
    embedding embedding_bag scaled_dot_product_attention""".split()
)
# Calls that move tensor values into Python (host round trips, data-dependent control flow).
_TO_HOST_FUNCS = frozenset("item tolist numpy bool int float".split())

_ALIASES = {
    "_softmax": "softmax", "_log_softmax": "log_softmax", "_to_copy": "to",
    "_native_batch_norm_legit_no_training": "batch_norm", "_native_batch_norm_legit": "batch_norm",
    "native_batch_norm": "batch_norm", "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm", "_unsafe_view": "view", "max_pool2d_with_indices":
    "max_pool2d", "max_pool1d_with_indices": "max_pool1d", "max_pool3d_with_indices":
    "max_pool3d", "_embedding_bag": "embedding_bag", "_embedding_bag_forward_only":
    "embedding_bag", "truediv": "div", "true_divide": "div", "floordiv": "floor_divide",
    "_adaptive_avg_pool2d": "adaptive_avg_pool2d", "_adaptive_avg_pool3d":
    "adaptive_avg_pool3d", "upsample_nearest1d": "interpolate", "upsample_nearest2d":
    "interpolate", "upsample_bilinear2d": "interpolate", "concat": "cat", "concatenate": "cat",
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math": "scaled_dot_product_attention",
    "_scaled_dot_product_efficient_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention": "scaled_dot_product_attention",
    "multiply": "mul", "subtract": "sub", "divide": "div", "negative": "neg", "absolute": "abs",
    "greater": "gt", "less": "lt", "greater_equal": "ge", "less_equal": "le", "not_equal": "ne",
    "_reshape_alias": "reshape", "_unsafe_index": "index", "index_Tensor": "index",
}
_DUNDER_ARITHMETIC = frozenset(
    "add sub mul matmul truediv floordiv div pow mod and or xor lshift rshift".split()
)


def canonical_op_name(target: Any) -> str:
    """A short operator name for a function, method name or ATen overload.

    ``operator.add``/``Tensor.__radd__``/``Tensor.add_``/``aten.add.Tensor`` all give
    ``"add"``; ``torch.fft.fft`` gives ``"fft_fft"``; ``aten._softmax.default`` gives
    ``"softmax"``.
    """
    if isinstance(target, str):
        raw = target
    elif isinstance(target, torch._ops.OpOverload):
        raw = target._opname
    elif isinstance(target, torch._ops.OpOverloadPacket):
        raw = target._qualified_op_name.split("::")[-1]
    else:
        raw = getattr(target, "__name__", type(target).__name__)
        if raw == "__get__" and hasattr(target, "__self__"):  # a Tensor property getter
            raw = getattr(target.__self__, "__name__", raw)
    if raw.startswith("__") and raw.endswith("__") and len(raw) > 4:
        raw = raw[2:-2]
        for prefix in ("r", "i"):
            if raw.startswith(prefix) and raw[1:] in _DUNDER_ARITHMETIC:
                raw = raw[1:]
    elif raw.endswith("_") and not raw.startswith("_"):
        raw = raw[:-1]
    return _ALIASES.get(raw, raw)


def _target_label(style: str, target: Any) -> str:
    """Human-readable target: module path, ``torch.matmul``, ``Tensor.view``, ``aten.x.y``."""
    if style == "module" or isinstance(target, str) and style == "method":
        return target if style == "module" else f"Tensor.{target}"
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)
    try:
        name = torch.overrides.resolve_name(target)
    except Exception:  # noqa: BLE001 - resolve_name is best effort
        name = None
    if name:
        return name
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    module = "operator" if module == "_operator" else module
    return f"{module}.{qualname}" if module else qualname


# ============================================================================ values


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


# ============================================================================ classification


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
            inputs = list(dict.fromkeys(ref.op for ref in activation))
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


def _elements(call: _Call) -> int:
    """Largest tensor element count among the activation inputs and the outputs."""
    infos = [ref.tensor for ref in call.activation_refs() if ref.tensor]
    infos += _tensor_infos(call.output)
    return max((info.numel for info in infos), default=0)


def _module_attributes(module: nn.Module) -> dict[str, Any]:
    attrs: dict[str, Any] = {"module_type": f"{type(module).__module__}.{type(module).__qualname__}"}
    for attr in _MODULE_ATTRIBUTES:
        if hasattr(module, attr):
            value = getattr(module, attr)
            if value is None or isinstance(value, (bool, int, float, str, tuple, list)):
                attrs[attr] = value
    if hasattr(module, "bias") and not isinstance(getattr(module, "bias"), bool):
        attrs["bias"] = getattr(module, "bias") is not None
    return attrs


def _static_base(module: nn.Module) -> str:
    for cls in _STATIC_MODULES:
        if isinstance(module, cls):
            return cls.__name__
    return type(module).__name__


def _conv_counts(weight: tuple[int, ...], out: _TensorInfo | None, groups: int) -> dict[str, Any]:
    """im2col view of a convolution: weight (C_out, C_in/groups, *kernel)."""
    rows = math.prod(weight[1:])
    columns = weight[0]
    positions = out.numel // columns if out and columns else 0
    return {
        "weight_shape": (rows, columns),
        "mvm_count": positions,
        "macs": positions * rows * columns,
        "attributes": {
            "groups": groups,
            "group_weight_shape": [rows, columns // max(groups, 1)],
            "output_positions": positions,
            "kernel_size": list(weight[2:]),
        },
    }


def _classify_module(call: _Call, em: _Emitter) -> None:
    module = call.module
    assert module is not None
    params = sum(p.numel() for p in module.parameters())
    attrs = _module_attributes(module)
    activation = call.activation_refs()
    first = activation[0].tensor if activation else None
    out = _first_tensor(call.output)
    if isinstance(module, nn.MultiheadAttention):
        _expand_multihead_attention(call, em, module)
    elif isinstance(module, nn.Linear):
        rows, columns = module.in_features, module.out_features
        vectors = first.numel // rows if first and rows else 0
        em.emit(call, OpKind.STATIC_MVM, "Linear", weight_shape=(rows, columns),
                mvm_count=vectors, macs=vectors * rows * columns, params=params, attributes=attrs)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        counts = _conv_counts(tuple(module.weight.shape), out, module.groups)
        attrs.update(counts.pop("attributes"))
        em.emit(call, OpKind.STATIC_MVM, _static_base(module), params=params, attributes=attrs,
                **counts)
    elif isinstance(module, nn.EmbeddingBag):
        indices = call.arg(0, "input")
        offsets = call.arg(1, "offsets")
        weights = call.arg(2, "per_sample_weights")
        _emit_embedding_bag(call, em, indices, offsets, weights, tuple(module.weight.shape),
                            module.mode, params, attrs, "EmbeddingBag")
    elif isinstance(module, nn.Embedding):
        lookups = first.numel if first else 0
        dim = module.embedding_dim
        attrs["lookups"] = lookups
        em.emit(call, OpKind.STATIC_MVM, "Embedding",
                weight_shape=(module.num_embeddings, dim), mvm_count=lookups,
                macs=lookups * dim, params=params, attributes=attrs)
    elif isinstance(module, _VECTOR_MODULES):
        attrs["elements"] = _elements(call)
        em.emit(call, OpKind.VECTOR, type(module).__name__, params=params, attributes=attrs)
    elif isinstance(module, _DATA_MODULES):
        if isinstance(module, _nn_classes("_DropoutNd")):
            attrs["identity_at_inference"] = True
        attrs["elements"] = _elements(call)
        em.emit(call, OpKind.DATA_MOVEMENT, type(module).__name__, params=params,
                attributes=attrs)
    else:
        attrs["reason"] = f"cimflow has no model of {type(module).__name__}"
        em.emit(call, OpKind.HOST, type(module).__name__, params=params, attributes=attrs)


def _emit_embedding_bag(call: _Call, em: _Emitter, indices: Any, offsets: Any, weights: Any,
                        table: tuple[int, ...], mode: str, params: int,
                        attrs: dict[str, Any], op_type: str) -> None:
    """Multi-hot MVM: sum/mean bags are one MVM per bag; max pools one read per lookup."""
    index_info = indices.tensor if isinstance(indices, _Ref) else None
    out = _first_tensor(call.output)
    lookups = index_info.numel if index_info else 0
    if out is not None:
        bags = out.shape[0] if len(out.shape) > 1 else 1
    elif index_info is not None and len(index_info.shape) == 2:
        bags = index_info.shape[0]
    else:
        bags = 0
    dim = table[-1]
    attrs.update({
        "mode": mode,
        "lookups": lookups,
        "bags": bags,
        "pooling_factor": lookups / bags if bags else 0.0,
        "per_sample_weights": isinstance(weights, _Ref),
        "offsets": isinstance(offsets, _Ref),
    })
    vectors = bags if mode in ("sum", "mean") else lookups
    em.emit(call, OpKind.STATIC_MVM, op_type, weight_shape=(table[0], dim), mvm_count=vectors,
            macs=lookups * dim, params=params, attributes=attrs)


def _expand_multihead_attention(call: _Call, em: _Emitter, module: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention as q/k/v projections, Q·Kᵀ, softmax, A·V and out_proj."""
    query = call.arg(0, "query")
    key = call.arg(1, "key")
    value = call.arg(2, "value")
    refs = [ref if isinstance(ref, _Ref) else None for ref in (query, key, value)]
    q_info, k_info = (ref.tensor if ref else None for ref in refs[:2])
    embed, heads = module.embed_dim, module.num_heads
    head_dim = embed // heads
    batch_first = module.batch_first

    def batch_and_length(info: _TensorInfo | None) -> tuple[int, int]:
        if info is None:
            return 0, 0
        if len(info.shape) == 2:
            return 1, info.shape[0]
        return (info.shape[0], info.shape[1]) if batch_first else (info.shape[1], info.shape[0])

    batch, q_len = batch_and_length(q_info)
    _, k_len = batch_and_length(k_info)
    dtype = q_info.dtype if q_info else "float32"
    base = call.name
    path = call.target if isinstance(call.target, str) else base
    with_bias = module.in_proj_bias is not None
    common = {"composite": "MultiheadAttention", "module": path, "num_heads": heads,
              "embed_dim": embed, "batch_first": batch_first}
    projections = {}
    for index, (label, ref, in_dim) in enumerate(
        (("q", refs[0], embed), ("k", refs[1], module.kdim), ("v", refs[2], module.vdim))
    ):
        length = q_len if label == "q" else k_len
        if module._qkv_same_embed_dim:
            weight = {"weight": f"{path}.in_proj_weight",
                      "weight_rows_slice": [index * embed, (index + 1) * embed]}
        else:
            weight = {"weight": f"{path}.{label}_proj_weight"}
        src = ref.tensor if ref else None
        out_shape = tuple(src.shape[:-1]) + (embed,) if src else None
        projections[label] = em.emit(
            call, OpKind.STATIC_MVM, f"MultiheadAttention.{label}_proj",
            name=f"{base}.{label}_proj", inputs=[ref.op] if ref and ref.op else [],
            output=_TensorInfo(out_shape, dtype) if out_shape else None,
            weight_shape=(in_dim, embed), mvm_count=batch * length,
            macs=batch * length * in_dim * embed,
            params=in_dim * embed + (embed if with_bias else 0),
            attributes={**common, **weight, "bias": with_bias}, target=path,
        ).name
    score_shape = (batch, heads, q_len, k_len)
    attention_macs = batch * heads * q_len * k_len * head_dim
    scores = em.emit(
        call, OpKind.DYNAMIC_MATMUL, "MultiheadAttention.scores", name=f"{base}.scores",
        inputs=[projections["q"], projections["k"]], output=_TensorInfo(score_shape, dtype),
        mvm_count=batch * heads * q_len, macs=attention_macs, params=0, target=path,
        attributes={**common, "operand_shapes": [[batch, heads, q_len, head_dim],
                                                 [batch, heads, head_dim, k_len]],
                    "scale": 1.0 / math.sqrt(head_dim)},
    ).name
    masks = [ref.op for ref in _iter_refs([call.kwargs.get("attn_mask"),
                                           call.kwargs.get("key_padding_mask"),
                                           list(call.args[3:])]) if ref.op]
    softmax = em.emit(
        call, OpKind.VECTOR, "softmax", name=f"{base}.softmax", inputs=[scores, *masks],
        output=_TensorInfo(score_shape, dtype), params=0, target=path,
        attributes={**common, "elements": math.prod(score_shape), "dim": -1},
    ).name
    context = em.emit(
        call, OpKind.DYNAMIC_MATMUL, "MultiheadAttention.context", name=f"{base}.context",
        inputs=[softmax, projections["v"]], output=_TensorInfo((batch, heads, q_len, head_dim), dtype),
        mvm_count=batch * heads * q_len, macs=attention_macs, params=0, target=path,
        attributes={**common, "operand_shapes": [[batch, heads, q_len, k_len],
                                                 [batch, heads, k_len, head_dim]]},
    ).name
    out_proj = module.out_proj
    em.emit(
        call, OpKind.STATIC_MVM, "Linear", name=f"{base}.out_proj", inputs=[context],
        weight_shape=(embed, embed), mvm_count=batch * q_len, macs=batch * q_len * embed * embed,
        params=sum(p.numel() for p in out_proj.parameters()), target=f"{path}.out_proj",
        attributes={**common, "bias": out_proj.bias is not None},
    )


def _shape(ref: Any) -> tuple[int, ...] | None:
    info = ref.tensor if isinstance(ref, _Ref) else None
    return info.shape if info else None


def _classify_function(call: _Call, em: _Emitter) -> None:
    name = canonical_op_name(call.target)
    if name == "getattr" and len(call.args) > 1 and isinstance(call.args[1], str):
        attribute = call.args[1]  # x.shape, x.real, x.T under fx
        name = attribute if attribute in _DATA_FUNCS else name
    attrs: dict[str, Any] = {}
    tensor_in = any(ref.tensor for ref in call.activation_refs())
    if not tensor_in and not _tensor_infos(call.output):
        # Python arithmetic on sizes (B // heads, D ** 0.5): free shape bookkeeping.
        attrs.update(shape_arithmetic=True, args=_plain_arg(list(call.args)))
        em.emit(call, OpKind.DATA_MOVEMENT, name, attributes=attrs)
        return
    if name in _MATRIX_FUNCS:
        _classify_matrix_function(call, em, name)
    elif name in _VECTOR_FUNCS:
        attrs.update(elements=_elements(call), args=_plain_arg(list(call.args)),
                     kwargs=_plain_arg(call.kwargs))
        em.emit(call, OpKind.VECTOR, name, attributes=attrs)
    elif name in _DATA_FUNCS:
        attrs.update(elements=_elements(call), args=_plain_arg(list(call.args)),
                     kwargs=_plain_arg(call.kwargs))
        if name.startswith(("dropout", "alpha_dropout", "feature_")):
            attrs["identity_at_inference"] = True
        em.emit(call, OpKind.DATA_MOVEMENT, name, attributes=attrs)
    else:
        attrs.update(args=_plain_arg(list(call.args)), kwargs=_plain_arg(call.kwargs),
                     reason=f"cimflow has no model of {_target_label(call.style, call.target)}")
        em.emit(call, OpKind.HOST, name, attributes=attrs)


def _matmul_operands(call: _Call, name: str) -> tuple[Any, Any]:
    if name in ("addmm", "baddbmm", "addbmm"):
        return call.arg(1, "mat1", call.kwargs.get("batch1")), call.arg(2, "mat2",
                                                                          call.kwargs.get("batch2"))
    return call.arg(0, "input"), call.arg(1, "other", call.kwargs.get("mat2"))


def _classify_matrix_function(call: _Call, em: _Emitter, name: str) -> None:
    out = _first_tensor(call.output)
    attrs: dict[str, Any] = {}
    if name in ("conv1d", "conv2d", "conv3d", "convolution"):
        x, weight = call.arg(0, "input"), call.arg(1, "weight")
        transposed = bool(call.arg(6, "transposed", False)) if name == "convolution" else False
        groups = call.arg(8 if name == "convolution" else 6, "groups", 1)
        weight_shape = _shape(weight)
        if transposed or weight_shape is None:
            attrs["reason"] = "transposed convolution" if transposed else "unknown weight shape"
            em.emit(call, OpKind.HOST, name, attributes=attrs)
            return
        counts = _conv_counts(weight_shape, out, int(groups) if isinstance(groups, int) else 1)
        attrs.update(counts.pop("attributes"))
        attrs.update(stride=_plain_arg(call.arg(3, "stride", 1)),
                     padding=_plain_arg(call.arg(4, "padding", 0)),
                     dilation=_plain_arg(call.arg(5, "dilation", 1)),
                     bias=call.arg(2, "bias") is not None)
        static = isinstance(weight, _Ref) and weight.op is None
        attrs["weight"] = ",".join(weight.roots) if static else None
        if static:
            em.emit(call, OpKind.STATIC_MVM, name, attributes=attrs, **counts)
        else:
            em.emit(call, OpKind.DYNAMIC_MATMUL, name, mvm_count=counts["mvm_count"],
                    macs=counts["macs"], attributes=attrs)
        return
    if name in ("embedding", "embedding_bag"):
        first, second = call.arg(0, "input"), call.arg(1, "weight")
        if isinstance(first, _Ref) and first.op is None and first.tensor and len(first.tensor.shape) == 2:
            table, indices, aten_order = first, second, True
        else:
            table, indices, aten_order = second, first, False
        if not (isinstance(table, _Ref) and table.op is None and table.tensor):
            attrs.update(elements=_elements(call), reason="table is an activation (a gather)")
            em.emit(call, OpKind.DATA_MOVEMENT, name, attributes=attrs)
            return
        attrs["weight"] = ",".join(table.roots)
        table_shape = table.tensor.shape
        if name == "embedding":
            lookups = indices.tensor.numel if isinstance(indices, _Ref) and indices.tensor else 0
            attrs["lookups"] = lookups
            em.emit(call, OpKind.STATIC_MVM, name, weight_shape=table_shape,
                    mvm_count=lookups, macs=lookups * table_shape[-1], attributes=attrs)
            return
        if aten_order:  # aten.embedding_bag(weight, indices, offsets, scale, mode, sparse, psw, ilo)
            mode = call.arg(4, "mode", 0)
            offsets, weights = call.arg(2, "offsets"), call.arg(6, "per_sample_weights")
        else:  # F.embedding_bag(input, weight, offsets, max_norm, norm_type, scale, mode, ...)
            mode = call.arg(6, "mode", "mean")
            offsets, weights = call.arg(2, "offsets"), call.arg(8, "per_sample_weights")
        mode = {0: "sum", 1: "mean", 2: "max"}.get(mode, mode) if isinstance(mode, int) else mode
        _emit_embedding_bag(call, em, indices, offsets, weights, table_shape, str(mode),
                            em.root_params([table]), attrs, name)
        return
    if name == "scaled_dot_product_attention":
        q, k, v = (_shape(call.arg(i, n)) for i, n in enumerate(("query", "key", "value")))
        macs = mvms = 0
        if q and k and v:
            batch = math.prod(q[:-2])
            macs = batch * q[-2] * k[-2] * q[-1] + batch * q[-2] * k[-2] * v[-1]
            mvms = 2 * batch * q[-2]
        attrs["is_causal"] = _plain_arg(call.kwargs.get("is_causal", False))
        em.emit(call, OpKind.DYNAMIC_MATMUL, name, mvm_count=mvms, macs=macs, attributes=attrs)
        return
    if name == "einsum":
        _classify_einsum(call, em, attrs)
        return
    if name == "linear":
        weight = call.arg(1, "weight")
        w_shape = _shape(weight)
        rows, columns = (w_shape[-1], w_shape[0]) if w_shape and len(w_shape) == 2 else (0, 0)
        macs = out.numel * rows if out else 0
        attrs["bias"] = call.arg(2, "bias") is not None
        if isinstance(weight, _Ref) and weight.op is None and rows:
            attrs["weight"] = ",".join(weight.roots)
            em.emit(call, OpKind.STATIC_MVM, name, weight_shape=(rows, columns),
                    mvm_count=macs // (rows * columns) if columns else 0, macs=macs,
                    attributes=attrs)
        else:
            em.emit(call, OpKind.DYNAMIC_MATMUL, name,
                    mvm_count=out.numel // out.shape[-1] if out and out.shape else 0,
                    macs=macs, attributes=attrs)
        return
    # matmul, mm, bmm, addmm, baddbmm, addbmm
    a, b = _matmul_operands(call, name)
    a_shape, b_shape = _shape(a), _shape(b)
    inner = a_shape[-1] if a_shape else 0
    macs = (out.numel if out else 0) * inner
    a_static = isinstance(a, _Ref) and a.op is None
    b_static = isinstance(b, _Ref) and b.op is None
    attrs["operand_shapes"] = [list(a_shape) if a_shape else None, list(b_shape) if b_shape else None]
    if b_static and not a_static and b_shape:
        rows, columns = b_shape[-2] if len(b_shape) > 1 else b_shape[0], (b_shape[-1] if len(b_shape) > 1 else 1)
        attrs.update(weight=",".join(b.roots), weight_side="right",
                     weight_batch=math.prod(b_shape[:-2]) if len(b_shape) > 2 else 1)
        em.emit(call, OpKind.STATIC_MVM, name, weight_shape=(rows, columns),
                mvm_count=macs // (rows * columns) if rows * columns else 0, macs=macs,
                attributes=attrs)
    elif a_static and not b_static and a_shape:
        rows, columns = inner, (a_shape[-2] if len(a_shape) > 1 else 1)
        attrs.update(weight=",".join(a.roots), weight_side="left",
                     weight_batch=math.prod(a_shape[:-2]) if len(a_shape) > 2 else 1)
        em.emit(call, OpKind.STATIC_MVM, name, weight_shape=(rows, columns),
                mvm_count=macs // (rows * columns) if rows * columns else 0, macs=macs,
                attributes=attrs)
    else:
        rows_of_left = out.numel // out.shape[-1] if out and len(out.shape) > 0 else 1
        em.emit(call, OpKind.DYNAMIC_MATMUL, name, mvm_count=rows_of_left, macs=macs,
                attributes=attrs)


_EINSUM_LETTERS = re.compile(r"\.\.\.|[A-Za-z]")


def _einsum_sizes(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[list[str]], list[str], dict[str, int]]:
    """Per-operand index labels, output labels and the size of every label."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError("operand count does not match the equation")
    sizes: dict[str, int] = {}
    labels: list[list[str]] = []
    ellipsis_rank = 0
    for term, shape in zip(terms, shapes):
        tokens = _EINSUM_LETTERS.findall(term)
        explicit = len([t for t in tokens if t != "..."])
        rank = len(shape) - explicit
        ellipsis_rank = max(ellipsis_rank, rank if "..." in tokens else 0)
        expanded: list[str] = []
        for token in tokens:
            if token == "...":
                expanded += [f"...{rank - i}" for i in range(rank)]
            else:
                expanded.append(token)
        for label, dim in zip(expanded, shape):
            sizes[label] = max(sizes.get(label, 1), int(dim))
        labels.append(expanded)
    if arrow:
        output: list[str] = []
        for token in _EINSUM_LETTERS.findall(rhs):
            output += [f"...{ellipsis_rank - i}" for i in range(ellipsis_rank)] if token == "..." else [token]
    else:
        flat = [label for group in labels for label in group if not label.startswith("...")]
        output = [f"...{ellipsis_rank - i}" for i in range(ellipsis_rank)]
        output += sorted(label for label in set(flat) if flat.count(label) == 1)
    return labels, output, sizes


def _classify_einsum(call: _Call, em: _Emitter, attrs: dict[str, Any]) -> None:
    equation = call.arg(0, "equation")
    operands = list(call.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    shapes = [_shape(op) for op in operands]
    attrs["equation"] = equation
    static = [op for op in operands if isinstance(op, _Ref) and op.op is None]
    try:
        if not isinstance(equation, str) or any(shape is None for shape in shapes):
            raise ValueError("unknown operand shapes")
        labels, output, sizes = _einsum_sizes(equation, shapes)  # type: ignore[arg-type]
    except ValueError as error:
        attrs["note"] = f"einsum counts unknown: {error}"
        kind = OpKind.STATIC_MVM if static else OpKind.DYNAMIC_MATMUL
        em.emit(call, kind, "einsum", attributes=attrs)
        return
    contracted = [label for label in sizes if label not in output]
    out = _first_tensor(call.output)
    out_numel = out.numel if out else math.prod(sizes[label] for label in output)
    macs = out_numel * math.prod(sizes[label] for label in contracted)
    if len(static) == 1 and len(operands) == 2:
        weight_index = operands.index(static[0])
        weight_labels, other_labels = labels[weight_index], labels[1 - weight_index]
        rows = math.prod(sizes[l] for l in weight_labels if l in contracted)
        columns = math.prod(sizes[l] for l in weight_labels if l in output and l not in other_labels)
        batch = math.prod(sizes[l] for l in weight_labels if l in output and l in other_labels)
        attrs.update(weight=",".join(static[0].roots), weight_batch=batch)
        em.emit(call, OpKind.STATIC_MVM, "einsum", weight_shape=(rows, columns),
                mvm_count=macs // (rows * columns) if rows * columns else 0, macs=macs,
                attributes=attrs)
    else:
        last = sizes[output[-1]] if output else 1
        em.emit(call, OpKind.DYNAMIC_MATMUL, "einsum", mvm_count=out_numel // max(last, 1),
                macs=macs, attributes=attrs)


def _classify(call: _Call, em: _Emitter) -> str:
    """Emit the op(s) of one call; return the name of the op that produces its output."""
    if call.style == "module":
        _classify_module(call, em)
    else:
        _classify_function(call, em)
    return em.ops[-1].name


# ============================================================================ helpers


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


def _normalize_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example inputs as (positional args, keyword args)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        bad = [key for key in example_inputs if not isinstance(key, str)]
        if bad:
            raise CompileError(f"example input dict keys must be argument names (str); got {bad!r}")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise CompileError(
        "example_inputs must be a Tensor, a tuple of forward arguments or a dict of keyword "
        f"arguments; got {type(example_inputs).__name__}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        device = "" if value.device.type == "cpu" else f" on {value.device}"
        return f"{_dtype_name(value.dtype)}{list(value.shape)}{device}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe(item) for item in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_describe(item)}" for key, item in value.items()) + "}"
    return type(value).__name__


def _describe_inputs(args: tuple[Any, ...], kwargs: dict[str, Any],
                     names: list[str] | None = None) -> str:
    names = names or []
    parts = [f"{names[i] if i < len(names) else f'arg{i}'}: {_describe(arg)}"
             for i, arg in enumerate(args)]
    parts += [f"{key}: {_describe(value)}" for key, value in kwargs.items()]
    return ", ".join(parts) or "(none)"


def _forward_arg_names(model: nn.Module) -> list[str]:
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                    p.KEYWORD_ONLY)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _tree_map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_tree_map_tensors(item, fn) for item in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_map_tensors(item, fn) for item in obj)
    if isinstance(obj, dict):
        return {key: _tree_map_tensors(item, fn) for key, item in obj.items()}
    return obj


def _iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _iter_tensors(item)


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
                for store in (module._parameters, module._buffers):
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


# ============================================================================ fx path


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
    for index, (node, name) in enumerate(zip(placeholders, names)):
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
                           lambda *flat: recorder.run(*flat))
            return plan
        except CompileError:
            raise
        except Exception as error:  # noqa: BLE001 - reported by the caller
            failure = _PropagationFailure(error, recorder.current, plan)
    assert failure is not None
    raise failure


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
    module = root.get_submodule(node.target) if style == "module" else None
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
            op = Op(name=em.unique(node.name), kind=OpKind.INPUT, target=str(node.target),
                    op_type="input", output_shape=_first_tensor(value).shape if _first_tensor(value) else None,
                    output_dtype=_first_tensor(value).dtype if _first_tensor(value) else "",
                    source_location=node.meta.get("cimflow_source", ""))
            em.ops.append(op)
            inputs.append(op.name)
            refs[node] = _Ref(op.name, (), value)
            continue
        if node.op == "get_attr":
            refs[node] = _Ref(None, (str(node.target),), value)
            continue
        if node.op == "output":
            activation = [ref.op for ref in _iter_refs(fx.node.map_aggregate(
                node.args, lambda n: refs.get(n) if isinstance(n, fx.Node) else n)) if ref and ref.op]
            op = Op(name=em.unique("output"), kind=OpKind.OUTPUT, target="output",
                    op_type="output", inputs=list(dict.fromkeys(activation)))
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


_META_NOTE = ("the model has parameters on the meta device: shapes were propagated on meta "
              "tensors, so index values in the example inputs were not checked")


def capture(model: nn.Module, example_inputs: Any, *, propagate_on: str = "auto") -> Graph:
    """Capture ``model`` as a typed operator graph for the given example inputs.

    Args:
        model: an ``nn.Module`` (parameters may be on any device, including ``meta``), a
            ``torch.fx.GraphModule`` (used as it is) or a ``torch.export.ExportedProgram``.
        example_inputs: one Tensor, a tuple of positional arguments, or a dict of keyword
            arguments of ``model.forward``. Their shapes set every count in the graph
            (``mvm_count``, ``macs``), so pass one representative inference batch.
        propagate_on: where the one shape-propagation run happens: ``"auto"`` (meta tensors
            if the model holds any, else the model's device), ``"meta"`` (never compute; for
            models whose forward is expensive) or ``"device"``. On meta, index values in the
            example inputs are not range-checked.

    Returns:
        The :class:`Graph`; ``Graph.warnings`` says how it was captured and lists host ops.

    Raises:
        CompileError: the example inputs do not fit the model (names the failing op and the
            input it reads), or the model can neither be traced nor run.
    """
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if not isinstance(model, nn.Module):
        raise CompileError(
            f"capture needs a torch.nn.Module; got {type(model).__name__}. Wrap a plain "
            "function in an nn.Module whose forward calls it."
        )
    if propagate_on not in PROPAGATE_ON:
        raise CompileError(f"propagate_on={propagate_on!r} is not one of {list(PROPAGATE_ON)}")
    args, kwargs = _normalize_inputs(example_inputs)
    if isinstance(model, fx.GraphModule):  # exported/imported graphs: used as they are
        return _capture_graph_module(model, args, kwargs, propagate_on)
    with _inference_mode_flags(model):
        try:
            graph = _CaptureTracer().trace(model)
        except Exception as error:  # noqa: BLE001 - any trace failure means: fall back
            reason = f"torch.fx could not trace the model ({_first_line(error)})"
            warnings.warn(f"{reason}; capturing by module traversal instead",
                          CaptureFallbackWarning, stacklevel=2)
            return _capture_by_traversal(model, args, kwargs, reason)
        try:
            _propagate(model, graph, args, kwargs, False, propagate_on)
        except _PropagationFailure as failure:
            if _eager_error(model, _device_plan(model, args, kwargs)) is not None:
                raise _input_mismatch_error(failure, args, kwargs,
                                            _forward_arg_names(model)) from failure.error
            where = f" at op {failure.node.name!r}" if failure.node is not None else ""
            reason = (f"the torch.fx graph failed to run{where} ({_first_line(failure.error)}) "
                      "although the eager model runs")
            warnings.warn(f"{reason}; capturing by module traversal instead",
                          CaptureFallbackWarning, stacklevel=2)
            return _capture_by_traversal(model, args, kwargs, reason)
        notes = [_META_NOTE] if _has_meta_state(model) else []
        return _build_from_fx(model, graph, "fx", notes)


# ============================================================================ module traversal


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
    ops = _prune_unused_data_movement(em.ops)
    return Graph(ops=ops, inputs=inputs, outputs=[output.name], capture_method="module_traversal",
                 warnings=notes + _host_warning(ops))


# ============================================================================ loading


def load_model_file(path: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """Load a model and its example inputs from a file.

    * ``.py``: a Python file defining ``model()`` (returns an ``nn.Module``) and
      ``example_inputs()`` (returns a Tensor, a tuple or a dict).
    * ``.pt2``: a ``torch.export.save`` archive; returns ``ExportedProgram.module()`` (a
      GraphModule that :func:`capture` uses as it is, ``capture_method="export"``) and the
      example inputs stored in the archive (zeros of the exported shapes if none were stored).
    * ``.onnx``: an ONNX model converted to an equivalent fx GraphModule of torch layers
      (see :mod:`cimflow.compile.onnx_import`), with zero example inputs of its input shapes.

    Raises:
        CompileError: missing file, unknown suffix, missing functions, or an unreadable file.
    """
    file = Path(path)
    if not file.is_file():
        raise CompileError(f"model file {str(file)!r} does not exist or is not a file")
    suffix = file.suffix.lower()
    if suffix == ".py":
        return _load_python_file(file)
    if suffix == ".pt2":
        return _load_exported_program(file)
    if suffix == ".onnx":
        from cimflow.compile.onnx_import import load_onnx

        return load_onnx(file)
    hint = (" (.pt/.pth checkpoints hold weights, not the model's code: write a .py file whose "
            "model() builds the module and loads the checkpoint with weights_only=True)"
            if suffix in (".pt", ".pth", ".bin", ".ckpt") else "")
    raise CompileError(
        f"cannot load {file.name!r}: unknown model file type {suffix or '(none)'!r}; allowed: "
        f"{', '.join(MODEL_FILE_SUFFIXES)}{hint}"
    )


def _load_python_file(file: Path) -> tuple[nn.Module, Any]:
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    module_name = f"cimflow_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise CompileError(f"cannot import {str(file)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - user code
        sys.modules.pop(module_name, None)
        raise CompileError(f"importing {str(file)!r} failed: {_first_line(error)}") from error
    missing = [name for name in ("model", "example_inputs") if not callable(getattr(module, name, None))]
    if missing:
        raise CompileError(
            f"{str(file)!r} must define functions model() -> nn.Module and example_inputs() -> "
            f"Tensor | tuple | dict; missing: {', '.join(f'{name}()' for name in missing)}"
        )
    results = []
    for name in ("model", "example_inputs"):
        try:
            results.append(getattr(module, name)())
        except Exception as error:  # noqa: BLE001 - user code
            raise CompileError(f"{file.name}: {name}() raised {_first_line(error)}") from error
    model, inputs = results
    if not isinstance(model, nn.Module):
        raise CompileError(f"{file.name}: model() must return a torch.nn.Module, got "
                           f"{type(model).__name__}")
    _normalize_inputs(inputs)
    return model, inputs


def _load_exported_program(file: Path) -> tuple[nn.Module, Any]:
    try:
        program = torch.export.load(str(file))
    except Exception as error:  # noqa: BLE001
        raise CompileError(
            f"{file.name!r} is not a readable torch.export archive ({_first_line(error)}); "
            "create one with torch.export.save(torch.export.export(model, inputs), path)"
        ) from error
    module = program.module()
    stored = getattr(program, "example_inputs", None)
    if stored is not None:
        args, kwargs = stored
        if args and kwargs:
            raise CompileError(
                f"{file.name}: the stored example inputs mix positional and keyword arguments; "
                "re-export with positional arguments only"
            )
        inputs: Any = dict(kwargs) if kwargs else tuple(args)
    else:
        inputs = tuple(
            torch.zeros(node.meta["val"].shape, dtype=node.meta["val"].dtype)
            for node in module.graph.nodes
            if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor)
        )
    return module, inputs
