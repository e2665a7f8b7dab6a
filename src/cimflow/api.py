"""The verbs users call, re-exported from ``cimflow``.

Wherever a verb takes a chip it accepts a preset name, a YAML path or a
:class:`cimflow.chip.Chip`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from cimflow.chip import Chip, resolve_chip
from cimflow.compile.pipeline import compile_model
from cimflow.compile.plan import Plan
from cimflow.sim import calibrate_model, compensate_model, convert_model, drift_model, program_model
from cimflow.sim.sensitivity import SensitivityResult, partition_by_sensitivity
from cimflow.sim.stats import gather_stats
from cimflow.units import parse_duration


def load_chip(chip: Chip | str | Path) -> Chip:
    """A validated chip from a preset name, a YAML path or a Chip."""
    return resolve_chip(chip)


def compile(  # noqa: A001 - the verb users know
    model: nn.Module, chip: Chip | str | Path, example_inputs: Any = None, rules: Mapping[Any, Any] | None = None,
    mode: str = "pipelined", replicate: bool = True,
) -> Plan:
    """Compile ``model`` onto ``chip``: capture (torch.fx, module traversal as a fallback),
    partition across arrays, the digital unit and the host, tile, replicate, place and
    schedule. ``rules`` map names, globs, ``"re:<regex>"``, ``"type:<Type>"`` or module
    types to ``"digital"``, ``"host"``, ``"digital_unit"`` or an array kind of the chip."""
    return compile_model(model, chip, example_inputs, rules=rules, mode=mode, replicate=replicate)


def simulate(plan: Plan, model: nn.Module, seed: int = 0, t: float | str | None = None, allow_host: bool = False) -> nn.Module:
    """Execute ``plan`` on ``model``: a programmed CIM model (chip instance ``seed``, aged to
    ``t`` after programming when given) whose layers run where the plan puts them."""
    converted, _ = convert_model(model, plan.chip, plan=plan, allow_host=allow_host)
    program_model(converted, seed)
    if t is not None:
        drift_model(converted, parse_duration(t))
    return converted


def convert(
    model: nn.Module, chip: Chip | str | Path, overrides: Mapping[Any, Any] | None = None,
    allow_host: bool = False, inplace: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` whose Linear/Conv1d/Conv2d layers run on ``chip``'s arrays:
    compile (placement only, ``overrides`` as rules) and execute the plan.

    ``overrides`` maps layer names, globs, ``"re:<regex>"`` or module types to
    ``"digital"``, ``"host"``, an array kind of the chip, or another chip. The conversion
    report (mapped and host layers) is at ``model._cimflow_report``, the plan at
    ``model._cimflow_plan``. Program the result with :func:`program` before running it.
    """
    converted, _ = convert_model(model, chip, overrides=overrides, allow_host=allow_host, inplace=inplace)
    return converted


def program(model: nn.Module, seed: int = 0, verify_iterations: int | None = None, verify_tolerance: float | None = None) -> nn.Module:
    """Program chip instance ``seed``: programming noise, stuck cells and drift exponents
    are sampled once and cached; read noise is drawn on every forward.

    ``verify_iterations=N`` turns on program-and-verify (kept for later programmings; 0 turns
    it off): cells further than ``verify_tolerance`` (a fraction of g_max; None: the cell's
    own programming sigma) from their target are programmed again, up to N times. Every
    layer counts its write pulses (``cimflow.sim.write_pulses(model)``)."""
    return program_model(model, seed, verify_iterations=verify_iterations, verify_tolerance=verify_tolerance)


def drift(model: nn.Module, t: float | str) -> nn.Module:
    """Age a programmed model to ``t`` after programming: seconds, or a string like ``"1d"``."""
    return drift_model(model, parse_duration(t))


def calibrate(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Calibrate input ranges and ADC ranges (expected or percentile) on a few batches of data."""
    return calibrate_model(model, batches)


def compensate(model: nn.Module, mode: str | None = "global") -> nn.Module:
    """Drift compensation of a programmed model: ``"global"`` (one factor per layer),
    ``"per_column"`` (one per output column) or None (off). A reference read of each
    layer's real conductances at programming time and after drift gives the factors, which
    every later :func:`drift` re-reads."""
    return compensate_model(model, mode)


__all__ = [
    "SensitivityResult", "calibrate", "compensate", "compile", "convert", "drift", "gather_stats", "load_chip",
    "partition_by_sensitivity", "program", "simulate",
]
