"""Model files: ``.py``, ``.pt2`` (torch.export) and ``.onnx`` -> a model and its example
inputs.

Untrusted files are data, never code:

* a ``.pt2`` archive is checked by :mod:`cimflow.compile.pt2_archive` before torch reads it
  and refused (:class:`~cimflow.compile.pt2_archive.UnsafeModelFileError`) when loading it
  would unpickle objects, load compiled code or ``exec``/``eval`` strings from the file;
  ``trust=True`` (CLI ``--trust-model-file``) skips that check for a file the user trusts;
* an ``.onnx`` file is protobuf data; external-data files are refused;
* a ``.py`` model file **is** Python code: loading it imports (runs) it, as ``python file.py``
  would. Only name ``.py`` files you would run yourself.

Every reader is bounded: files larger than ``max_bytes`` (:data:`MAX_MODEL_FILE_BYTES` by
default) are refused before they are read, and example inputs made up from shapes hold at
most :data:`~cimflow.compile.example_inputs.MAX_EXAMPLE_ELEMENTS` elements.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cimflow.compile.calls import _first_line
from cimflow.compile.example_inputs import check_example_inputs, zeros_input
from cimflow.compile.export_layers import lift_weight_layers
from cimflow.compile.pt2_archive import check_archive, check_graph_targets
from cimflow.errors import CompileError

#: File types :func:`load_model_file` accepts.
MODEL_FILE_SUFFIXES = (".py", ".pt2", ".onnx")

#: Largest ``.pt2``/``.onnx`` file read (bytes): 2 GiB, protobuf's own limit for ONNX.
MAX_MODEL_FILE_BYTES = 2 * 1024**3


def load_model_file(path: str | os.PathLike[str], *, trust: bool = False,
                    max_bytes: int = MAX_MODEL_FILE_BYTES) -> tuple[nn.Module, Any]:
    """Load a model and its example inputs from a file.

    * ``.py``: a Python file defining ``model()`` (returns an ``nn.Module``) and
      ``example_inputs()`` (returns a Tensor, a tuple or a dict). The file is imported: it
      runs, whatever ``trust`` says.
    * ``.pt2``: a ``torch.export.save`` archive; returns ``ExportedProgram.module()`` with its
      weight layers rebuilt (:func:`~cimflow.compile.export_layers.lift_weight_layers`: a
      GraphModule that :func:`capture` uses as it is, ``capture_method="export"``) and the
      example inputs stored in the archive (zeros of the exported shapes if none were stored).
    * ``.onnx``: an ONNX model converted to an equivalent fx GraphModule of torch layers
      (see :mod:`cimflow.compile.onnx_import`), with zero example inputs of its input shapes.

    Args:
        trust: load a ``.pt2`` even if torch must unpickle objects or run code from it. Give it
            only for files whose author you trust.
        max_bytes: refuse ``.pt2``/``.onnx`` files larger than this.

    Raises:
        UnsafeModelFileError: (a CompileError) the ``.pt2`` cannot be loaded without running
            code from it, and ``trust`` is False.
        CompileError: missing file, unknown suffix, missing functions, an unreadable or too
            large file.
    """
    file = Path(path)
    if not file.is_file():
        raise CompileError(f"model file {str(file)!r} does not exist or is not a file")
    suffix = file.suffix.lower()
    if suffix == ".py":
        return _load_python_file(file)
    if suffix == ".pt2":
        return _load_exported_program(file, trust, max_bytes)
    if suffix == ".onnx":
        from cimflow.compile.onnx_import import load_onnx

        return load_onnx(file, max_bytes=max_bytes)
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
    check_example_inputs(model, inputs)
    return model, inputs


def read_bounded(file: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``file``, refused (before reading) when larger than ``max_bytes``."""
    size = file.stat().st_size
    if size > max_bytes:
        raise CompileError(
            f"{file.name!r} is {size / 2**20:.1f} MiB; cimflow reads {what} files of at most "
            f"{max_bytes / 2**20:.1f} MiB (max_bytes={max_bytes})"
        )
    with file.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CompileError(f"{file.name!r} grew past {max_bytes} bytes while being read")
    return data


def _load_exported_program(file: Path, trust: bool, max_bytes: int) -> tuple[nn.Module, Any]:
    data = read_bounded(file, max_bytes, "torch.export .pt2")
    if not trust:
        check_archive(data, file.name)
    try:
        program = torch.export.load(io.BytesIO(data))
        # check_guards=False: the guard function is compiled (exec) from strings in the file
        module = program.module(check_guards=False)
    except CompileError:
        raise
    except Exception as error:  # noqa: BLE001
        raise CompileError(
            f"{file.name!r} is not a readable torch.export archive ({_first_line(error)}); "
            "create one with torch.export.save(torch.export.export(model, inputs), path)"
        ) from error
    if not trust:
        check_graph_targets(module, file.name)
    module = lift_weight_layers(module)
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
            zeros_input(node.meta["val"].shape, node.meta["val"].dtype,
                        f"{file.name}: input {node.name!r}")
            for node in module.graph.nodes
            if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor)
        )
    check_example_inputs(module, inputs)
    return module, inputs
