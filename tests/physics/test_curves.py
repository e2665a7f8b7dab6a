"""evaluate_curve (in place, one ``where`` per later piece) equals the curve evaluated element by element."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.chip.devices import CurvePiece, StateCurve
from cimflow.physics.devices import evaluate_curve

coefficient = st.floats(-2.0, 2.0, allow_nan=False)


@st.composite
def pieces(draw: st.DrawFn) -> StateCurve:
    count = draw(st.integers(1, 4))
    starts = [0.0] + sorted(draw(st.lists(st.floats(0.01, 0.99), min_size=count - 1, max_size=count - 1, unique=True)))
    out = []
    for start in starts:
        form = draw(st.sampled_from(["polynomial", "log", "power"]))
        coeffs = draw(st.lists(coefficient, min_size=1, max_size=5)) if form == "polynomial" else [draw(coefficient),
                                                                                                  draw(st.floats(-1.5, 1.5))]
        bounds = sorted(draw(st.lists(st.floats(-3.0, 3.0), min_size=2, max_size=2)))
        clip = draw(st.sampled_from(["none", "low", "high", "both"]))
        out.append(CurvePiece(x_from=start, form=form, coefficients=coeffs,
                              y_min=bounds[0] if clip in ("low", "both") else None,
                              y_max=bounds[1] if clip in ("high", "both") else None))
    return StateCurve(pieces=out)


def direct(curve: StateCurve, x: float) -> float:
    """The piece holding x (the last whose x_from <= x; the first below 0), its formula, its clip."""
    piece = curve.pieces[0]
    for candidate in curve.pieces[1:]:
        if x >= candidate.x_from:
            piece = candidate
    c = piece.coefficients
    if piece.form == "polynomial":
        y = sum(v * x**k for k, v in enumerate(c))
    elif piece.form == "log":
        y = c[0] + c[1] * math.log(max(x, 1e-7))
    else:
        y = c[0] * max(x, 1e-3) ** c[1]
    if piece.y_min is not None:
        y = max(y, piece.y_min)
    if piece.y_max is not None:
        y = min(y, piece.y_max)
    return y


@settings(max_examples=60, deadline=None)
@given(curve=pieces(), xs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40))
def test_fast_curve_equals_direct_evaluation(curve: StateCurve, xs: list[float]) -> None:
    # the piece boundaries themselves belong to the later piece
    xs = xs + [p.x_from for p in curve.pieces]
    x = torch.tensor(xs, dtype=torch.float64)
    got = evaluate_curve(curve, x)
    want = torch.tensor([direct(curve, v) for v in xs], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (curve, xs, got, want)


def test_float32_curve_matches_float64_and_leaves_x_alone() -> None:
    curve = StateCurve.model_validate({"pieces": [
        {"form": "log", "coefficients": [-0.0069, -0.0117], "y_min": 0.015, "y_max": 0.04},
        {"x_from": 0.16, "coefficients": [0.0123, 0.0211, -0.0280, 0.0069]}]})
    x = torch.linspace(0.0, 1.0, 1001)
    before = x.clone()
    y = evaluate_curve(curve, x)
    assert torch.equal(x, before)  # evaluated in place on fresh tensors, never on x
    assert torch.allclose(y.double(), evaluate_curve(curve, x.double()), rtol=1e-5, atol=1e-8)


def test_curves_at_targets_gather_on_the_level_grid_equal_the_direct_evaluation() -> None:
    from cimflow.chip.devices import PCMDevice
    from cimflow.physics.devices import curves_at_targets

    dev = PCMDevice(technology="pcm", g_min=1e-7, g_max=25e-6, levels=64)
    span = dev.g_max - dev.g_min
    gen = torch.Generator().manual_seed(0)
    on_grid = dev.g_min + span * torch.randint(0, 64, (40, 50), generator=gen).float() / 63  # as encode_weights programs
    off_grid = on_grid.clone()
    off_grid[3, 7] += 0.3 * span / 63  # one target between levels: evaluated directly
    with_nan = on_grid.clone()
    with_nan[5, 5] = float("nan")  # a NaN weight's target: NaN there, no error (evaluated directly)
    curves = (dev.drift_nu_mean, dev.drift_nu_std, dev.noise_q_s)
    for target in (on_grid, off_grid, on_grid.double(), with_nan):
        got = curves_at_targets(dev, target, *curves)
        for curve, values in zip(curves, got, strict=True):
            want = evaluate_curve(curve, (target / dev.g_max).abs())
            assert values.shape == target.shape and values.dtype == target.dtype
            assert torch.allclose(values, want, rtol=1e-6, atol=0, equal_nan=True), curve


def test_curves_at_targets_evaluate_once_per_level(monkeypatch) -> None:
    from cimflow.chip.devices import PCMDevice
    from cimflow.physics.devices import base

    dev = PCMDevice(technology="pcm", g_min=0.0, g_max=25e-6, levels=256)
    sizes: list[int] = []
    direct_eval = base.evaluate_curve
    monkeypatch.setattr(base, "evaluate_curve", lambda curve, x: sizes.append(x.numel()) or direct_eval(curve, x))
    target = dev.g_max * torch.randint(0, 256, (2, 300, 40)).float() / 255
    base.curves_at_targets(dev, target, dev.drift_nu_mean)
    assert sizes == [256]  # the level grid, not the 24,000 cells
    base.curves_at_targets(dev, target + 1e-9, dev.drift_nu_mean)
    assert sizes[-1] == target.numel()  # off the grid: every cell
