"""What the ``cimflow`` verbs share: the bounds of numeric flags, the console, and the checks
and writes every verb makes (output paths up front, one-line range errors, --times).

Imported by :mod:`cimflow.cli` (which re-exports the bounds) and the verb-group modules
(:mod:`cimflow.cli_validate`). Only light imports here: ``cimflow --help`` must stay fast.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cimflow.errors import CimflowError

#: Upper bounds of the CLI's numeric flags (each refused with one line; `cimflow recsys` checks its own).
MAX_INSTANCES = 1000
MAX_TIMES = 64
MAX_BATCH = 65_536
MAX_SEED = 2**31 - 1
MAX_THREADS = 1024
MAX_FOLDS = 100
MAX_HOST_WATTS = 100_000.0

console = Console()
if not console.is_terminal:  # pipes and CI logs: do not squeeze tables into 80 columns
    console = Console(width=160)


def _check_outputs(**paths: Path | None) -> None:
    """Refuse an unwritable output location (``--out``, ``--html``, ``--save``) before any work starts."""
    from cimflow.fileio import check_output_path

    for flag, path in paths.items():
        if path is not None:
            check_output_path(path, f"--{flag}")


def _write_json(path: Path, data: object) -> None:
    from cimflow.fileio import write_json

    write_json(path, data)


def _write_text(path: Path, text: str, what: str) -> None:
    from cimflow.fileio import atomic_write_text

    atomic_write_text(path, text, what)


def _check_range(flag: str, value: float, low: float, high: float) -> None:
    """One line when a numeric flag is outside [low, high] (NaN included)."""
    if not low <= value <= high:
        raise CimflowError(f"{flag} {value!r} is out of range: give a number from {low:g} to {high:g}")


def _check_times(times: str) -> int:
    """Parse --times up front (each at most 1000y, at most MAX_TIMES of them); return the count."""
    from cimflow.units import parse_duration

    labels = [t.strip() for t in times.split(",") if t.strip()]
    if not labels:
        raise CimflowError(f"--times {times!r}: give at least one time after programming, e.g. --times 1s,1d,1y")
    if len(labels) > MAX_TIMES:
        raise CimflowError(f"--times gives {len(labels)} times; at most {MAX_TIMES} are allowed")
    for label in labels:
        parse_duration(label)
    return len(labels)
