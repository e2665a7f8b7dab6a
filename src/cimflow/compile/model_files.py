"""Model files: ``.py``, ``.pt2`` (torch.export) and ``.onnx`` -> a model and its example
inputs."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cimflow.compile.calls import _first_line
from cimflow.compile.example_inputs import _normalize_inputs
from cimflow.errors import CompileError


#: File types :func:`load_model_file` accepts.
MODEL_FILE_SUFFIXES = (".py", ".pt2", ".onnx")


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
