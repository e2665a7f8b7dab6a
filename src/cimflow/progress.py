"""Progress of long work, on a terminal and off it.

``with progress_bar(console) as progress:`` gives

- on an interactive terminal (or a notebook): a rich progress bar (description, bar,
  ``completed/total``, elapsed time), removed when the work ends;
- anywhere else (output piped to a file, CI logs): plain one-line messages such as
  ``[2/10] simulating chip instances (4.1 s)`` — one when a task starts, one when it
  finishes, and in between at most one every ``interval_s`` seconds per task, so a
  log shows that the run is alive without being flooded by a long loop.

Both objects answer the same calls, the subset of :class:`rich.progress.Progress` that
cimflow uses, so a caller does not care which one it got::

    with progress_bar(console) as progress:
        task = progress.add_task("simulating chip instances", total=10)
        for ...:
            progress.advance(task)
        progress.update(task, completed=step, total=steps)
        progress.console.print("a note printed above the bar / in the log")

Layer: below everything (no cimflow imports).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

#: Least time between two plain progress lines of one task (the first and last are always printed).
PLAIN_INTERVAL_S = 5.0


class ProgressLike(Protocol):
    """What a job may call on the object :func:`progress_bar` yields."""

    @property
    def console(self) -> Console: ...

    def add_task(self, description: str, *, total: float | None = None) -> TaskID: ...

    def advance(self, task_id: TaskID, advance: float = 1) -> None: ...

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
    ) -> None: ...


@dataclass
class _PlainTask:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = 0.0
    last_line: float = 0.0
    finished: bool = False


class PlainProgress:
    """Progress as plain lines on a console that is not a terminal (see the module docstring)."""

    def __init__(self, console: Console, interval_s: float = PLAIN_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self._console = console
        self._interval_s = interval_s
        self._clock = clock
        self._tasks: dict[int, _PlainTask] = {}

    @property
    def console(self) -> Console:
        """The console the lines go to (print notes through it, as with rich's Progress)."""
        return self._console

    def add_task(self, description: str, total: float | None = None) -> TaskID:
        """Start a task and print its first line (``[0/total] description``)."""
        now = self._clock()
        task_id = TaskID(len(self._tasks))
        self._tasks[task_id] = _PlainTask(description, total, started=now, last_line=now)
        self._line(self._tasks[task_id], now)
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        """Add ``advance`` steps to a task."""
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
    ) -> None:
        """Change a task; print a line when it finishes or when ``interval_s`` has passed since its last line."""
        task = self._tasks[task_id]
        before = task.completed
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = float(completed)
        if advance is not None:
            task.completed += float(advance)
        if task.finished or task.completed == before:
            return
        now = self._clock()
        done = task.total is not None and task.completed >= task.total
        if done or now - task.last_line >= self._interval_s:
            task.finished = done
            self._line(task, now)

    def _line(self, task: _PlainTask, now: float) -> None:
        task.last_line = now
        steps = _count(task.completed) + (f"/{_count(task.total)}" if task.total is not None else "")
        elapsed = f" ({now - task.started:.1f} s)" if task.completed else ""
        self._console.print(f"[{steps}] {task.description}{elapsed}", markup=False, highlight=False, soft_wrap=True)


def _count(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def is_interactive(console: Console) -> bool:
    """Whether a live progress bar can be drawn on ``console`` (a terminal or a notebook)."""
    return bool(console.is_interactive or console.is_jupyter)


@contextmanager
def progress_bar(console: Console | None = None, interval_s: float = PLAIN_INTERVAL_S) -> Iterator[ProgressLike]:
    """A rich progress bar on a terminal, plain progress lines elsewhere (see the module docstring)."""
    console = console if console is not None else Console()
    if is_interactive(console):
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            yield progress
    else:
        yield PlainProgress(console, interval_s=interval_s)


__all__ = ["PLAIN_INTERVAL_S", "PlainProgress", "ProgressLike", "is_interactive", "progress_bar"]
