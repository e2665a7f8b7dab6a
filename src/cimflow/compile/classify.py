"""Classification: one recorded call -> the op(s) it becomes (static MVM, dynamic matmul,
vector, data movement or host), with its weight shape, MVM and MAC counts."""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

from cimflow.compile.calls import (
    _Call,
    _Emitter,
    _first_tensor,
    _iter_refs,
    _plain_arg,
    _Ref,
    _tensor_infos,
    _TensorInfo,
)
from cimflow.compile.graph import OpKind
from cimflow.compile.operators import (
    _DATA_FUNCS,
    _DATA_MODULES,
    _MATRIX_FUNCS,
    _MODULE_ATTRIBUTES,
    _STATIC_MODULES,
    _VECTOR_FUNCS,
    _VECTOR_MODULES,
    _nn_classes,
    _target_label,
    canonical_op_name,
)


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
    if hasattr(module, "bias") and not isinstance(module.bias, bool):
        attrs["bias"] = module.bias is not None
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
        weight = call.arg(1, "weight")
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
    for term, shape in zip(terms, shapes, strict=False):  # user input: a short operand list is not an error here
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
        for label, dim in zip(expanded, shape, strict=False):
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
        rows = math.prod(sizes[x] for x in weight_labels if x in contracted)
        columns = math.prod(sizes[x] for x in weight_labels if x in output and x not in other_labels)
        batch = math.prod(sizes[x] for x in weight_labels if x in output and x in other_labels)
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
