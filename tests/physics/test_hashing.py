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


def _plain_mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 written out with whole-tensor passes (the definition the blocked kernels keep)."""
    def shr(v: torch.Tensor, k: int) -> torch.Tensor:
        return (v >> k) & ((1 << (32 - k)) - 1)
    x = x ^ shr(x, 16)
    x = x * 0x7FEB352D
    x = x ^ shr(x, 15)
    x = x * (0x846CA68B - (1 << 32))
    return x ^ shr(x, 16)


def test_blocked_in_place_kernels_equal_the_plain_definition(monkeypatch):
    """Cells hashed in cache-sized blocks, in place, give the values of whole-tensor passes,
    for blocks that cut rows anywhere (a block of 1000 cells over rows of 48)."""
    import cimflow.physics.hashing as hashing

    rows = torch.tensor([0, 7, 7, 123456789, (1 << 33) + 1] * 11)
    x = torch.randint(-(1 << 31), (1 << 31) - 1, (5000,), dtype=torch.int32)
    whole = (hashing.cell_draws(rows, 48, 4, "t", "pos"), hashing.cell_normal(rows, 48, 4, "t"),
             hashing.cell_uniform(rows, 48, 4, "t"), hashing.mix32(x))
    monkeypatch.setattr(hashing, "BLOCK_CELLS", 1000)
    blocked = (hashing.cell_draws(rows, 48, 4, "t", "pos"), hashing.cell_normal(rows, 48, 4, "t"),
               hashing.cell_uniform(rows, 48, 4, "t"), hashing.mix32(x))
    for a, b in zip(whole[0], blocked[0], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(whole[1:], blocked[1:], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(blocked[3], _plain_mix32(x))
    # the uniform: (top 24 bits of the cell's hash + 1/2) / 2^24; the normal: Box-Muller on it
    # and the uniform of the next hash, mix32(h ^ golden)
    h1 = hashing.cell_hashes(rows, 48, 4, "t")
    u1 = (((h1 >> 8) & 0xFFFFFF).float() + 0.5) / (1 << 24)
    assert torch.equal(blocked[2], u1)
    h2 = _plain_mix32(h1 ^ (0x9E3779B9 - (1 << 32)))
    u2 = (((h2 >> 8) & 0xFFFFFF).float() + 0.5) / (1 << 24)
    assert torch.allclose(blocked[1], torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2), atol=1e-6)
