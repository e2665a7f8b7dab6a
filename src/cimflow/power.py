"""The machine a measurement ran on: Linux RAPL package energy counters and the CPU's name,
shared by every baseline that times code on this machine (the RecSys CPU baseline, the cost
model's measured host mode, the benchmarks)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path


class RaplMeter:
    """Reads the package energy counters of Linux RAPL (joules, wrap-aware)."""

    _PACKAGE = re.compile(r"intel-rapl:\d+$")

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/powercap") -> None:
        self.root = Path(root)
        try:
            self.zones = sorted(p for p in self.root.glob("intel-rapl:*") if self._PACKAGE.fullmatch(p.name))
        except OSError:
            self.zones = []

    def _read_uj(self, zone: Path, name: str) -> int | None:
        try:
            return int((zone / name).read_text().strip())
        except (OSError, ValueError):
            return None

    def read(self) -> list[int] | None:
        """Energy counters of every package (µJ), or None if any is unreadable / none exist."""
        if not self.zones:
            return None
        values = [self._read_uj(zone, "energy_uj") for zone in self.zones]
        if any(v is None for v in values):
            return None
        return [int(v) for v in values]  # type: ignore[arg-type]

    @property
    def available(self) -> bool:
        """True when every package counter can be read."""
        return self.read() is not None

    def joules_between(self, before: Sequence[int], after: Sequence[int]) -> float:
        """Energy (J) between two :meth:`read` results, correcting counter wrap-around."""
        total_uj = 0
        for zone, start, end in zip(self.zones, before, after, strict=True):
            delta = end - start
            if delta < 0:
                wrap = self._read_uj(zone, "max_energy_range_uj")
                delta += wrap if wrap else 2**32
            total_uj += delta
        return total_uj * 1e-6


def cpu_name(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The CPU's model name (``model name`` in ``cpuinfo``; elsewhere what :mod:`platform` says)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
