"""Bring-your-own access traces: the jagged layout, round trips, and every bad file refused
with a DataError (property-tested on arbitrary .npz content)."""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cimflow.errors import DataError
from cimflow.recsys import traces
from cimflow.recsys.traces import MAX_TABLES, AccessTrace, load_trace, save_trace

# two tables, batch 3: table "a" bags [1], [], [4, 2]; table "b" bags [0], [0, 0], [9]
KEYS = ("a", "b")
INDICES = [1, 4, 2, 0, 0, 0, 9]
LENGTHS = [1, 0, 2, 1, 2, 1]
OFFSETS = [0, 1, 1, 3, 4, 6, 7]


def _npz(path: Path, **fields: object) -> Path:
    np.savez(path, **fields)  # type: ignore[arg-type]
    return path


def _valid(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "indices": np.array(INDICES, dtype=np.int32),
        "offsets": np.array(OFFSETS, dtype=np.int64),
        "batch_size": np.array(3),
        "keys": np.array(KEYS),
        "table_sizes": np.array([5, 10], dtype=np.uint32),
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def test_reads_the_torchrec_layout(tmp_path: Path) -> None:
    trace = load_trace(_npz(tmp_path / "t.npz", **_valid()))
    assert trace.keys == KEYS and trace.batch_size == 3 and trace.table_sizes == (5, 10)
    assert trace.indices.dtype == torch.int64 and trace.offsets.dtype == torch.int64
    assert [t.tolist() for t in trace.per_table()] == [[1, 4, 2], [0, 0, 0, 9]]
    assert trace.pooling_factors() == pytest.approx([1.0, 4 / 3])
    assert trace.lengths.tolist() == LENGTHS
    jagged = trace.to_jagged()
    assert jagged.batch_size == 3 and jagged.keys == list(KEYS)
    assert [v.tolist() for v, _ in jagged.per_feature()] == [[1, 4, 2], [0, 0, 0, 9]]


def test_lengths_instead_of_offsets_and_sizes_inferred(tmp_path: Path) -> None:
    fields = _valid(offsets=None, table_sizes=None, keys=None, lengths=np.array(LENGTHS, dtype=np.int8))
    trace = load_trace(_npz(tmp_path / "t.npz", **fields))
    assert trace.offsets.tolist() == OFFSETS
    assert trace.keys == ("cat_0", "cat_1") and trace.table_sizes is None
    assert trace.effective_table_sizes() == (5, 10)


def test_pt_files_load_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save({"indices": torch.tensor(INDICES), "lengths": torch.tensor(LENGTHS), "batch_size": 3,
                "keys": list(KEYS)}, path)  # fmt: skip
    trace = load_trace(path)
    assert trace.offsets.tolist() == OFFSETS and trace.keys == KEYS


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path("/").joinpath, ("touched",))

    pt = tmp_path / "evil.pt"
    pt.write_bytes(b"")
    torch.save({"indices": Evil()}, pt)
    with pytest.raises(DataError, match="weights-only"):
        load_trace(pt)
    npz = _npz(tmp_path / "evil.npz", **_valid(indices=np.array([Evil()], dtype=object)))
    with pytest.raises(DataError, match="indices"):
        load_trace(npz)
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps({"indices": [1]}))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_trace(raw)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"indices": np.array(INDICES, dtype=np.float32)}, "indices must hold integers"),
        ({"indices": np.array([INDICES])}, "indices must be 1-D"),
        ({"indices": np.array([1, 4, 2, 0, 0, 0, -1])}, "indices must be >= 0"),
        ({"indices": np.array([1, 4, 5, 0, 0, 0, 9])}, r"table 'a' must lie in \[0, 5\)"),
        ({"offsets": np.array([0, 1, 1, 3, 4, 7])}, "13|7 entries"),
        ({"offsets": np.array([1, 1, 1, 3, 4, 6, 7])}, "start at 0"),
        ({"offsets": np.array([0, 3, 1, 3, 4, 6, 7])}, "non-decreasing"),
        ({"offsets": np.array([0, 1, 1, 3, 4, 6, 6])}, "end at len"),
        ({"offsets": np.array([0, 1, 1, 3, 4, 6, 2**63 - 1], dtype=np.uint64)}, "lie in"),
        ({"offsets": np.array([0, 1, 1, 3, 4, 6, 2**64 - 1], dtype=np.uint64)}, "below 2\\*\\*63"),
        ({"offsets": None}, "give offsets"),
        ({"lengths": np.array([1, 0, 2, 1, 2, 2])}, "lengths must sum"),
        ({"lengths": np.array([1, 0, 2, 1, 3, 0])}, "disagree"),
        ({"offsets": None, "lengths": np.array([1, 0, -2, 1, 2, 1])}, "lengths must lie"),
        ({"batch_size": np.array(0)}, "batch_size must be >= 1"),
        ({"batch_size": np.array([3, 3])}, "batch_size must be one integer"),
        ({"batch_size": np.array(3.0)}, "batch_size must hold integers"),
        ({"batch_size": None}, "'batch_size' is missing"),
        ({"indices": None}, "'indices' is missing"),
        ({"keys": np.array(["a", "a"])}, "unique"),
        ({"keys": np.array(["a", ""])}, "non-empty"),
        ({"keys": np.array([1, 2])}, "unicode"),
        ({"table_sizes": np.array([5])}, "one per key"),
        ({"table_sizes": np.array([5, 0])}, "table_sizes must all be >= 1"),
        ({"weights": np.array([1.0])}, "unknown field 'weights'"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, overrides: dict[str, object], needle: str) -> None:
    path = _npz(tmp_path / "bad.npz", **_valid(**overrides))
    with pytest.raises(DataError, match=needle) as info:
        load_trace(path)
    assert "\n" not in str(info.value) and str(info.value).startswith("access trace: ")


def test_without_keys_the_bag_count_must_divide(tmp_path: Path) -> None:
    path = _npz(tmp_path / "t.npz", indices=np.array([1, 2]), lengths=np.array([1, 1]), batch_size=np.array(3))
    with pytest.raises(DataError, match="multiple of batch_size"):
        load_trace(path)


def test_too_many_tables_and_too_large_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = MAX_TABLES + 1
    path = _npz(tmp_path / "many.npz", indices=np.zeros(0, np.int64), lengths=np.zeros(count, np.int64),
                batch_size=np.array(1))  # fmt: skip
    with pytest.raises(DataError, match=f"1 to {MAX_TABLES} tables"):
        load_trace(path)
    small = _npz(tmp_path / "small.npz", **_valid())
    monkeypatch.setattr(traces, "MAX_TRACE_FILE_BYTES", 100)
    with pytest.raises(DataError, match="allowed at most 100"):
        load_trace(small)


def test_archives_that_unpack_too_large_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _npz(tmp_path / "t.npz", **_valid(indices=np.zeros(10_000, np.int64), offsets=None,
                                             lengths=np.array([5000, 0, 0, 5000, 0, 0])))  # fmt: skip
    zipped = tmp_path / "z.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member))
    assert zipped.stat().st_size < 20_000 < 80_000
    monkeypatch.setattr(traces, "MAX_TRACE_FILE_BYTES", 20_000)
    with pytest.raises(DataError, match="unpacks to"):
        load_trace(zipped)


def test_missing_files_and_wrong_suffixes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        load_trace(tmp_path / "absent.npz")
    with pytest.raises(DataError, match=r"\.npz, \.pt or \.pth"):
        load_trace(tmp_path / "trace.csv")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="weights-only torch file"):
        load_trace(tmp_path / "junk.pt")
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(DataError, match="dict of tensors"):
        load_trace(tmp_path / "list.pt")
    torch.save({"indices": torch.zeros(2)}, tmp_path / "float.pt")
    with pytest.raises(DataError, match="integer tensor"):
        load_trace(tmp_path / "float.pt")


def test_constructor_checks_like_the_loader() -> None:
    with pytest.raises(DataError, match="offsets must have"):
        AccessTrace(("a",), torch.tensor([0]), torch.tensor([0, 1, 1]), 1)
    with pytest.raises(DataError, match="indices must hold integers"):
        AccessTrace(("a",), torch.tensor([0.0]), torch.tensor([0, 1]), 1)
    with pytest.raises(DataError, match="batch_size"):
        AccessTrace(("a",), torch.tensor([0]), torch.tensor([0, 1]), True)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- properties
@st.composite
def access_traces(draw: st.DrawFn) -> AccessTrace:
    tables = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, 4), min_size=tables * batch, max_size=tables * batch))
    sizes = draw(st.lists(st.integers(1, 50), min_size=tables, max_size=tables))
    values: list[int] = []
    for t in range(tables):
        count = sum(lengths[t * batch : (t + 1) * batch])
        values += draw(st.lists(st.integers(0, sizes[t] - 1), min_size=count, max_size=count))
    keys = draw(st.lists(st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=8),
                         min_size=tables, max_size=tables, unique=True))  # fmt: skip
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with_sizes = draw(st.booleans())
    return AccessTrace(tuple(keys), torch.tensor(values, dtype=torch.int64), torch.from_numpy(offsets), batch,
                       tuple(sizes) if with_sizes else None)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(access_traces(), st.sampled_from([".npz", ".pt"]))
def test_save_then_load_is_equal(tmp_path: Path, trace: AccessTrace, suffix: str) -> None:
    path = tmp_path / f"trace{suffix}"
    save_trace(path, trace)
    loaded = load_trace(path)
    assert loaded == trace
    assert loaded.pooling_factors() == pytest.approx(trace.pooling_factors())
    sizes = loaded.effective_table_sizes()
    assert all(int(v.max()) < n for v, n in zip(loaded.per_table(), sizes, strict=True) if v.numel())


_DTYPES = st.sampled_from(["int8", "uint8", "int16", "int32", "int64", "uint64", "float32", "bool", "<U3"])
_ARRAYS = _DTYPES.flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=8))
)
_NAMES = st.sampled_from(["indices", "offsets", "lengths", "batch_size", "keys", "table_sizes", "other"])


@st.composite
def mutated_fields(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """The fields of a valid trace (offsets or lengths, optional keys and sizes, any integer
    dtype), then up to three mutations: drop a field, replace it by an arbitrary array,
    change one entry, or cast it to another dtype."""
    trace = draw(access_traces())
    dtype = draw(st.sampled_from(["int8", "uint8", "int16", "int32", "int64", "uint64"]))
    fields: dict[str, np.ndarray] = {"indices": trace.indices.numpy(), "batch_size": np.array(trace.batch_size)}
    if draw(st.booleans()):
        fields["offsets"] = trace.offsets.numpy()
    else:
        fields["lengths"] = trace.lengths.numpy()
    if draw(st.booleans()):
        fields["keys"] = np.array(trace.keys)
    if trace.table_sizes is not None:
        fields["table_sizes"] = np.array(trace.table_sizes)
    fields = {k: (v.astype(dtype) if k != "keys" and np.abs(v).max(initial=0) < 100 else v) for k, v in fields.items()}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(_NAMES)
        action = draw(st.sampled_from(["drop", "replace", "poke", "cast"]))
        if action == "drop":
            fields.pop(name, None)
        elif action == "replace" or name not in fields:
            fields[name] = draw(_ARRAYS)
        elif action == "poke" and fields[name].size and fields[name].dtype.kind in "iu":
            flat = fields[name].astype(np.int64).reshape(-1)
            flat[draw(st.integers(0, flat.size - 1))] += draw(st.sampled_from([-1, 1, -(2**40), 2**40]))
            fields[name] = flat.reshape(fields[name].shape)
        elif action == "cast":
            with contextlib.suppress(ValueError, OverflowError), np.errstate(all="ignore"):
                fields[name] = fields[name].astype(draw(_DTYPES))
    return fields


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated_fields(), st.dictionaries(_NAMES, _ARRAYS, max_size=6)))
def test_arbitrary_npz_loads_consistently_or_raises_data_error(tmp_path: Path, fields: dict[str, np.ndarray]) -> None:
    path = tmp_path / "any.npz"
    np.savez(path, **fields)  # type: ignore[arg-type]
    try:
        trace = load_trace(path)
    except DataError as error:
        assert "\n" not in str(error)
        return
    batch, count = trace.batch_size, trace.num_tables
    assert batch >= 1 and 1 <= count <= MAX_TABLES and len(set(trace.keys)) == count
    assert trace.offsets.numel() == count * batch + 1 and int(trace.offsets[0]) == 0
    assert int(trace.offsets[-1]) == trace.indices.numel()
    assert bool((trace.lengths >= 0).all())
    assert sum(v.numel() for v in trace.per_table()) == trace.indices.numel()
    sizes = trace.effective_table_sizes()
    for values, size in zip(trace.per_table(), sizes, strict=True):
        assert values.numel() == 0 or 0 <= int(values.min()) <= int(values.max()) < size


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from([".npz", ".pt"]))
def test_arbitrary_bytes_raise_data_error(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(data)
    with pytest.raises(DataError):
        load_trace(path)


def test_truncated_archives_raise_data_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **_valid())  # type: ignore[arg-type]
    whole = buffer.getvalue()
    for cut in range(0, len(whole), max(1, len(whole) // 40)):
        path = tmp_path / "cut.npz"
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError):
            load_trace(path)
