"""Tests of cimflow.units: durations in and out (seconds in code)."""

from __future__ import annotations

import math
import re

import pytest

from cimflow.errors import CimflowError
from cimflow.units import format_duration, parse_duration

DAY = 86400.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1d", DAY),
        ("1y", 365 * DAY),
        ("2yr", 2 * 365 * DAY),
        ("1mo", 30 * DAY),
        ("1w", 7 * DAY),
        ("3 days", 3 * DAY),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("30min", 1800.0),
        ("5m", 300.0),  # m is minutes, not months
        ("45s", 45.0),
        ("250ms", 0.25),
        ("10us", 1e-5),
        ("100ns", 1e-7),
        ("1e3s", 1000.0),
        (".5d", 0.5 * DAY),
        ("3600", 3600.0),  # a bare number is seconds
        ("  10 ms ", 0.01),
        ("1D", DAY),  # units are case-insensitive
        ("0s", 0.0),
    ],
)
def test_parse_duration_strings(text: str, seconds: float):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("value", [0, 1, 86400, 2.5, 1e-9])
def test_parse_duration_numbers_are_seconds(value: float):
    result = parse_duration(value)
    assert isinstance(result, float) and result == float(value)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "d", "1 fortnight", "1d2h", "-1d", "1,5h", "1..5h", "++1s", -1, -0.5, float("nan"), float("inf"), True, None, [1], b"1d",
     "1e300y", "1001y", 1e300, "1e400s"],
)
def test_parse_duration_refuses_bad_input(value):
    with pytest.raises(CimflowError) as info:
        parse_duration(value)
    assert "duration" in str(info.value)


def test_bad_unit_message_lists_the_units():
    with pytest.raises(CimflowError) as info:
        parse_duration("3 fortnights")
    message = str(info.value)
    assert "'3 fortnights'" in message
    for unit in ("ns", "us", "ms", "s", "min", "h", "d", "w", "mo", "y"):
        assert re.search(rf"\b{unit}\b", message), unit


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(DAY, "1d"), (3600.0, "1h"), (90.0, "1.5min"), (0.5, "0.5s"), (365 * DAY, "1y"), (30 * DAY, "1mo"), (0.0, "0s"), (7 * DAY, "7d"),
     (45.0, "45s")],
)
def test_format_duration(seconds: float, text: str):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1.0, 60.0, 3600.0, DAY, 2 * DAY, 30 * DAY, 45 * DAY, 365 * DAY, 3 * 365 * DAY, 7200.0, 0.25])
def test_format_then_parse_round_trips(seconds: float):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("seconds", [1234.5, 10**5 + 7.0, math.pi * DAY])
def test_format_keeps_three_significant_digits(seconds: float):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=5e-3)



def test_longest_duration_is_accepted_and_one_more_is_not():
    assert parse_duration("1000y") == 1000 * 365 * DAY
    with pytest.raises(CimflowError, match="longest allowed"):
        parse_duration("1000.1y")
