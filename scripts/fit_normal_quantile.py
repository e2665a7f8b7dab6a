"""Fit the polynomials of the fused read's normal generator (src/cimflow/sim/read_kernels.py).

The generator maps a 32-bit uniform ``u`` to the standard normal quantile ``Phi^-1(u)``:
for ``|q| <= 0.425`` (``q = u - 1/2``) as ``q * P(q^2)``, beyond as
``sign(q) * Q(sqrt(-log(min(u, 1 - u))))`` - the split of Wichura's AS 241 (Appl. Stat. 37,
1988), with polynomials fitted here (least squares on Chebyshev nodes, float64) against
SciPy's ``ndtri``. Run it to print the coefficients and the largest errors; the kernel's
constants are its output. Needs scipy (a dependency of scikit-learn, installed with cimflow).

Run: .venv/bin/python scripts/fit_normal_quantile.py
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

CENTRAL = 0.425
S_LO = float(np.sqrt(-np.log(0.5 - CENTRAL)))  # tail: r = min(u, 1-u) <= 0.075
S_HI = float(np.sqrt(-np.log(0.5 / 2.0**32)))  # the smallest r a 32-bit uniform gives


def horner32(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The polynomial (highest coefficient first) at ``x``, evaluated in float32 as the kernel does."""
    acc = np.full(x.shape, np.float32(coef[0]), np.float32)
    for c in coef[1:]:
        acc = acc * x.astype(np.float32) + np.float32(c)
    return acc


def _nodes(lo: float, hi: float, n: int = 4000) -> np.ndarray:
    k = np.arange(n)
    return lo + (hi - lo) * 0.5 * (1 - np.cos(np.pi * (k + 0.5) / n))


def central(degree: int) -> tuple[np.ndarray, float]:
    """``P`` in ``t = q^2 / 0.425^2 * 2 - 1`` (on [-1, 1]): ``Phi^-1(1/2 + q) = q P(t)``."""
    r = _nodes(0.0, CENTRAL**2)
    q = np.sqrt(r)
    ratio = np.where(q > 0, ndtri(0.5 + q) / np.where(q > 0, q, 1), np.sqrt(2 * np.pi))
    coef = np.polyfit(r / CENTRAL**2 * 2 - 1, ratio, degree)
    dense = np.linspace(-CENTRAL, CENTRAL, 400001).astype(np.float32)
    t = (dense * dense * np.float32(2 / CENTRAL**2) - np.float32(1))
    err = np.abs(dense * horner32(coef, t) - ndtri(0.5 + dense.astype(np.float64))).max()
    return coef, float(err)


def tail(degree: int) -> tuple[np.ndarray, float]:
    """``Q`` in ``t = (s - S_LO) / (S_HI - S_LO) * 2 - 1``: ``|Phi^-1(r)| = Q(t)``, ``s = sqrt(-log r)``."""
    s = _nodes(S_LO, S_HI)
    coef = np.polyfit((s - S_LO) / (S_HI - S_LO) * 2 - 1, -ndtri(np.exp(-s * s)), degree)
    dense = np.linspace(S_LO, S_HI, 400001)
    t = ((dense - S_LO) * (2 / (S_HI - S_LO)) - 1).astype(np.float32)
    err = np.abs(horner32(coef, t) + ndtri(np.exp(-dense * dense))).max()
    return coef, float(err)


if __name__ == "__main__":
    for name, fit, degree in (("CENTRAL", central, 12), ("TAIL", tail, 14)):
        coef, err = fit(degree)
        print(f"# {name.lower()}: degree {degree}, max |error| in float32 {err:.3g}")
        print(f"_{name} = (" + ", ".join(f"{c:.9g}" for c in coef) + ")")
    print(f"S_LO {S_LO!r} S_HI {S_HI!r}")
