"""Example inputs of a capture: normalizing them to (args, kwargs), describing them in error
messages, and walking the tensors inside them."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

import torch
from torch import nn

from cimflow.compile.calls import _dtype_name
from cimflow.errors import CompileError


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
