"""`cimflow recsys` under arbitrary flags: it answers (exit 0, the binding resource printed) or
refuses with one line (exit 2) — never a traceback, a hang or a huge allocation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimflow.cli import main

NUMBERS = st.one_of(st.integers(-10, 10**13).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["0", "-1", "1e300", "nan", "inf", "", "x", "3.5"]))
FLAGS = {
    "--tables": st.one_of(st.lists(st.integers(-5, 300_000), min_size=1, max_size=4).map(lambda v: ",".join(map(str, v))),
                          st.sampled_from(["", "a,b", "1e9", ",,", "10**12"])),
    "--dim": st.one_of(st.integers(-2, 5000).map(str), NUMBERS),
    "--pooling": st.one_of(st.integers(-2, 20).map(str), NUMBERS),
    "--skew": st.one_of(st.floats(-1, 6).map(repr), NUMBERS),
    "--batch": st.one_of(st.integers(-2, 4096).map(str), NUMBERS),
    "--chips": st.one_of(st.integers(-2, 6).map(str), NUMBERS),
    "--sharding": st.sampled_from(["auto", "table_wise", "row_wise", "column_wise", "diagonal"]),
    "--sample-queries": st.one_of(st.integers(0, 300).map(str), NUMBERS),
    "--shape": st.sampled_from(["custom", "huge"]),
}


@settings(max_examples=40, deadline=60_000, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=FLAGS))
def test_any_recsys_flags_answer_or_give_one_line(capsys: pytest.CaptureFixture[str], flags: dict[str, str]) -> None:
    args = ["recsys"] + [x for k, v in flags.items() for x in (k, v)]
    if "--tables" not in flags:
        args += ["--tables", "20000,5000"]  # keep the valid cases small
    args += ["--dim", "16"] if "--dim" not in flags else []
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    assert info.value.code in (0, 2), (args, err)
    if info.value.code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("cimflow: error:"), (args, err)
    else:
        assert "bound by" in out, args
