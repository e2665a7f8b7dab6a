"""Unit helpers. Code works in SI units; these convert only at the edges."""

from __future__ import annotations

import math
import re

from cimflow.errors import CimflowError

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "m": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 7 * 86400.0,
    "wk": 7 * 86400.0,
    "mo": 30 * 86400.0,
    "y": 365 * 86400.0,
    "yr": 365 * 86400.0,
}
#: Longest duration accepted: 1,000 years (retention specs of non-volatile memories are ~10 years;
#: drift laws are extrapolated far beyond any measurement already there).
MAX_DURATION_S = 1000 * 365 * 86400.0
_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: float | int | str) -> float:
    """Return a duration in seconds from a number (seconds) or a string like ``"1d"``.

    Units: ns, us, ms, s, min (or m), h, d, w, mo (30 days), y (365 days).
    """
    if isinstance(value, bool):
        raise CimflowError(f"duration must be a number of seconds or a string like '1d', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match or match.group(2).lower() not in _DURATION_UNITS | {"": 1.0}:
            allowed = ", ".join(sorted(set(_DURATION_UNITS)))
            raise CimflowError(f"cannot read duration {value!r}: write a number and a unit ({allowed}), e.g. '1d' or '3600'")
        unit = match.group(2).lower()
        seconds = float(match.group(1)) * (_DURATION_UNITS[unit] if unit else 1.0)
    else:
        raise CimflowError(f"duration must be a number of seconds or a string like '1d', got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise CimflowError(f"duration must be a finite number of seconds >= 0, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise CimflowError(f"duration {value!r} is longer than 1000y ({MAX_DURATION_S:.4g} s), the longest allowed")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form of a duration in seconds (``86400`` -> ``'1d'``)."""
    for unit, size in (("y", 365 * 86400.0), ("mo", 30 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size:
            value = seconds / size
            return f"{value:g}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return f"{seconds:.3g}s"
