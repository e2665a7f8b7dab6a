"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from cimflow.chip import Chip, chip_from_dict, load_preset


def chip_with(base: str = "ideal", **changes: Any) -> Chip:
    """A preset with some fields replaced; keys are dotted paths (``arrays.analog.adc.bits``)."""
    data = load_preset(base).model_dump(mode="json", exclude_none=True)
    for path, value in changes.items():
        node = data
        keys = path.split("__") if "__" in path else path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return chip_from_dict(data, origin=f"{base}+changes")


def random_lookups(per_bag: list[int], seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random lookups of ``per_bag[b]`` rows (of ``rows``) in each bag b: the per-bag
    counts (tensor), each lookup's bag, each lookup's row."""
    counts = torch.tensor(per_bag)
    bags = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    idx = torch.randint(0, rows, (bags.numel(),), generator=torch.Generator().manual_seed(seed))
    return counts, bags, idx


def run_cli(args: list[str]) -> tuple[int, str]:
    """``cimflow ARGS`` in-process through the real entry point (a CimflowError exits 2 there):
    (exit status, stdout + stderr)."""
    from typer.testing import CliRunner

    from cimflow.cli import main

    runner = CliRunner()
    with runner.isolation() as streams:
        try:
            main(args)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        output = b"".join(s.getvalue() for s in streams[:2] if s is not None).decode(errors="replace")
    return code, output


def alternating_read(in_features: int, weight: float, vectors: int, **changes: Any) -> tuple[Any, torch.Tensor, float, float]:
    """A programmed one-layer model on the ideal chip with 5 % read noise and a 14-bit ADC
    (``changes`` on top), every weight ``weight`` and 50 outputs, read with ``vectors`` inputs of
    alternating +1 / -1: each output's read noise is a Gaussian of known variance around the
    ideal sum (far inside the ADC's range, its step far below the noise). Returns the model,
    the inputs, the ideal output and the read noise's variance in output units (every read
    group's cells of a column: r^2 sum (G+^2 + G-^2) / d^2 times the weight scale squared)."""
    from torch import nn

    import cimflow

    chip = chip_with("ideal", **{"arrays.analog.device.read_noise": 0.05, "arrays.analog.adc.bits": 14, **changes})
    lin = nn.Linear(in_features, 50, bias=False)
    with torch.no_grad():
        lin.weight.fill_(weight)
    cim = cimflow.program(cimflow.convert(nn.Sequential(lin), chip), seed=0)
    eng = cim[0].engine
    x = torch.ones(vectors, in_features)
    x[:, ::2] = -1.0
    ideal = float(x[0] @ lin.weight.detach()[0])
    var = float(eng.read_var[0].sum(dim=(0, 1))[0]) * float(eng.w_scale[0]) ** 2
    return cim, x, ideal, var
