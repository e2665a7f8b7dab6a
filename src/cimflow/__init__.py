"""cimflow: compile PyTorch models onto compute-in-memory chips, simulate their accuracy
with the chip's non-idealities and estimate their cost, from one hardware description.

The verbs (``cimflow.compile``, ``cimflow.convert``, ...), :class:`Plan` and the subpackages
are imported on first use, so that ``import cimflow.cli`` (``cimflow --help``, a one-line
error) does not pay for torch and the training stack.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from cimflow.errors import CimflowError
from cimflow.version import __version__

#: Each public name imported on first use, and the module it comes from.
_LAZY = {
    **{name: "cimflow.api" for name in ("calibrate", "compensate", "compile", "convert", "drift", "gather_stats", "load_chip",
                                        "partition_by_sensitivity", "program", "simulate")},
    "Plan": "cimflow.compile.plan",
}

__all__ = [
    "CimflowError", "Plan", "__version__", "calibrate", "compensate", "compile", "convert", "drift", "gather_stats", "load_chip",
    "partition_by_sensitivity", "program", "simulate", "train",
]

if TYPE_CHECKING:
    from cimflow import train
    from cimflow.api import (
        calibrate,
        compensate,
        compile,
        convert,
        drift,
        gather_stats,
        load_chip,
        partition_by_sensitivity,
        program,
        simulate,
    )
    from cimflow.compile.plan import Plan


def __getattr__(name: str) -> Any:
    """A public name or a subpackage (``cimflow.train``, ``cimflow.api``, ...), imported now and kept."""
    source = _LAZY.get(name)
    if source is not None:
        value = getattr(importlib.import_module(source), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module: importing the subpackage ``cimflow.compile`` must not replace the verb ``cimflow.compile``
    (the import system sets a subpackage as an attribute of its parent; a verb's name is kept for the verb)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
