"""Reading an ``.onnx`` file: size-bounded, parsed by the onnx package, tensors kept in external
data files refused (nothing outside the file is read); the graph is then converted by
:func:`cimflow.compile.onnx_import.onnx_to_module`. :func:`load_onnx` is re-exported from
:mod:`cimflow.compile.onnx_import`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from cimflow.errors import CompileError


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - onnx is in the dev extras
        raise CompileError(
            "reading ONNX files needs the onnx package: pip install 'cimflow[onnx]'"
        ) from error
    return onnx


def load_onnx(path: str | os.PathLike[str], max_bytes: int | None = None
              ) -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
    """Read an ONNX file and convert it; returns the module and zero example inputs.

    Example inputs have the graph inputs' shapes (symbolic dimensions set to 1) and dtypes,
    and at most :data:`~cimflow.compile.example_inputs.MAX_EXAMPLE_ELEMENTS` elements each.
    The file is read whole (at most ``max_bytes``, default
    :data:`~cimflow.compile.model_files.MAX_MODEL_FILE_BYTES`); tensors stored in external
    data files are refused, so nothing outside the file is read.

    Raises:
        CompileError: the file is too large, is not an ONNX model, keeps tensors in external
            files, or uses unsupported operators (all are listed in one message).
    """
    from cimflow.compile.model_files import MAX_MODEL_FILE_BYTES, read_bounded
    from cimflow.compile.onnx_import import onnx_to_module

    onnx = import_onnx()
    file = Path(path)
    data = read_bounded(file, MAX_MODEL_FILE_BYTES if max_bytes is None else max_bytes, "ONNX")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf raises assorted errors
        raise CompileError(
            f"{file.name!r} is not an ONNX model (it could not be parsed: "
            f"{type(error).__name__}). Give a .onnx file written by torch.onnx.export or onnx.save"
        ) from error
    if model.ir_version <= 0 or not model.HasField("graph") or (
        len(model.graph.node) == 0 and len(model.graph.output) == 0
    ):
        raise CompileError(
            f"{file.name!r} is not an ONNX model (no IR version or no graph). Give a .onnx file "
            "written by torch.onnx.export or onnx.save"
        )
    external = [tensor.name for tensor in _graph_tensors(model.graph)
                if tensor.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise CompileError(
            f"{file.name!r} keeps tensor(s) {', '.join(repr(n) for n in external[:5])} in external "
            "data files; cimflow reads self-contained .onnx files only (save with "
            "onnx.save(model, path, save_as_external_data=False))"
        )
    return onnx_to_module(model, source=file.name)


def _graph_tensors(graph: Any) -> list[Any]:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            found.extend(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found.extend(_graph_tensors(sub))
    return found
