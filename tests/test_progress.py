"""Progress on a terminal (rich bar) and off it (plain lines): cimflow.progress."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from cimflow.progress import PlainProgress, is_interactive, progress_bar

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LINE = re.compile(r"^\[(\d+)(?:/(\d+))?\] (.+?)(?: \((\d+\.\d) s\))?$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line.strip()]


def test_piped_console_gets_plain_lines_with_counts_and_no_control_codes() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    assert not is_interactive(console)
    with progress_bar(console, interval_s=0) as progress:
        assert isinstance(progress, PlainProgress)
        task = progress.add_task("simulating chip instances", total=4)
        for _ in range(4):
            progress.advance(task)
        progress.console.print("a note")
    lines = _lines(buffer)
    assert lines[0] == "[0/4] simulating chip instances" and lines[5] == "a note" and len(lines) == 6
    matches = [LINE.match(line) for line in lines[:5]]
    assert all(matches)
    assert [m.group(1, 2, 3) for m in matches] == [(str(i), "4", "simulating chip instances") for i in range(5)]
    assert "\x1b" not in buffer.getvalue() and "\r" not in buffer.getvalue()


def test_plain_lines_are_throttled_but_first_and_last_always_appear() -> None:
    buffer = io.StringIO()
    clock = FakeClock()
    progress = PlainProgress(Console(file=buffer, width=200), interval_s=5.0, clock=clock)
    task = progress.add_task("HWA fine-tuning", total=1000)
    for step in range(1, 1001):
        clock.now += 0.01  # 10 s over the whole loop -> two interval lines
        progress.update(task, completed=step, total=1000)
    matches = [LINE.match(line) for line in _lines(buffer)]
    assert all(matches)
    counts = [int(m.group(1)) for m in matches]
    assert counts[0] == 0 and counts[-1] == 1000
    # start, one line ~5 s in, and the end (10 s in, which is also the next interval)
    assert len(counts) == 3 and counts[1] in (500, 501)
    assert matches[-1].group(4) == "10.0"
    progress.advance(task)  # past the end: no more lines
    assert len(_lines(buffer)) == 3


def test_plain_task_without_total_and_with_a_changed_total() -> None:
    buffer = io.StringIO()
    progress = PlainProgress(Console(file=buffer, width=200), interval_s=0)
    task = progress.add_task("training", total=None)
    progress.advance(task, 2)
    progress.update(task, completed=3, total=3, description="training (done)")
    assert _lines(buffer) == ["[0] training", "[2] training (0.0 s)", "[3/3] training (done) (0.0 s)"]
    with pytest.raises(ValueError):
        PlainProgress(Console(file=buffer), interval_s=-1)


def test_terminal_gets_a_rich_bar_and_no_plain_lines() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    assert is_interactive(console)
    with progress_bar(console) as progress:
        assert isinstance(progress, Progress)
        task = progress.add_task("simulating chip instances", total=2)
        progress.advance(task)
        progress.update(task, completed=2, total=2)
    text = buffer.getvalue()
    assert "\x1b[" in text  # cursor control: a live bar
    assert not any(LINE.match(line.strip()) for line in text.splitlines())


def test_cli_with_piped_output_prints_progress_lines(tmp_path: Path) -> None:
    # the point of this test is a real pipe, so it runs the CLI in a subprocess
    result = subprocess.run(
        [sys.executable, "-m", "cimflow.cli", "simulate", str(EXAMPLES / "mlp_model.py"), "--instances", "2", "--times", "1s"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[0/2] simulating chip instances" in lines
    assert any(re.fullmatch(r"\[2/2\] simulating chip instances \(\d+\.\d s\)", line) for line in lines), result.stdout
