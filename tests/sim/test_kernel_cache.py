"""numba's disk cache of the compiled kernels is keyed by all the kernel files together
(cimflow.sim.kernel_cache): a change to any of them recompiles every kernel, and no other
numba function's cache is touched."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from cimflow.sim import fused_read, kernel_cache

pytestmark = pytest.mark.skipif(not fused_read.available(), reason="numba is not importable")


def test_the_stamp_follows_every_files_content(tmp_path):
    files = [tmp_path / f"k{i}.py" for i in range(3)]
    for i, f in enumerate(files):
        f.write_text(f"x = {i}\n")
    stamp = kernel_cache.sources_stamp(files)
    assert kernel_cache.sources_stamp(files) == stamp
    for f in files:
        before = f.read_text()
        f.write_text(before + "# edited\n")
        assert kernel_cache.sources_stamp(files) != stamp
        f.write_text(before)
    assert kernel_cache.sources_stamp(files) == stamp
    assert kernel_cache.sources_stamp(files[::-1]) != stamp


def test_every_kernel_is_cached_under_the_stamp_of_all_kernel_files():
    from cimflow.sim import read_kernels, table_kernels
    from cimflow.train import clip_kernels, program_kernels

    paths = kernel_cache.kernel_files()
    assert {(p.parent.name, p.name) for p in paths} >= {("sim", "read_kernels.py"), ("sim", "table_kernels.py"),
                                                       ("train", "program_kernels.py"), ("train", "clip_kernels.py")}
    expected = ("cimflow-kernels", kernel_cache.sources_stamp(paths))
    for kernel in (read_kernels.quantize_rows, read_kernels.int_readout, read_kernels.int_readout_threads, table_kernels.pool_bags,
                   program_kernels.program_instance, clip_kernels.clip_rows):
        locator = kernel._cache._impl._locator
        assert getattr(type(locator), "cimflow_kernels", False), type(locator)
        assert locator.get_source_stamp() == expected
    # one source compiled serial and threaded: two cache files (numba names them by the function)
    serial, threaded = read_kernels.int_readout, read_kernels.int_readout_threads
    assert serial.py_func.__code__ is threaded.py_func.__code__ and threaded.targetoptions.get("parallel")
    assert serial._cache._cache_file._index_name != threaded._cache._cache_file._index_name
    assert kernel_cache.install()  # idempotent: the locators are in place once
    from numba.core import caching
    assert sum(getattr(c, "cimflow_kernels", False) for c in caching.CacheImpl._locator_classes) == 3


def test_other_numba_functions_keep_numbas_own_cache(tmp_path, monkeypatch):
    source = tmp_path / "elsewhere.py"
    source.write_text("from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
    spec = importlib.util.spec_from_file_location("elsewhere_kernel_module", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "elsewhere_kernel_module", module)
    spec.loader.exec_module(module)
    assert module.twice(3) == 6
    locator = module.twice._cache._impl._locator
    assert not getattr(type(locator), "cimflow_kernels", False)
