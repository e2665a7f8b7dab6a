"""Example inputs of a capture: normalizing them to (args, kwargs), describing them in error
messages, and walking the tensors inside them."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from cimflow.compile.calls import _dtype_name, _first_line
from cimflow.errors import CimflowError, CompileError


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


#: Most elements cimflow makes up for example inputs from a file's declared shapes
#: (2**27: 512 MiB of float32), so a file cannot make it allocate without bound.
MAX_EXAMPLE_ELEMENTS = 2**27


def zeros_input(shape: Any, dtype: torch.dtype, what: str) -> torch.Tensor:
    """Zeros of a declared input shape (symbolic sizes become 2), bounded in size."""
    sizes = []
    for dim in shape:
        try:
            size = int(dim)
        except Exception:  # noqa: BLE001 - a symbolic size without a hint
            size = 2
        if size < 0:
            raise CompileError(f"{what} declares a negative size {size} in shape {list(shape)}")
        sizes.append(size)
    count = math.prod(sizes)
    if count > MAX_EXAMPLE_ELEMENTS:
        raise CompileError(
            f"{what} declares shape {sizes} ({count} elements); cimflow makes up example inputs of "
            f"at most {MAX_EXAMPLE_ELEMENTS} elements: give smaller example inputs"
        )
    return torch.zeros(sizes, dtype=dtype)


def _labelled(args: tuple[Any, ...], kwargs: dict[str, Any],
              names: list[str]) -> Iterator[tuple[str, Any]]:
    for index, value in enumerate(args):
        yield (names[index] if index < len(names) else f"arg{index}"), value
    yield from kwargs.items()


def non_finite(value: Any) -> tuple[torch.Tensor, int] | None:
    """The first floating-point tensor inside ``value`` holding NaN/inf, and how many."""
    for tensor in _iter_tensors(value):
        if (tensor.is_floating_point() or tensor.is_complex()) and not tensor.is_meta:
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                return tensor, bad
    return None


def check_example_inputs(model: nn.Module | None,
                         example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The one check compile, estimate and simulate apply to example inputs.

    Returns them as (positional args, keyword args) after checking their structure (a
    Tensor, a tuple or a dict of argument names) and that every floating-point tensor is
    finite. Shapes and dtypes are checked by running the model: capture does it while
    propagating shapes, :func:`run_example_inputs` for a plain forward.

    Raises:
        CompileError: a wrong structure, or NaN/inf values (naming the input).
    """
    args, kwargs = _normalize_inputs(example_inputs)
    names = _forward_arg_names(model) if model is not None else []
    for label, value in _labelled(args, kwargs, names):
        found = non_finite(value)
        if found is not None:
            tensor, count = found
            raise CompileError(
                f"example input {label!r} ({_describe(tensor)}) holds {count} NaN or infinite "
                "value(s); cimflow needs finite example inputs (replace or mask the missing "
                "values before compiling, estimating or simulating)"
            )
    return args, kwargs


def run_example_inputs(model: nn.Module, example_inputs: Any) -> Any:
    """Check the example inputs (:func:`check_example_inputs`), run ``model`` once on them
    without gradients and return its output, refusing NaN/inf outputs.

    Raises:
        CompileError: the inputs are refused or do not fit the model (names them), or the
            model's output is not finite.
    """
    args, kwargs = check_example_inputs(model, example_inputs)
    try:
        with torch.no_grad():
            output = model(*args, **kwargs)
    except CimflowError:
        raise
    except Exception as error:  # noqa: BLE001 - reported to the user
        raise CompileError(
            f"The example inputs do not fit the model: running it failed with "
            f"{_first_line(error)}. Example inputs given: "
            f"{_describe_inputs(args, kwargs, _forward_arg_names(model))}. Pass example inputs "
            "with the shapes and dtypes model.forward expects (one inference batch)."
        ) from error
    found = non_finite(output)
    if found is not None:
        raise CompileError(
            f"the model's output on the example inputs holds {found[1]} NaN or infinite "
            f"value(s) ({_describe(found[0])}): check the model's weights and inputs"
        )
    return output
