"""Fit the polynomials of the fused read's normal generator (src/cimflow/sim/read_kernels.py).

The generator is Box-Muller: a pair's angle ``t = (pi/2) (k + f)`` takes its quadrant ``k``
from two bits and ``f`` in [0, 1) from thirty, so only ``sin x`` and ``cos x`` on
``x in [0, pi/2]`` are needed: ``sin x = x S(x^2)``, ``cos x = C(x^2)``, fitted here by least
squares on Chebyshev nodes (float64) and checked evaluated in float32 as the kernel evaluates
them (Horner). The kernel's constants are this script's output.

Run: .venv/bin/python scripts/fit_normal_kernels.py
"""

from __future__ import annotations

import numpy as np


def horner32(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The polynomial (highest coefficient first) at ``x``, evaluated in float32 as the kernel does."""
    acc = np.full(x.shape, np.float32(coef[0]), np.float32)
    for c in coef[1:]:
        acc = acc * x.astype(np.float32) + np.float32(c)
    return acc


def _nodes(lo: float, hi: float, n: int = 4000) -> np.ndarray:
    k = np.arange(n)
    return lo + (hi - lo) * 0.5 * (1 - np.cos(np.pi * (k + 0.5) / n))


def angle(degree_sin: int = 4, degree_cos: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    """``S`` and ``C`` (highest coefficient first) and the largest float32 error of either."""
    x = _nodes(0.0, np.pi / 2)
    s = np.polyfit(x * x, np.where(x > 0, np.sin(x) / np.where(x > 0, x, 1), 1.0), degree_sin)
    c = np.polyfit(x * x, np.cos(x), degree_cos)
    dense = np.linspace(0, np.pi / 2, 400001).astype(np.float32)
    sq = dense * dense
    err = max(np.abs(dense * horner32(s, sq) - np.sin(dense.astype(np.float64))).max(),
              np.abs(horner32(c, sq) - np.cos(dense.astype(np.float64))).max())
    return s, c, float(err)


if __name__ == "__main__":
    s, c, err = angle()
    print(f"# max |error| in float32: {err:.3g}")
    print("sin: x * S(x^2), S =", ", ".join(f"{v:.9g}" for v in s))
    print("cos: C(x^2), C =", ", ".join(f"{v:.9g}" for v in c))
