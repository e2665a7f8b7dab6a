"""The fused CPU read (cimflow.sim.fused_read, sim/read_kernels.py): its counter-based
normals are standard normal (the transform's accuracy, moments, tails, Kolmogorov-Smirnov),
reproducible per (key, draw) and independent across draws; the fused read equals the
unfused integer read without noise, its training forward is the inference read for the same
seed, and its gradients equal the general path's, clipping included."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from cimtest import alternating_read, chip_with
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cimflow
from cimflow.sim import cim_layers, draw_pool, fastmm, fused_read

pytestmark = pytest.mark.skipif(not fused_read.available(), reason="numba is not importable")


def test_box_muller_is_the_float64_transform_to_float32_precision():
    from cimflow.sim import read_kernels

    gen = np.random.default_rng(0)
    a = np.concatenate([gen.integers(0, 2**32, 200_000), np.arange(0, 2000), 2**32 - 1 - np.arange(0, 2000)]).astype(np.uint32)
    b = gen.integers(0, 2**32, a.shape[0]).astype(np.uint32)
    b[:8] = [0, 2**30 - 1, 2**30, 2**31 - 1, 2**31, 3 * 2**30 - 1, 3 * 2**30, 2**32 - 1]  # every quadrant's edges
    even, odd = np.empty(a.shape[0], np.float32), np.empty(a.shape[0], np.float32)
    read_kernels.box_muller(a, b, even, odd)
    r = np.sqrt(-2 * np.log((a.astype(np.float64) + 0.5) / 2.0**32))
    t = np.pi / 2 * ((b >> 30).astype(np.float64) + ((b & (2**30 - 1)).astype(np.float64) + 0.5) / 2.0**30)
    err = np.maximum(np.abs(even - r * np.cos(t)), np.abs(odd - r * np.sin(t)))
    assert float((err / np.maximum(r, 1.0)).max()) < 1e-6  # a few float32 ulps
    assert float(r.max()) > 6.5  # the grid reaches the tails (a 32-bit uniform: |z| up to 6.8)


def test_normals_are_standard_normal():
    n = 2_000_000
    z = fused_read.normals(20261202, 0, (n,)).double()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)
    for k in (1.0, 2.0, 3.0, 4.0):  # two-sided tail frequencies, binomial standard error
        p = 2 * float(torch.special.ndtr(torch.tensor(-k, dtype=torch.float64)))
        assert abs(float((z.abs() > k).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n), k
    ks = float((torch.special.ndtr(z.sort().values) - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max())
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov at the 0.1 % level


def test_normals_are_reproducible_and_independent_across_draws_and_keys():
    a = fused_read.normals(7, 3, (300, 100))
    assert torch.equal(a, fused_read.normals(7, 3, (300, 100)))
    assert torch.equal(a.view(-1)[:5000], fused_read.normals(7, 3, (5000,)))  # element e is the stream's element e
    n = a.numel()
    for other in (fused_read.normals(7, 4, (300, 100)), fused_read.normals(8, 3, (300, 100))):
        r = float(torch.corrcoef(torch.stack([a.view(-1), other.view(-1)]))[0, 1])
        assert abs(r) < 5 / math.sqrt(n)
    lag = float(torch.corrcoef(torch.stack([a.view(-1)[:-1], a.view(-1)[1:]]))[0, 1])
    assert abs(lag) < 5 / math.sqrt(n)


def test_uniforms_are_the_streams_bits_and_uniform_on_the_24_bit_grid():
    from numba import njit

    from cimflow.sim import read_kernels

    n = 1_000_001  # odd: the last element's lone half of a pair
    u = fused_read.uniforms(11, 2, (n,)).double()
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert torch.equal(u * 2**24, (u * 2**24).round())  # torch.rand's grid
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    ks = float((u.sort().values - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max())
    assert ks < 1.95 / math.sqrt(n)
    # element e is the table kernel's _uniform of element e (the bits the lone reads draw)
    one = njit(lambda dk, e: read_kernels._uniform(dk, e))
    dk = np.uint64(read_kernels._draw_key(np.uint64(11), np.uint64(2)))
    for e in (0, 1, 2, 77, 500_000, n - 1):
        assert float(u[e]) == float(one(dk, np.uint64(e))), e
    assert torch.equal(fused_read.uniforms(11, 2, (n,)).double(), u)
    other = fused_read.uniforms(11, 3, (n,)).double()
    assert abs(float(torch.corrcoef(torch.stack([u, other]))[0, 1])) < 5 / math.sqrt(n)


def test_pool_draws_are_the_generators_counter_stream_and_keep_their_law(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    z = draw_pool.pool_normals(400_000, gen, torch.device("cpu"))
    u = draw_pool.pool_uniforms(400_000, gen, torch.device("cpu"))
    gen.set_state(state)
    assert torch.equal(draw_pool.pool_normals(400_000, gen, torch.device("cpu")), z)  # reproducible from the generator
    assert torch.equal(draw_pool.pool_uniforms(400_000, gen, torch.device("cpu")), u)
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n) and abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    again = draw_pool.pool_normals(400_000, gen, torch.device("cpu"))  # the next draw: a new key
    assert abs(float(torch.corrcoef(torch.stack([z, again]))[0, 1])) < 5 / math.sqrt(n)
    # float64, or the compiled kernels turned off: torch's own generator
    gen.set_state(state)
    want = torch.randn(1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(draw_pool.pool_normals(1000, gen, torch.device("cpu"), torch.float64), want)
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "0")
    gen.set_state(state)
    want = torch.rand(1000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(draw_pool.pool_uniforms(1000, gen, torch.device("cpu")), want)


def test_the_readout_adds_the_streams_normals():
    """With zero partial sums and unit variances, a read's output before the ADC's rounding is
    the stream's normals: the readout draws what :func:`fused_read.normals` gives."""
    from cimflow.sim import read_kernels

    n, g, m = 30, 2, 50
    prod = np.zeros((g, n, 2, m), np.int32)
    var16 = torch.ones(g, n, m).to(torch.bfloat16).view(torch.int16).numpy()
    coef = np.full((g, m), 2.0**20, np.float32)  # codes of 2^-20: rounding moves a value by at most 2^-21
    lsb = np.full((g, m), 2.0**-20, np.float32)
    y, mask = np.empty((n, m), np.float32), np.empty((g, n, m), np.bool_)
    clipped = read_kernels.int_readout(prod, var16, np.empty(n * g * m, np.float32), np.uint64(11), np.uint64(5), False, coef,
                                       2.0**30, lsb, np.ones(n, np.float32), y, mask, 0, n)
    z = fused_read.normals(11, 5, (g, n, m))
    assert not clipped  # (the mask is then not written: the caller reads it only when a partial sum clipped)
    assert float((torch.from_numpy(y) - z.sum(0)).abs().max()) < 1e-5


@pytest.mark.parametrize("given", [False, True], ids=["stream", "given"])
def test_the_readouts_mask_marks_the_partial_sums_inside_the_adc_range(given):
    """Where a partial sum clips, the readout's ADC mask is ``|v| <= steps`` at every (group,
    vector, column), with the normals it added (the stream's drawn again, or those given)."""
    from cimflow.sim import read_kernels

    n, g, m = 70, 3, 90  # more than one chunk of rows (read_kernels._CHUNK // m = 45)
    prod = np.zeros((g, n, 2, m), np.int32)
    var16 = torch.ones(g, n, m).to(torch.bfloat16).view(torch.int16).numpy()
    coef = np.full((g, m), 2.0**20, np.float32)
    lsb = np.full((g, m), 2.0**-20, np.float32)
    z = fused_read.normals(11, 5, (g, n, m))
    y, mask = np.empty((n, m), np.float32), np.zeros((g, n, m), np.bool_)
    scratch = z.view(-1).numpy().copy() if given else np.empty(n * g * m, np.float32)
    clipped = read_kernels.int_readout(prod, var16, scratch, np.uint64(11), np.uint64(5), given, coef, 2.0**20, lsb,
                                       np.ones(n, np.float32), y, mask, 0, n)
    expected = (z * 2.0**20).abs() <= 2.0**20  # |z| <= 1: about 68 % inside
    assert clipped
    assert torch.equal(torch.from_numpy(mask), expected)
    assert 0.6 < float(expected.float().mean()) < 0.76


@pytest.mark.parametrize("given", [False, True], ids=["stream", "given"])
def test_the_readout_of_a_block_of_vectors_is_that_part_of_the_whole_readout(given):
    """int_readout of vectors n_base .. n_base + B of a read of N (a block's products and
    variances) writes those vectors' outputs and ADC mask with the draws of the read in one
    block: element (g N + n) M + j, whatever the blocks."""
    from cimflow.sim import read_kernels

    n, g, m = 70, 3, 40
    gen = np.random.default_rng(4)
    prod = gen.integers(-2000, 2000, (g, n, 2, m)).astype(np.int32)
    var16 = torch.from_numpy(gen.uniform(0.5, 4.0, (g, n, m)).astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
    coef = gen.uniform(0.01, 0.05, (g, m)).astype(np.float32)  # some partial sums clip at 15 steps
    lsb = gen.uniform(0.5, 1.5, (g, m)).astype(np.float32)
    scale = gen.uniform(0.5, 2.0, n).astype(np.float32)
    given_z = fused_read.normals(3, 9, (g, n, m)).view(-1).numpy().copy()

    def readout(blocks):
        y, mask = np.full((n, m), np.nan, np.float32), np.zeros((g, n, m), np.bool_)
        clipped = False
        for n0, n1 in blocks:
            scratch = given_z if given else np.empty((n1 - n0) * m + 1, np.float32)
            clipped |= read_kernels.int_readout(np.ascontiguousarray(prod[:, n0:n1]), np.ascontiguousarray(var16[:, n0:n1]),
                                                scratch, np.uint64(3), np.uint64(9), given, coef, 15.0, lsb, scale, y, mask, n0, n)
        return y, mask, clipped

    y, mask, clipped = readout([(0, n)])
    assert clipped and 0.05 < float(mask.mean()) < 0.95
    for blocks in ([(0, 16), (16, 32), (32, 70)], [(0, 1), (1, 69), (69, 70)]):
        y_b, mask_b, clipped_b = readout(blocks)
        assert np.array_equal(y_b, y) and np.array_equal(mask_b, mask) and clipped_b == clipped


def test_the_threaded_readout_is_the_serial_one(monkeypatch):
    """int_readout_threads (chunks of vectors among numba's threads) writes the serial
    kernel's bits, drawn or given normals, mask included; for_threads takes it only at
    several torch threads and only on a threading layer that takes concurrent launches."""
    import numba

    from cimflow.sim import read_kernels

    n, g, m = 300, 2, 40  # 3 vectors a chunk: 100 chunks
    gen = np.random.default_rng(6)
    prod = gen.integers(-2000, 2000, (g, n, 2, m)).astype(np.int32)
    var16 = torch.from_numpy(gen.uniform(0.5, 4.0, (g, n, m)).astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
    coef = gen.uniform(0.01, 0.05, (g, m)).astype(np.float32)
    lsb = gen.uniform(0.5, 1.5, (g, m)).astype(np.float32)
    scale = gen.uniform(0.5, 2.0, n).astype(np.float32)
    given_z = fused_read.normals(3, 9, (g, n, m)).view(-1).numpy().copy()
    serial, threaded = read_kernels.int_readout, read_kernels.int_readout_threads
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    for given_normals in (False, True):
        outs = []
        for kernel in (serial, threaded):
            y, mask = np.full((n, m), np.nan, np.float32), np.zeros((g, n, m), np.bool_)
            z = given_z if given_normals else np.empty(n * m + 1, np.float32)
            clipped = kernel(prod, var16, z, np.uint64(3), np.uint64(9), given_normals, coef, 15.0, lsb, scale, y, mask, 0, n)
            outs.append((y, mask, clipped))
        (y1, mask1, clipped1), (y2, mask2, clipped2) = outs
        assert clipped1 and clipped2 and np.array_equal(y1, y2) and np.array_equal(mask1, mask2)
    assert read_kernels.for_threads(serial, threaded, 1) is serial
    safe = read_kernels.for_threads(serial, threaded, 2) is threaded  # (OpenMP or TBB here)
    assert safe == (numba.threading_layer() in ("omp", "tbb"))
    if safe and numba.config.NUMBA_NUM_THREADS > 1:
        assert numba.get_num_threads() == 2
    monkeypatch.setattr(read_kernels, "_THREADS_SAFE", None)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    assert read_kernels.for_threads(serial, threaded, 2) is serial


def _inference_and_training(cim, x):
    """An inference read of ``x`` and a training one: the outputs, then the gradients of the
    input and both layers' weights (of the squared outputs' sum)."""
    with torch.no_grad():
        inference = cim(x)
    xg = x.clone().requires_grad_(True)
    y = cim(xg)
    y.pow(2).sum().backward()
    return [inference, y.detach(), xg.grad, cim[0].weight.grad, cim[2].weight.grad]


def _readout_args(n=40, g=2, m=30):
    gen = np.random.default_rng(7)
    prod = gen.integers(-2000, 2000, (g, n, 2, m)).astype(np.int32)
    var16 = torch.from_numpy(gen.uniform(0.5, 4.0, (g, n, m)).astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
    coef, lsb = np.full((g, m), 0.02, np.float32), np.ones((g, m), np.float32)
    y, mask = np.zeros((n, m), np.float32), np.zeros((0, 1, 1), np.bool_)
    return (prod, var16, np.empty(0, np.float32), np.uint64(3), np.uint64(9), False, coef, 15.0, lsb, np.ones(n, np.float32), y,
            mask, 0, n)


def _readout_in_child(conn, args):  # (what the forked child runs: no torch operation, whose own threads hang there)
    from cimflow.sim import read_kernels

    kernel = read_kernels.for_threads(read_kernels.int_readout, read_kernels.int_readout_threads, 2)
    kernel(*args)
    conn.send((kernel is read_kernels.int_readout, args[10]))
    conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_after_threaded_reads_reads_on_one_thread(monkeypatch):
    """A process forked after numba's threading layer started (a multiprocessing pool on
    Linux) takes the serial kernel: numba ends a child that uses GNU OpenMP's threads after
    a fork ("Terminating: fork() called from a process already using GNU OpenMP"). The
    child's readout is the parent's threaded one, bit for bit."""
    import multiprocessing

    import numba

    from cimflow.sim import read_kernels

    threaded = read_kernels.for_threads(read_kernels.int_readout, read_kernels.int_readout_threads, 2)  # (starts the layer)
    args = _readout_args()
    child_args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)
    threaded(*args)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_readout_in_child, args=(child, child_args))
    proc.start()
    answered = parent.poll(60)
    proc.join(10)
    if proc.exitcode is None:
        proc.kill()
    assert answered and proc.exitcode == 0
    serial, y = parent.recv()
    assert serial and np.array_equal(y, args[10])
    if numba.threading_layer() in ("omp", "tbb"):
        assert threaded is read_kernels.int_readout_threads
    monkeypatch.setattr(read_kernels, "_THREADS_SAFE", True)
    read_kernels._after_fork()  # (what a forked child runs)
    assert read_kernels.for_threads(read_kernels.int_readout, read_kernels.int_readout_threads, 2) is read_kernels.int_readout


def test_a_read_at_two_threads_is_the_read_at_one(monkeypatch):
    """The same bits whatever torch's thread count (the readout's chunks shared among numba's
    threads at two), for inference and for a training read's outputs and gradients."""
    threads = torch.get_num_threads()
    outs = []
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            cim = _cim("pcm-hermes-like", monkeypatch, True, seed=4)
            outs.append(_inference_and_training(cim, torch.randn(300, 600, generator=torch.Generator().manual_seed(8))))
    finally:
        torch.set_num_threads(threads)
    (inference1, y1, *grads1), (inference2, y2, *grads2) = outs
    assert torch.equal(inference1, inference2) and torch.equal(y1, y2)
    for a, b in zip(grads1, grads2, strict=True):  # (torch's own float matmuls behind them: their rounding may follow the threads)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 100_000), groups=st.integers(1, 64), out=st.integers(1, 8192))
def test_blocks_of_vectors_cover_the_read_within_the_block_bytes(n, groups, out):
    size = fused_read.block_vectors(n, groups, out)
    per_vector = groups * out * 10
    assert 1 <= size <= n
    if n * per_vector <= fused_read.BLOCK_BYTES:
        assert size == n  # one block
    else:
        assert size % 16 == 0 or size == n
        assert size * per_vector <= fused_read.BLOCK_BYTES + 16 * per_vector  # within a row tile of the budget
        blocks = -(-n // size)
        assert (blocks - 1) * size < n  # no empty block


def test_a_read_in_blocks_of_vectors_is_the_read_in_one_block(monkeypatch):
    """A large read runs block by block (fused_read.block_vectors): outputs, ADC masks and
    gradients are the bits of the read in one block, for inference, for training (the
    stream's and training's pooled normals) and where partial sums clip."""

    def run(block_bytes, pooled, seed=5):
        monkeypatch.setattr(fused_read, "BLOCK_BYTES", block_bytes)
        cim = _cim("pcm-hermes-like", monkeypatch, True, seed=seed)
        cim[0].engine.adc_range = cim[0].engine.adc_range * 0.2  # some partial sums clip
        if pooled:
            for k, (_, layer) in enumerate(cim_layers(cim)):
                draw_pool.use_pooled_read_noise(layer.engine, k)
        outs = _inference_and_training(cim, torch.randn(200, 600, generator=torch.Generator().manual_seed(2)))
        return outs, len(cim[0].engine.__dict__["_fused_plan"].blocks)

    for pooled in (False, True):
        whole, one = run(1 << 60, pooled)
        blocked, several = run(64 * 1024, pooled)  # 600 inputs on 256-row arrays, 64 columns: 48-vector blocks
        assert one == 1 and several == 5
        for a, b in zip(whole, blocked, strict=True):
            assert torch.equal(a, b)


def _cim(chip, monkeypatch, fused: bool, seed: int = 0):
    monkeypatch.setattr(fastmm, "matrix_units_available", lambda: True)
    monkeypatch.setattr(fastmm, "BF16_MIN_MACS", 0)
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "1" if fused else "0")
    torch.manual_seed(0)
    return cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(600, 64), nn.ReLU(), nn.Linear(64, 10)), chip), seed=seed)


QUIET_PCM = chip_with("pcm-hermes-like", **{"arrays.pcm.device.programming_noise": {"coefficients": [0.0]},
                                            "arrays.pcm.device.read_noise": 0.0})


def test_fused_read_equals_the_unfused_integer_read_without_noise(monkeypatch):
    x = torch.randn(128, 600)
    with torch.no_grad():
        fused = _cim(QUIET_PCM, monkeypatch, True)(x)
        unfused = _cim(QUIET_PCM, monkeypatch, False)(x)
    # the same codes; the products are summed in another order (float rounding only)
    assert torch.allclose(fused, unfused, rtol=1e-5, atol=1e-6 * float(unfused.abs().max()))


def test_a_new_instance_keeps_the_read_scratch_and_reads_as_a_new_layer(monkeypatch):
    """Programming a layer again (a new instance, as training does every step) reuses its
    read's scratch and gives the bits a layer programmed once with that seed gives."""
    x = torch.randn(64, 600)
    with torch.no_grad():
        layer = _cim("pcm-hermes-like", monkeypatch, True, seed=1)
        layer(x)
        scratch = {name: lay.engine.__dict__["_fused_plan"].prod for name, lay in cim_layers(layer)}
        cimflow.program(layer, seed=2)
        again = layer(x)
        assert all(lay.engine.__dict__["_fused_plan"].prod is scratch[name] for name, lay in cim_layers(layer))
        assert torch.equal(again, _cim("pcm-hermes-like", monkeypatch, True, seed=2)(x))


@pytest.mark.parametrize("n", [1, fused_read.SMALL_BATCH, fused_read.SMALL_BATCH + 1, 64])
def test_a_few_vectors_take_the_matmuls_products_and_variances(monkeypatch, n):
    """A read of at most SMALL_BATCH vectors takes its products and read-noise variances from
    one kernel (read_kernels.few_products): the int8 matmuls' exact products, and the
    bfloat16 matmuls' variances up to the order of their sums (one bfloat16 rounding step).
    Larger reads take the matmuls themselves."""
    x = torch.randn(n, 600, generator=torch.Generator().manual_seed(3))
    x[0, :40] = 0.0  # zero codes (skipped by the kernel)
    calls = []
    real_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda *a, **k: calls.append(1) or real_mm(*a, **k))
    with torch.no_grad():
        cim = _cim("pcm-hermes-like", monkeypatch, True)
        cim(x)
    plan = cim[0].engine.__dict__["_fused_plan"]
    assert plan.few == (n <= fused_read.SMALL_BATCH) and bool(calls) == (n > fused_read.SMALL_BATCH)  # 64 columns: narrow
    groups = plan.ops.groups
    assert len(groups) > 1  # 600 inputs: several read groups, the last one short
    for j, (a, b, w, cell) in enumerate(groups):
        codes = plan.codes[:, a:b].contiguous()
        assert torch.equal(plan.prod[j].view(n, -1), real_mm(codes, w))
        want = torch.mm(plan.squares[:, a:b], cell).float()
        got = plan.var[j].float()
        assert bool((want > 0).all())
        assert torch.allclose(got, want, rtol=2**-7, atol=0), (j, float(((got - want) / want).abs().max()))


def test_few_vectors_take_the_kernel_where_it_is_the_cheaper():
    assert fused_read.few_vectors(1, 8192) and fused_read.few_vectors(2, 4096)  # one or two vectors: always
    assert fused_read.few_vectors(4, 256) and fused_read.few_vectors(3, 300)
    assert not fused_read.few_vectors(4, 257) and not fused_read.few_vectors(3, 400)  # the matmuls, for wider layers
    assert not fused_read.few_vectors(fused_read.SMALL_BATCH + 1, 8)


@pytest.mark.parametrize("adc_scale", [1.0, 0.05], ids=["in-range", "adc-clips"])
def test_fused_training_read_gradients_equal_the_unfused_ones(monkeypatch, adc_scale):
    """The fused read's forward and its ADC mask feed the same closed-form gradients as the
    unfused integer read (no noise: both compute the same codes)."""
    grads = []
    for fused in (True, False):
        cim = _cim(QUIET_PCM, monkeypatch, fused)
        for i in (0, 2):
            cim[i].engine.adc_range = cim[i].engine.adc_range * adc_scale
        x = (torch.rand(32, 600, generator=torch.Generator().manual_seed(1)) - 0.3).requires_grad_(True)
        y = cim(x)
        y.pow(2).sum().backward()
        grads.append([y.detach(), x.grad, cim[0].weight.grad, cim[2].weight.grad])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_fused_training_forward_is_the_inference_read_and_pooled_noise_keeps_its_moments(monkeypatch):
    cim = _cim("pcm-hermes-like", monkeypatch, True, seed=3)
    x = torch.rand(64, 600)
    with torch.no_grad():
        expected = cim(x)
    assert "_fused_operands" in cim[0].engine.__dict__
    cimflow.program(cim, seed=3)  # the same instance, its read-noise stream restarted
    assert torch.equal(cim(x.clone().requires_grad_(True)).detach(), expected)
    # training's pooled normals ("given") through the fused read: the noise keeps its variance
    cim, xs, ideal, var = alternating_read(600, 0.02, 2000, **{"arrays.analog.input_encoding.bits": 8})
    eng = cim_layers(cim)[0][1].engine
    draw_pool.use_pooled_read_noise(eng, 7)
    y = cim(xs.requires_grad_(True)).detach()
    assert "_fused_operands" in eng.__dict__
    assert abs(float(y.mean()) - ideal) < 5 * math.sqrt(var / y.numel())
    assert abs(float(y.var()) / var - 1) < 5 * math.sqrt(2 / y.numel())


@pytest.mark.parametrize("codes_dtype", [np.int8, np.float32])
def test_dac_kernel_is_the_torch_quantization(codes_dtype):
    """The input DAC's kernel: per vector the range max(|x|, eps), the codes rint(x (1 / range
    steps)) in float32, their squares as bfloat16 bits rounded as torch rounds them (the
    read-noise variance's input) and the codes again as float32."""
    from cimflow.sim import read_kernels

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 301, generator=gen) * torch.exp(4 * torch.rand(6, 1, generator=gen))
    x[1] = 0.0  # an all-zero vector: the range is eps
    x[2, :5] = torch.tensor([1e-30, -3.0, 2.5, -0.2, 3.0])  # ties and both signs
    steps, eps = 127.0, 1e-12
    codes = np.empty(x.shape, codes_dtype)
    scale = np.empty(x.shape[0], np.float32)
    squares = np.empty(x.shape, np.int16)
    floats = np.empty(x.shape, np.float32)
    read_kernels.quantize_rows(x.numpy(), steps, eps, codes, scale, squares, floats)
    want_scale = x.abs().amax(dim=1).clamp_min(eps)
    want = torch.round(x * ((1.0 / want_scale) * steps).unsqueeze(1))
    assert np.array_equal(scale, want_scale.numpy())
    assert np.array_equal(codes.astype(np.float32), want.numpy()) and np.array_equal(floats, want.numpy())
    assert torch.equal(torch.from_numpy(squares).view(torch.bfloat16), want.square().to(torch.bfloat16))
    assert float(want.abs().max()) == steps and bool((want[1] == 0).all())


@pytest.mark.parametrize("shape", [(1, 7, 3), (3, 64, 33)])
def test_weight_planes_kernel_is_the_torch_split(shape):
    """The operands' kernel gives fastmm.int8_planes' planes and scales exactly, and the cell
    variances over the scale squared rounded to bfloat16 as torch rounds them."""
    from cimflow.sim import read_kernels

    gen = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=gen) * torch.exp(3 * torch.rand(shape, generator=gen))
    w[0, :, 0] = 0.0  # an all-zero column
    var = torch.rand(shape, generator=gen) * 1e-3
    both = np.empty((shape[0], shape[1], 2, shape[2]), np.int8)
    scale = np.empty((shape[0], shape[2]), np.float32)
    cell = np.empty(shape, np.int16)
    read_kernels.weight_planes(w.numpy(), var.numpy(), both, cell, scale, shape[0] * shape[1])
    planes = fastmm.int8_planes(w)
    assert np.array_equal(both[:, :, 0], planes.hi.numpy()) and np.array_equal(both[:, :, 1], planes.lo.numpy())
    assert np.array_equal(scale, planes.scale.view(shape[0], shape[2]).numpy())
    expect = (var / planes.scale.square()).to(torch.bfloat16)
    assert torch.equal(torch.from_numpy(cell).view(torch.bfloat16), expect)
    assert bool(torch.isfinite(expect.float()).all())  # the all-zero column too (its scale is bounded below)


@pytest.mark.parametrize("gained", [False, True])
def test_read_scales_kernel_is_the_torch_arithmetic(gained):
    """coef and lsb from read_kernels.read_scales are the torch form's float32 operations, bit for bit."""
    from cimflow.sim import read_kernels

    gen = torch.Generator().manual_seed(3)
    g, out, steps_in, steps_adc = 4, 33, 127.0, 127.0
    adc = torch.rand(g, out, generator=gen) * 50 + 1e-3
    planes_scale = torch.rand(g, out, generator=gen) * 0.01
    gain = torch.rand(out, generator=gen) + 0.5
    w_scale = torch.rand(out, generator=gen) * 2
    coef, lsb = np.empty((g, out), np.float32), np.empty((g, out), np.float32)
    read_kernels.read_scales(adc.numpy(), planes_scale.numpy(), gain.numpy() if gained else np.empty(0, np.float32), w_scale.numpy(),
                             steps_in, steps_adc, coef, lsb)
    rng = adc * steps_in
    want = rng.reciprocal().mul_(steps_adc).mul_(planes_scale)
    if gained:
        want = want * gain
    assert torch.equal(torch.from_numpy(coef), want)
    assert torch.equal(torch.from_numpy(lsb), rng * (w_scale / (steps_adc * steps_in)))


def test_new_instances_rewrite_two_operand_buffers_in_turn(monkeypatch):
    """Each instance's operands are written into one of the engine's two buffers in turn: the
    last instance's stay intact while the next is made, and each equals operands made afresh."""
    with torch.no_grad():
        layer = _cim("pcm-hermes-like", monkeypatch, True, seed=1)
        eng = next(lay.engine for _, lay in cim_layers(layer))
        made = []
        for seed in (1, 2, 3):
            cimflow.program(layer, seed=seed)
            ops = fused_read._operands(eng, 127.0)
            rows = eng.grid.in_features
            views = [(w.clone(), None if c is None else c.clone()) for _, _, w, c in ops.groups]
            made.append((ops, views, ops.coef.clone(), ops.lsb.clone()))
            if seed == 2:  # the first instance's operands were not overwritten by the second's
                first, groups, coef, lsb = made[0]
                assert all(torch.equal(w, a) for (_, _, w, _), (a, _) in zip(first.groups, groups, strict=True))
                assert torch.equal(first.coef, coef) and not torch.equal(ops.coef, coef)
            fresh_state = eng.__dict__.pop("_plane_buffers"), eng.__dict__.pop("_fused_operands")
            fresh = fused_read._operands(eng, 127.0)
            for a, b in zip(ops.groups, fresh.groups, strict=True):
                assert torch.equal(a[2], b[2]) and (a[3] is None or torch.equal(a[3], b[3]))
            assert torch.equal(fresh.coef, ops.coef) and torch.equal(fresh.lsb, ops.lsb) and rows == ops.groups[-1][1]
            eng.__dict__["_plane_buffers"], eng.__dict__["_fused_operands"] = fresh_state
        assert made[2][0].coef.data_ptr() == made[0][0].coef.data_ptr()  # the third instance re-uses the first's buffer


def test_eager_unfused_reads_draw_the_layers_counter_stream(monkeypatch):
    """An eager read off the fused path (a convolution's columns, the general path) draws its
    noise from the layer's counter stream at its draw counter, as the fused read does, and
    advances the counter; reprogramming the same seed restarts it. With the compiled kernels
    off it draws from the instance's generator and leaves the counter alone."""
    torch.manual_seed(0)
    cim = cimflow.program(cimflow.convert(nn.Sequential(nn.Linear(20, 8)), "pcm-hermes-like"), 5)
    engine = cim_layers(cim)[0][1].engine
    like = torch.empty(30, 8)
    first = engine._read_normal(like)
    assert torch.equal(first, fused_read.normals(engine._read_key, 0, (30, 8)))
    assert torch.equal(engine._read_normal(like), fused_read.normals(engine._read_key, 1, (30, 8)))
    assert int(engine.read_counter) == 2
    cimflow.program(cim, 5)
    assert torch.equal(engine._read_normal(like), first)
    monkeypatch.setenv("CIMFLOW_FUSED_READ", "0")
    other = engine._read_normal(like)
    assert int(engine.read_counter) == 1 and not torch.equal(other, fused_read.normals(engine._read_key, 1, (30, 8)))
