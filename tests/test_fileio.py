"""cimflow.fileio: atomic writes that follow no planted link and leave no stray file, strict JSON,
output locations checked before work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimflow.errors import CimflowError
from cimflow.fileio import atomic_write_bytes, atomic_write_text, check_output_path, dumps_json, write_json


def test_a_symlink_planted_at_the_old_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "report.json"
    (tmp_path / "report.json.tmp").symlink_to(victim)
    write_json(out, {"a": 1})
    assert victim.read_text() == "precious"
    assert json.loads(out.read_text()) == {"a": 1} and not out.is_symlink()


def test_a_symlink_at_the_destination_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.txt"
    out.symlink_to(victim)
    atomic_write_text(out, "new")
    assert victim.read_text() == "precious" and out.read_text() == "new" and not out.is_symlink()


def test_a_directory_is_refused_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(CimflowError, match="is a directory"):
        check_output_path(folder, "--out")
    with pytest.raises(CimflowError, match="is a directory"):
        atomic_write_text(folder, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not any(folder.iterdir())


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    out.write_text("old")

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json(out, {"x": Unserializable()})
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]
    atomic_write_bytes(out, b"new")
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


@pytest.mark.parametrize("make", ["missing", "file-as-dir"])
def test_check_output_path_refuses_before_work(tmp_path: Path, make: str) -> None:
    if make == "missing":
        target = tmp_path / "no" / "such" / "report.json"
        needle = "does not exist"
    else:
        (tmp_path / "plain").write_text("")
        target = tmp_path / "plain" / "report.json"
        needle = "does not exist"
    with pytest.raises(CimflowError) as info:
        check_output_path(target, "--out")
    message = str(info.value)
    assert needle in message and "--out" in message and "\n" not in message
    assert check_output_path(tmp_path / "fine.json") == tmp_path / "fine.json"


_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.none(), st.text(max_size=5))
_json_like = st.recursive(
    _numbers, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)), max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json_like)
def test_write_json_never_emits_nan_or_infinity(value: object) -> None:
    text = dumps_json(value)
    # json.loads calls parse_constant only for the bare tokens NaN, Infinity and -Infinity
    parsed = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard token {token}"))
    if isinstance(value, float) and not math.isfinite(value):
        assert parsed is None


def test_write_json_numpy_and_torch_scalars(tmp_path: Path) -> None:
    import numpy as np
    import torch

    out = tmp_path / "x.json"
    write_json(out, {"a": np.float32(1.5), "b": torch.tensor(float("nan")), "c": np.float64("inf"), "p": tmp_path})
    assert json.loads(out.read_text()) == {"a": 1.5, "b": None, "c": None, "p": str(tmp_path)}
