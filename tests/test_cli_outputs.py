"""CLI verbs check their output locations and flags before any work (no result lost), write
through cimflow.fileio (no planted link followed, no stray temp file, strict JSON), and refuse
out-of-range flags with one line and exit status 2. In-process: ``cimflow.cli.main``."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimflow import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = str(EXAMPLES / "mlp_model.py")


def refuse(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI, expect exit 2 with one ``cimflow: error:`` line; return that line."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(list(args))
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cimflow: error:"), err
    assert elapsed < 10.0, f"{args}: {elapsed:.1f} s - did the work start?"
    return lines[0]


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verb's work fails the test if it starts."""
    def started(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the work started before the output location was checked")

    for module, name in [("cimflow.compile.capture", "load_model_file"), ("cimflow.cost.macros", "validate_macros"),
                         ("cimflow.cost.macros", "calibrate"), ("cimflow.cost.validation", "validate_chips"),
                         ("cimflow.jobs.digits", "run_digits_demo"), ("cimflow.jobs.recsys", "run_recsys"),
                         ("cimflow.recsys.data", "movielens_100k_dir"), ("cimflow.jobs.hwa_dlrm", "hwa_movielens_dlrm")]:
        monkeypatch.setattr(importlib.import_module(module), name, started)


MISSING = "/no/such/dir/result.json"


@pytest.mark.parametrize(
    "args",
    [
        ["compile", MODEL, "--out", MISSING],
        ["estimate", MODEL, "--out", MISSING],
        ["simulate", MODEL, "--out", MISSING],
        ["simulate", MODEL, "--html", "/no/such/dir/t.html"],
        ["run", "--out", MISSING],
        ["run", "--html", "/no/such/dir/report.html"],
        ["run", "--workload", "digits", "--out", MISSING],
        ["validate", "macros", "--out", MISSING],
        ["validate", "chips", "--out", MISSING],
        ["validate", "calibrate", "--out", MISSING],
        ["validate", "calibrate", "--save", MISSING],
    ],
)
def test_unwritable_output_is_refused_before_the_work(capsys, no_work, args) -> None:  # type: ignore[no-untyped-def]
    line = refuse(capsys, *args)
    assert "/no/such/dir" in line and "does not exist" in line


def test_out_directory_is_refused_and_leaves_no_stray_file(capsys, no_work, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "results"
    folder.mkdir()
    line = refuse(capsys, "compile", MODEL, "--out", str(folder))
    assert "is a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not any(folder.iterdir())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--host-watts", "nan"], "--host-watts nan"),
        (["run", "--host-watts", "inf"], "--host-watts inf"),
        (["run", "--host-watts", "-5"], "--host-watts -5.0"),
        (["run", "--host-watts", "0"], "--host-watts 0.0"),
        (["run", "--instances", "0"], "--instances 0"),
        (["run", "--instances", "1000000000"], "--instances 1000000000"),
        (["run", "--batch", "100000000"], "--batch 100000000"),
        (["run", "--seed", "-1"], "--seed -1"),
        (["run", "--seed", str(2**70)], "--seed"),
        (["run", "--times", "1e300y"], "longest allowed"),
        (["run", "--times", ",".join(["1s"] * 65)], "at most 64"),
        (["run", "--times", "soon"], "cannot read duration 'soon'"),
        (["simulate", MODEL, "--instances", "5000"], "--instances 5000"),
        (["simulate", MODEL, "--times", "1e300y"], "longest allowed"),
        (["train-hwa", "--threads", "100000"], "--threads 100000"),
        (["train-hwa", "--threads", "0"], "--threads 0"),
        (["validate", "calibrate", "--k", "1"], "--k 1"),
        (["validate", "calibrate", "--k", "100000"], "--k 100000"),
    ],
)
def test_out_of_range_flags_are_one_line(capsys, no_work, args, needle) -> None:  # type: ignore[no-untyped-def]
    line = refuse(capsys, *args)
    assert needle in line


def test_compile_writes_through_fileio(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "plan.json"
    (tmp_path / "plan.json.tmp").symlink_to(victim)
    with pytest.raises(SystemExit) as info:
        cli.main(["compile", MODEL, "--chip", "ideal", "--out", str(out)])
    assert info.value.code == 0, capsys.readouterr().err
    assert victim.read_text() == "precious"
    plan = json.loads(out.read_text(), parse_constant=lambda token: pytest.fail(token))
    assert {o["name"] for o in plan["ops"]} >= {"fc1", "fc2", "fc3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "plan.json.tmp", "victim.txt"]


def test_a_rule_matching_nothing_is_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    line = refuse(capsys, "compile", MODEL, "--chip", "ideal", "--rule", "fc9=host")
    assert "'fc9'" in line and "fc1, relu, fc2" in line


def test_chips_show_bomb_is_one_line_fast(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 0 else f'l{i - 1}'}"] * 9) + "]\n" for i in range(9)))
    line = refuse(capsys, "chips", "show", str(bomb))
    assert "aliases" in line


class _WorkStarted(Exception):
    pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(watts=st.floats(allow_nan=True, allow_infinity=True), instances=st.integers(-10, 10**12), batch=st.integers(-10, 10**9))
def test_run_flags_are_refused_in_one_line_or_reach_the_work(capsys, monkeypatch, tmp_path, watts, instances, batch) -> None:  # type: ignore[no-untyped-def]
    def work(*_args: object, **_kwargs: object) -> None:
        raise _WorkStarted

    monkeypatch.setattr(importlib.import_module("cimflow.recsys.data"), "movielens_100k_dir", work)
    args = ["run", "--host-watts", repr(watts), "--instances", str(instances), "--batch", str(batch),
            "--out", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]
    valid = 0 < watts <= cli.MAX_HOST_WATTS and 1 <= instances <= cli.MAX_INSTANCES and 1 <= batch <= cli.MAX_BATCH
    if valid:
        with pytest.raises(_WorkStarted):
            cli.main(args)
    else:
        refuse(capsys, *args)
