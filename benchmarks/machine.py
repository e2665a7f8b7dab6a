"""The machine line every benchmark prints first: speed ratios depend on the CPU (its matrix
units above all: an int8 read is 5-10x faster than a float32 one where they exist, while
plain PyTorch stays in float32), so each number is printed with what it ran on."""

from __future__ import annotations

import os

import torch

from cimflow.power import cpu_name
from cimflow.sim.fastmm import matrix_units_name


def machine_line() -> str:
    """CPU, cores, the reads' matrix units, torch version, load average."""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"machine: {cpu_name()}, {os.cpu_count()} cores, matrix units {matrix_units_name()}, torch {torch.__version__}, "
            f"load average {load}")
