"""The one exception family of cimflow.

Every user-facing failure raises a :class:`CimflowError` (or a subclass) whose message
names what was wrong and what is allowed. The CLI prints the message on one line and
exits with status 2.
"""

from __future__ import annotations


class CimflowError(Exception):
    """Base class of every error cimflow raises on purpose."""


class ChipSpecError(CimflowError):
    """A chip description (YAML file, preset or object) is invalid."""


class MappingError(CimflowError):
    """A model or layer cannot be mapped onto the chip as asked."""


class CompileError(CimflowError):
    """A model cannot be captured, partitioned or placed."""


class SimulationError(CimflowError):
    """A simulation was asked for something it cannot do (wrong state, bad input)."""


class DataError(CimflowError):
    """A dataset or input file is missing, malformed or out of range."""
