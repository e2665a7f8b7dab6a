"""The one place cimflow writes files: atomic writes, strict JSON, output checks.

- :func:`atomic_write_bytes` / :func:`atomic_write_text`: a unique temporary file in the
  destination's directory (never a fixed ``<name>.tmp`` a stranger could plant a symlink
  at), flushed and fsync'ed, then renamed over the destination. A crash leaves either the
  old file or the new one, never half of one.
- :func:`write_json`: strict JSON (non-finite floats become ``null``; no ``NaN`` tokens).
- :func:`check_output_path`: refuse an output location *before* the work that would fill
  it starts (missing or unwritable directory, a directory where a file is wanted).

Layer: below everything (no cimflow imports but the errors).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from cimflow.errors import CimflowError


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def check_output_path(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Check that a file can be written at ``path`` (its directory exists and is writable,
    and ``path`` is not a directory); returns it as a Path. Call before the work starts."""
    target = Path(path)
    if target.is_dir():
        raise CimflowError(f"{what} {target} is a directory: give a file name (e.g. {target / 'result.json'})")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise CimflowError(f"{what} {target}: the directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CimflowError(f"{what} {target}: the directory {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise CimflowError(f"{what} {target} exists and is not writable")
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, what: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically (unique temp file beside it, fsync, rename)."""
    target = Path(path)
    if target.is_dir():
        raise CimflowError(f"cannot write {what} to {target}: it is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as error:
        raise CimflowError(f"cannot write {what} to {target}: {error.strerror or error}") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise CimflowError(f"cannot write {what} to {target}: {error.strerror or error}") from error
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str = "output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def dumps_json(data: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``data``: non-finite floats as null, never a NaN token."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False, default=_default)


def write_json(path: str | os.PathLike[str], data: Any, what: str = "JSON output") -> Path:
    """Write ``data`` as strict JSON to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(data) + "\n", what)


def _default(value: Any) -> Any:
    # numpy / torch scalars and paths: plain numbers and strings
    if hasattr(value, "item"):
        item = value.item()
        return item if not isinstance(item, float) or math.isfinite(item) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


__all__ = ["atomic_write_bytes", "atomic_write_text", "check_output_path", "dumps_json", "json_safe", "write_json"]
