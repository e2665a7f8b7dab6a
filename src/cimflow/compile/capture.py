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

Where each part lives (all in ``cimflow.compile``):

* ``operators``: the leaf-module set and the function tables, canonical op names;
* ``calls``: what is recorded about one call (tensor summaries, references, the op emitter);
* ``classify``: one call -> its op(s), with weight shapes and MVM/MAC counts;
* ``example_inputs``: normalizing, checking and describing example inputs;
* ``shapes``: shape propagation on the model's device or on meta tensors;
* ``fx_capture``: the torch.fx path (and exported/imported GraphModules);
* ``traversal``: the module-traversal fallback;
* ``model_files``: loading ``.py``, ``.pt2`` and ``.onnx`` model files.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from cimflow.compile.calls import _first_line
from cimflow.compile.example_inputs import _forward_arg_names, check_example_inputs
from cimflow.compile.export_layers import lift_weight_layers
from cimflow.compile.fx_capture import (
    _build_from_fx,
    _capture_graph_module,
    _CaptureTracer,
    _eager_error,
    _input_mismatch_error,
)
from cimflow.compile.graph import Graph
from cimflow.compile.model_files import MODEL_FILE_SUFFIXES, load_model_file
from cimflow.compile.operators import canonical_op_name, is_leaf_module
from cimflow.compile.shapes import (
    _META_NOTE,
    PROPAGATE_ON,
    _device_plan,
    _has_meta_state,
    _inference_mode_flags,
    _propagate,
    _PropagationFailure,
)
from cimflow.compile.traversal import _capture_by_traversal
from cimflow.errors import CompileError

__all__ = [
    "capture",
    "load_model_file",
    "CaptureFallbackWarning",
    "is_leaf_module",
    "canonical_op_name",
    "MODEL_FILE_SUFFIXES",
]

class CaptureFallbackWarning(UserWarning):
    """torch.fx could not capture the model; cimflow fell back to module traversal."""


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
            input it reads), hold NaN/inf values, or the model can neither be traced nor run.
    """
    if isinstance(model, torch.export.ExportedProgram):  # as load_model_file reads a .pt2
        model = lift_weight_layers(model.module(check_guards=False))
    if not isinstance(model, nn.Module):
        raise CompileError(
            f"capture needs a torch.nn.Module; got {type(model).__name__}. Wrap a plain "
            "function in an nn.Module whose forward calls it."
        )
    if propagate_on not in PROPAGATE_ON:
        raise CompileError(f"propagate_on={propagate_on!r} is not one of {list(PROPAGATE_ON)}")
    args, kwargs = check_example_inputs(model, example_inputs)
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
