"""Weight clipping (cimflow.train.clip): the compiled kernel (train/clip_kernels.py) clips a
matrix layer as the torch form does, per column and per layer, counts what it clipped, tells
the weight's version counter, and leaves NaN rows alone."""

from __future__ import annotations

import pytest
import torch
from cimtest import chip_with
from torch import nn

import cimflow
from cimflow.sim import fused_read
from cimflow.train import clip, clip_weights

pytestmark = pytest.mark.skipif(not fused_read.available(), reason="numba is not importable")


def _layer(weights: torch.Tensor, scaling: str) -> nn.Module:
    chip = chip_with("pcm-hermes-like", **{"arrays.pcm.weight_scaling": scaling})
    cim = cimflow.convert(nn.Sequential(nn.Linear(weights.shape[1], weights.shape[0])), chip)
    with torch.no_grad():
        cim[0].weight.copy_(weights)
    return cim


@pytest.mark.parametrize("scaling", ["per_column", "per_layer"])
@pytest.mark.parametrize("count", [True, False])
def test_the_kernel_clips_as_the_torch_form(monkeypatch, scaling, count):
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(48, 300, generator=gen) * torch.linspace(0.2, 4.0, 300)  # outliers in the last inputs
    weights[5] += 3.0  # a column whose mean is far from 0
    weights[7] = 0.0  # an all-zero column: the floor bound
    runs = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setenv("CIMFLOW_FUSED_READ", "0")
        cim = _layer(weights, scaling)
        assert (clip._compiled(cim[0].weight, cim[0].weight) is not None) == compiled  # the path under test
        version = cim[0].weight._version
        n = clip_weights(cim, 2.5, count=count)
        runs.append((n, cim[0].weight.detach().clone(), cim[0].weight._version > version))
    (n_k, w_k, bumped_k), (n_t, w_t, bumped_t) = runs
    assert n_k == n_t and n_k > (100 if count else 0)
    assert bumped_k and bumped_t
    assert torch.allclose(w_k, w_t, rtol=1e-5, atol=0)
    assert not torch.equal(w_k, weights)
    dim = 1 if scaling == "per_column" else None
    sd = weights.std(dim=dim, unbiased=False, keepdim=dim is not None) if dim else weights.std(unbiased=False)
    assert bool((w_k.abs() <= 2.5 * sd * (1 + 1e-5) + 1e-12).all())


def test_nothing_beyond_leaves_the_weight_and_its_version(monkeypatch):
    weights = torch.linspace(-1.0, 1.0, 64).repeat(8, 1)  # |w| <= 1.73 sigma
    cim = _layer(weights, "per_column")
    version = cim[0].weight._version
    assert clip_weights(cim, 2.0) == 0
    assert clip_weights(cim, 2.0, count=False) == 0  # no layer had weights beyond its bounds
    assert torch.equal(cim[0].weight.detach(), weights) and cim[0].weight._version == version


def test_a_nan_column_is_left_alone_and_the_others_clipped():
    weights = torch.randn(4, 200, generator=torch.Generator().manual_seed(2))
    weights[:, 0] = 50.0
    weights[2, 3] = float("nan")
    cim = _layer(weights, "per_column")
    assert clip_weights(cim, 2.0) == 3  # the outlier of every finite column
    out = cim[0].weight.detach()
    assert torch.equal(out[2].nan_to_num(), weights[2].nan_to_num())
    assert bool((out[[0, 1, 3], 0] < 50.0).all())
