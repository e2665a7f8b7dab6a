"""The 32-bit counter-based cell draws (cimflow.physics.hashing.cell_draws): reproducible,
standard normal / uniform marginals, independent across rows, columns, draws and streams."""

from __future__ import annotations

import math

import torch

from cimflow.physics.hashing import cell_draws, cell_normal, cell_uniform, mix32


def test_same_stream_same_values_other_stream_other_values():
    rows = torch.tensor([0, 5, 123456789, 5])
    a = cell_draws(rows, 16, 7, "t", "pos")
    b = cell_draws(rows, 16, 7, "t", "pos")
    c = cell_draws(rows, 16, 8, "t", "pos")
    d = cell_draws(rows, 16, 7, "t", "neg")
    for x, y, z, w in zip(a, b, c, d, strict=True):
        assert torch.equal(x, y) and x.dtype == torch.float32 and x.shape == (4, 16)
        assert not torch.equal(x, z) and not torch.equal(x, w)
        assert torch.equal(x[1], x[3])  # a row is the same wherever it is read
    assert torch.equal(cell_normal(rows, 16, 7, "t", "pos"), a[0])
    assert torch.equal(cell_draws(rows[1:2], 16, 7, "t", "pos")[1], a[1][1:2])  # independent of the batch


def test_rows_beyond_32_bits_differ():
    rows = torch.tensor([3, 3 + (1 << 32), 3 + (1 << 40)])
    z = cell_uniform(rows, 8, 0, "big")
    assert not torch.equal(z[0], z[1]) and not torch.equal(z[0], z[2])


def test_marginals_and_independence():
    n_rows, cols = 40_000, 32
    z1, z2, u = cell_draws(torch.arange(n_rows), cols, 3, "stats")
    n = z1.numel()
    for z in (z1, z2):
        assert abs(float(z.mean())) < 6 / math.sqrt(n)
        assert abs(float(z.var()) - 1) < 6 * math.sqrt(2 / n)
        assert abs(float(z.pow(4).mean()) - 3) < 6 * math.sqrt(96 / n)  # Gaussian kurtosis
        assert float(z.abs().max()) < 6.0  # 24-bit uniforms bound |z| below 5.9
        tail = float((z.abs() > 3).float().mean())  # 0.0027 for a normal
        assert abs(tail - 0.0027) < 6 * math.sqrt(0.0027 / n)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / n)
    for x, y in ((z1, z2), (z1, u - 0.5), (z1[:, 1:], z1[:, :-1]), (z1[1:], z1[:-1])):
        corr = float((x * y).mean() / (x.std() * y.std()))
        assert abs(corr) < 6 / math.sqrt(x.numel()), corr


def test_mix32_is_a_bijection_on_a_sample():
    x = torch.randint(-(1 << 31), (1 << 31) - 1, (200_000,), dtype=torch.int32, generator=torch.Generator().manual_seed(0)).unique()
    assert mix32(x).unique().numel() == x.numel()
