"""Operator tables of capture: which torch.nn modules stay leaves, which functions are
vector work, data movement or matrix products, and canonical short names for any target
(function, method name or ATen overload)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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
    return f"{module}.{qualname}" if module else str(qualname)
