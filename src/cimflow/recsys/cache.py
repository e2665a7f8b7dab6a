"""The trained-model cache: content-keyed, checksummed checkpoints of trained DLRMs.

One reader and one writer for every cached model (the float MovieLens DLRM of
:func:`cimflow.recsys.train.train_movielens_dlrm` and the HWA-fine-tuned one of
:mod:`cimflow.jobs.hwa_dlrm`).

- **Where**: :func:`default_cache_dir` — ``$CIMFLOW_CACHE_DIR`` when set, else
  ``platformdirs.user_cache_dir("cimflow")/recsys``. Deleting the folder clears the cache.
- **Key**: :func:`cache_key` — canonical JSON of everything the weights depend on: the
  kind of model, a digest of the training data actually used (:func:`dataset_digest`
  of the split tensors), the model config, every training setting and the seed, and the
  code version (``cimflow.version.__version__`` and :data:`CACHE_FORMAT`). The file name is
  ``<kind>_<first 16 hex of sha256(key)>.pt``; the full key is stored inside and compared.
- **Checksum**: beside each ``X.pt`` a ``X.pt.sha256`` in ``sha256sum`` format
  (``sha256sum -c`` checks it by hand); :func:`read_entry` verifies it before unpickling.
- **Bad entries**: a checksum mismatch, an unreadable file, another key, wrong
  parameter names/shapes/dtypes, non-finite weights or metrics — :func:`read_entry` warns
  (:class:`CacheWarning`, naming the file and the reason), moves the entry aside to
  ``X.pt.bad`` and returns None, so the caller rebuilds it.
- **Writes** go through :func:`cimflow.fileio.atomic_write_bytes`; a cache that cannot be
  written costs a warning, never the result. Checkpoints load with
  ``torch.load(weights_only=True)``.

Layer: ``recsys`` (torch and :mod:`cimflow.fileio` only; nothing of CIM).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cimflow import version
from cimflow.errors import CimflowError
from cimflow.fileio import atomic_write_bytes

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_FORMAT",
    "CacheWarning",
    "cache_key",
    "checksum_path",
    "dataset_digest",
    "default_cache_dir",
    "discard_entry",
    "entry_path",
    "read_entry",
    "write_entry",
]

#: Bump when training code changes what a cached model means (another loss, data
#: pipeline or selection rule): every older entry then misses and is retrained.
CACHE_FORMAT = 2

#: Environment variable that overrides the cache folder.
CACHE_DIR_ENV = "CIMFLOW_CACHE_DIR"

_ENTRY_FIELDS = frozenset({"key", "state_dict", "record"})


class CacheWarning(UserWarning):
    """A cache entry was bad (and discarded) or could not be written."""


def default_cache_dir() -> Path:
    """``$CIMFLOW_CACHE_DIR`` when set and not empty, else ``platformdirs.user_cache_dir("cimflow")/recsys``."""
    override = os.environ.get(CACHE_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cimflow")) / "recsys"


def _update_tensor(digest: Any, name: str, tensor: Tensor) -> None:
    array = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
    digest.update(array.numpy().tobytes())


def dataset_digest(*datasets: Any) -> str:
    """sha256 (hex) of the content of :class:`~cimflow.recsys.data.RecDataset` s, in order:
    dense values, sparse keys, row indices and bag offsets, labels, table sizes and dense
    column names. Two datasets differing in one sample (or one label) differ here."""
    digest = hashlib.sha256()
    for position, data in enumerate(datasets):
        digest.update(f"dataset {position}: {len(data)} samples;".encode())
        digest.update(json.dumps([list(data.table_sizes), list(data.dense_names), list(data.sparse.keys)]).encode())
        _update_tensor(digest, "dense", data.dense)
        _update_tensor(digest, "values", data.sparse.values)
        _update_tensor(digest, "offsets", data.sparse.offsets)
        _update_tensor(digest, "labels", data.labels)
    return digest.hexdigest()


def cache_key(kind: str, **parts: Any) -> str:
    """The key of a cache entry: canonical JSON of ``kind``, :data:`CACHE_FORMAT`,
    ``cimflow.version.__version__`` and ``parts`` (data digest, config, settings, seed...)."""
    payload = {"kind": kind, "format": CACHE_FORMAT, "cimflow": version.__version__, **parts}
    try:
        return json.dumps(payload, sort_keys=True, allow_nan=False, default=str)
    except ValueError as error:
        raise CimflowError(f"cannot cache {kind}: a setting is not a finite number ({error}); use finite values") from error


def entry_path(cache_dir: str | os.PathLike[str] | None, kind: str, key: str) -> Path:
    """``<cache_dir>/<kind>_<16 hex of sha256(key)>.pt`` (``cache_dir`` default :func:`default_cache_dir`)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{kind}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def checksum_path(path: Path) -> Path:
    """The ``sha256sum``-format checksum file beside a checkpoint."""
    return path.with_name(path.name + ".sha256")


def discard_entry(path: Path, reason: str) -> None:
    """Warn that the entry at ``path`` is bad (naming it and ``reason``) and move it aside to
    ``<path>.bad`` (deleted if that fails), with its checksum file."""
    aside = path.with_name(path.name + ".bad")
    try:
        os.replace(path, aside)
        where = f"moved to {aside}"
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        where = "deleted"
    with contextlib.suppress(OSError):
        checksum_path(path).unlink()
    warnings.warn(f"cimflow cache: discarded the bad entry {path} ({reason}); {where}; it will be rebuilt",
                  CacheWarning, stacklevel=3)


def _non_finite_tensors(state_dict: Mapping[str, Tensor]) -> list[str]:
    return [name for name, value in state_dict.items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def _non_finite_fields(record: Mapping[str, Any], finite: Iterable[str]) -> list[str]:
    bad = []
    for name in finite:
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad.append(f"{name}={value!r}")
    return bad


def _problem(checkpoint: Any, key: str, model: nn.Module, finite: Iterable[str]) -> str | None:
    """Why a loaded checkpoint cannot be used for ``model`` under ``key``, or None."""
    if not isinstance(checkpoint, dict) or set(checkpoint) != _ENTRY_FIELDS:
        fields = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        return f"not a cimflow cache entry: holds {fields}, expected {sorted(_ENTRY_FIELDS)}"
    if checkpoint["key"] != key:
        return "stored under another key (a foreign or renamed file)"
    state, record = checkpoint["state_dict"], checkpoint["record"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        return "its state_dict is not a mapping of tensors"
    if not isinstance(record, dict):
        return "its metrics record is not a mapping"
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        return f"wrong parameters: missing {missing[:5]}, unexpected {unexpected[:5]}"
    for name, value in expected.items():
        if state[name].shape != value.shape or state[name].dtype != value.dtype:
            return (f"parameter {name} is {state[name].dtype} {tuple(state[name].shape)}, "
                    f"the model needs {value.dtype} {tuple(value.shape)}")
    bad_tensors = _non_finite_tensors(state)
    if bad_tensors:
        return f"non-finite weights in {bad_tensors[:5]}"
    bad_fields = _non_finite_fields(record, finite)
    if bad_fields:
        return f"non-finite metrics {bad_fields}"
    return None


def read_entry(path: Path, key: str, model: nn.Module, finite: Iterable[str] = ()) -> dict[str, Any] | None:
    """The checkpoint ``{"key", "state_dict", "record"}`` at ``path`` if it is a good entry
    for ``model`` under ``key``; None when absent, or when bad (then warned about and moved
    aside by :func:`discard_entry`).

    Good means: the bytes match the sha256 in :func:`checksum_path`; it loads with
    ``torch.load(weights_only=True)``; it was stored under ``key``; its state_dict has
    exactly ``model``'s parameter names, shapes and dtypes, all finite; and the record's
    fields named in ``finite`` are finite numbers. The model itself is not changed.
    """
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        discard_entry(path, f"unreadable: {error.strerror or error}")
        return None
    try:
        recorded = checksum_path(path).read_text(encoding="ascii").split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        discard_entry(path, f"its checksum file {checksum_path(path).name} is missing or unreadable")
        return None
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        discard_entry(path, f"checksum mismatch: sha256 {actual[:16]}..., recorded {recorded[:16]}...")
        return None
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad entry
        first_line = (str(error).splitlines() or [""])[0][:200]
        discard_entry(path, f"unreadable checkpoint: {type(error).__name__}: {first_line}")
        return None
    reason = _problem(checkpoint, key, model, finite)
    if reason is not None:
        discard_entry(path, reason)
        return None
    return checkpoint


def write_entry(path: Path, key: str, state_dict: Mapping[str, Tensor], record: Mapping[str, Any],
                finite: Iterable[str] = ()) -> bool:
    """Store a checkpoint and its checksum atomically (:func:`cimflow.fileio.atomic_write_bytes`).

    Refuses (with a :class:`CacheWarning`) weights or ``finite`` record fields that are not
    finite, and warns instead of failing when the folder cannot be written: the caller's
    result is never lost to the cache. Returns True when the entry was written.
    """
    state = {name: value.detach().cpu().clone() for name, value in state_dict.items()}
    problems = _non_finite_tensors(state)
    problems += _non_finite_fields(record, finite)
    if problems:
        warnings.warn(f"cimflow cache: not caching {path}: non-finite {problems[:5]}", CacheWarning, stacklevel=2)
        return False
    buffer = io.BytesIO()
    torch.save({"key": key, "state_dict": state, "record": dict(record)}, buffer)
    data = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the checksum first: a crash between the two leaves a stale checksum (a mismatch,
        # warned about and rebuilt) or no checkpoint (a plain miss), never an unchecked entry
        atomic_write_bytes(checksum_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode(),
                           "cache checksum")
        atomic_write_bytes(path, data, "cache entry")
    except (CimflowError, OSError) as error:
        warnings.warn(f"cimflow cache: could not write {path} ({error}); continuing without caching",
                      CacheWarning, stacklevel=2)
        return False
    return True
