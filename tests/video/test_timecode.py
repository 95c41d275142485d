"""Tests for sage_fast.video.timecode: parsing model-written timestamps, formatting, clamping windows."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sage_fast.video.timecode import (
    ACCEPTED_FORMS,
    clamp_time,
    clamp_window,
    format_timestamp,
    parse_timestamp,
)

# --- parse_timestamp ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:00", 0.0),
        ("00:01:05", 65.0),
        ("01:02:03", 3723.0),
        ("0:0:7", 7.0),
        ("100:00:00", 360000.0),  # hours are not capped at 99
        ("1:05", 65.0),
        ("01:05", 65.0),
        ("75:30", 4530.0),  # MM:SS may carry minutes past 59
        ("65", 65.0),
        ("0", 0.0),
        ("3725", 3725.0),
        ("00:01:02.5", 62.5),
        ("01:02.25", 62.25),
        ("62.5", 62.5),
        ("5.", 5.0),
        (".5", 0.5),
        ("00:00:59.999", 59.999),
        ("  00:00:07 \n", 7.0),  # models pad with whitespace
    ],
)
def test_parse_accepts_all_forms(text: str, seconds: float) -> None:
    assert parse_timestamp(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (62, 62.0), (62.5, 62.5), (np.int64(3), 3.0), (np.float32(1.5), 1.5)],
)
def test_parse_accepts_numbers(value: object, seconds: float) -> None:
    result = parse_timestamp(value)  # type: ignore[arg-type]
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1", "negative"),
        ("-00:00:05", "negative"),
        (-0.5, "negative"),
        (-3, "negative"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        ("nan", "not a number"),
        ("inf", "not a number"),
        ("abc", "not a number"),
        ("1e3", "not a number"),
        ("0x10", "not a number"),
        ("12s", "not a number"),
        ("١٢", "not a number"),  # non-ASCII digits, which float() would accept
        ("", "empty"),
        ("   ", "empty"),
        ("1:2:3:4", "at most 3"),
        ("00:00:00:00:01", "at most 3"),
        ("00:60:00", "minutes must be below 60"),
        ("01:99:00", "minutes must be below 60"),
        ("00:00:60", "seconds must be below 60"),
        ("00:00:59.9999999999999999", "seconds must be below 60"),  # rounds to 60.0 as a float
        ("01:60", "seconds must be below 60"),
        ("00:01.5:00", "only the seconds may have a fraction"),
        ("1.5:00", "only the seconds may have a fraction"),
        ("00::05", "not a whole number"),
        (":05", "not a whole number"),
        ("00:00:", "seconds field"),
        ("00: 01:02", "not a whole number"),
        ("12:ab", "seconds field 'ab'"),
        ("9" * 400 + ":00:00", "too large"),
        ("9" * 400, "too large"),
        (None, "NoneType"),
        (True, "bool"),
        ([1, 2], "list"),
        (b"00:00:05", "bytes"),
    ],
)
def test_parse_rejects_with_actionable_message(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_timestamp(value)  # type: ignore[arg-type]
    message = str(info.value)
    assert reason in message
    assert repr(value) in message  # names the bad value ...
    assert message.endswith(ACCEPTED_FORMS)  # ... and shows what would be accepted


def test_parse_error_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^invalid timestamp_end '25:61:00'"):
        parse_timestamp("25:61:00", name="timestamp_end")


# --- format_timestamp --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00"),
        (0.0, "00:00:00"),
        (-0.0, "00:00:00"),
        (59, "00:00:59"),
        (62.9, "00:01:02"),  # truncates, like the reference code
        (3599.999, "00:59:59"),
        (3600, "01:00:00"),
        (3723, "01:02:03"),
        (360000, "100:00:00"),
        (2.9999999999, "00:00:03"),  # float noise is not truncated away
        (np.float64(65.0), "00:01:05"),
    ],
)
def test_format_whole_seconds(seconds: float, text: str) -> None:
    assert format_timestamp(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00.000"),
        (62.5, "00:01:02.500"),
        (3723.004, "01:02:03.004"),
        (59.9996, "00:01:00.000"),  # rounding carries into the minutes
        (0.1 + 0.2, "00:00:00.300"),
        (360000.25, "100:00:00.250"),
    ],
)
def test_format_millis(seconds: float, text: str) -> None:
    assert format_timestamp(seconds, millis=True) == text


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), float("inf"), "12", None, True])
def test_format_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        format_timestamp(bad)  # type: ignore[arg-type]


def test_round_trips() -> None:
    rng = random.Random(0)
    whole = [0, 1, 59, 60, 61, 3599, 3600, 3661, 86399, 360000] + [
        rng.randrange(0, 10**6) for _ in range(500)
    ]
    for n in whole:
        text = format_timestamp(n)
        assert parse_timestamp(text) == n
        assert format_timestamp(parse_timestamp(text)) == text
    for _ in range(500):
        x = rng.uniform(0, 10**5)
        text = format_timestamp(x, millis=True)
        assert abs(parse_timestamp(text) - x) <= 0.0005 + 1e-6
        assert format_timestamp(parse_timestamp(text), millis=True) == text
        assert format_timestamp(parse_timestamp(format_timestamp(x))) == format_timestamp(x)


def test_short_forms_normalise_to_hh_mm_ss() -> None:
    assert format_timestamp(parse_timestamp("1:05")) == "00:01:05"
    assert format_timestamp(parse_timestamp("75:30")) == "01:15:30"
    assert format_timestamp(parse_timestamp("4530")) == "01:15:30"


# --- clamp_time / clamp_window -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "duration", "expected"), [(-5, 100, 0.0), (50, 100, 50.0), (150, 100, 100.0), (0, 0, 0.0)]
)
def test_clamp_time(t: float, duration: float, expected: float) -> None:
    assert clamp_time(t, duration) == expected


@pytest.mark.parametrize(
    ("t", "duration"), [(float("nan"), 10), (1, float("inf")), (1, -1), (None, 10), (True, 10)]
)
def test_clamp_time_rejects(t: object, duration: object) -> None:
    with pytest.raises(ValueError):
        clamp_time(t, duration)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "end", "duration", "expected"),
    [
        (10, 20, 100, (10.0, 20.0)),
        (-5, 20, 100, (0.0, 20.0)),
        (90, 130, 100, (90.0, 100.0)),
        (-5, 130, 100, (0.0, 100.0)),
        (30, 30, 100, (30.0, 30.0)),  # a point in time is returned as is
        (100, 120, 100, (100.0, 100.0)),  # starts exactly at the end: still inside [0, duration]
    ],
)
def test_clamp_window(start: float, end: float, duration: float, expected: tuple[float, float]) -> None:
    assert clamp_window(start, end, duration) == expected


def test_clamp_window_never_swaps() -> None:
    with pytest.raises(ValueError) as info:
        clamp_window(30, 10, 100)
    message = str(info.value)
    assert "00:00:30 (30 s)" in message and "00:00:10 (10 s)" in message
    assert "timestamp_start" in message  # says how to fix it


def test_clamp_window_outside_the_video() -> None:
    with pytest.raises(ValueError, match=r"starts after the end of the video.*00:01:40"):
        clamp_window(200, 300, 100)
    with pytest.raises(ValueError, match="ends before the start of the video"):
        clamp_window(-20, -10, 100)


def test_clamp_window_limit() -> None:
    ten_min, five_min = 600.0, 300.0  # SAGE: grounding / ASR windows < 10 min, extraction < 5 min
    assert clamp_window(0, 600, 3600, max_window=ten_min) == (0.0, 600.0)  # exactly the limit is fine
    assert clamp_window(0, 900, 480, max_window=ten_min) == (0.0, 480.0)  # the clamped span counts
    assert clamp_window(120, 420, 3600, max_window=five_min) == (120.0, 420.0)
    # Timestamps parsed from text must not fail the limit on float noise.
    assert clamp_window(0.1, 0.1 + 300, 3600, max_window=five_min)[1] == pytest.approx(300.1)
    with pytest.raises(ValueError) as info:
        clamp_window(60, 960, 3600, max_window=ten_min)
    message = str(info.value)
    assert "00:15:00 (900 s) long" in message  # the window's length
    assert "limit of 00:10:00 (600 s)" in message  # the limit
    assert "00:01:00 to 00:11:00" in message and "further calls" in message  # how to fix it
    with pytest.raises(ValueError, match="00:05:00.500"):
        clamp_window(0, 300.5, 3600, max_window=five_min)


@pytest.mark.parametrize(
    "args",
    [
        (float("nan"), 10, 100),
        (0, float("inf"), 100),
        (0, 10, float("nan")),
        (0, 10, -1),
        ("00:00:00", 10, 100),  # parse first: clamp_window works in seconds
    ],
)
def test_clamp_window_rejects_bad_numbers(args: tuple[object, object, object]) -> None:
    with pytest.raises(ValueError):
        clamp_window(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -5, float("nan")])
def test_clamp_window_rejects_bad_limit(limit: float) -> None:
    with pytest.raises(ValueError, match="max_window"):
        clamp_window(0, 10, 100, max_window=limit)


def test_clamp_window_results_are_floats() -> None:
    start, end = clamp_window(1, 2, 3)
    assert type(start) is float and type(end) is float
    assert not math.isnan(start)
