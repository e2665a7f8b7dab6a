"""numba's disk cache of cimflow's compiled kernels, keyed by all the kernels' sources.

numba keys a cached kernel by the content of the one file that defines it, but cimflow's
kernels inline functions from another file (:mod:`cimflow.sim.read_kernels`'s counter
stream, log and exponential go into :mod:`cimflow.sim.table_kernels` and
:mod:`cimflow.train.program_kernels`). After a change to that file alone - a branch
switched, a file edited - the other files' cached kernels are stale: they keep the old
stream (other values), or numba fails to load them ("descr is NULL").

:func:`install` puts cache locators ahead of numba's own for the files in
:func:`kernel_files` only: the folders numba would use (``NUMBA_CACHE_DIR``, the package's
``__pycache__``, the user-wide cache), with a stamp that hashes every kernel file's content
together, so a change to any of them recompiles all (once, ~20 s). numba's locator classes
are internal: where they are not as expected, nothing is installed and numba keys by each
file as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent.parent


def kernel_files() -> list[Path]:
    """The files defining compiled kernels: every ``*_kernels.py`` of a ``cimflow``
    subpackage, in name order; a change to any one invalidates the cache of all."""
    return sorted(_PACKAGE.glob("*/*_kernels.py"))


def sources_stamp(paths: list[Path]) -> str:
    """A hash of the files' names and contents, in order (the cache stamp of every kernel)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _keyed(base: Any, files: frozenset[Path], stamp: tuple[str, str]) -> Any:
    """``base`` (a numba cache locator class) for the kernel ``files`` only, stamped ``stamp``."""

    class Keyed(base):
        cimflow_kernels = True

        def get_source_stamp(self) -> tuple[str, str]:
            return stamp

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if Path(py_file).resolve() not in files:
                return None
            return super().from_function(py_func, py_file)

    Keyed.__name__ = Keyed.__qualname__ = f"CimflowKernels{base.__name__}"
    return Keyed


def install() -> bool:
    """Key the disk cache of the kernels in :func:`kernel_files` by all their sources (see the
    module docstring); call before they are decorated. Returns whether the locators are in
    place (numba's internals as expected); idempotent."""
    try:
        from numba.core import caching

        impl = caching.CacheImpl
        bases = [caching.UserProvidedCacheLocator, caching.InTreeCacheLocator, caching.UserWideCacheLocator]
        classes = impl._locator_classes
    except (ImportError, AttributeError):
        return False
    if any(getattr(c, "cimflow_kernels", False) for c in classes):
        return True
    paths = kernel_files()
    try:
        stamp = ("cimflow-kernels", sources_stamp(paths))
    except OSError:  # a kernel file not on disk (a zipped install): numba's own keying
        return False
    files = frozenset(p.resolve() for p in paths)
    classes[:0] = [_keyed(base, files, stamp) for base in bases]
    return True


__all__ = ["install", "kernel_files", "sources_stamp"]
