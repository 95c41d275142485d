"""Timestamps for SAGE's tools: parse what a model wrote, format what it reads, clamp windows to the video.

SAGE's tools (ground-event, transcribe-speech, extract-video-parts) take ``timestamp_start`` /
``timestamp_end`` as ``HH:MM:SS`` strings written by the model itself, and the prompts show the
video's duration in the same form. Model output is untrusted input: every function here either
returns a clean number of seconds or raises a ``ValueError`` whose message names the bad value and
says what would be accepted, because the tool loop hands that message back to the model as the
tool's result (DESIGN.md §2, "an invalid call ... becomes an error string"), and a message the model
can act on is how it recovers in the next step.

Conventions, matched to the reference code so that released SAGE-MM checkpoints see what they
were trained on:

* ``HH:MM:SS`` with zero-padded fields; hours are not capped at 99 (a 100-hour recording is
  ``100:00:00``).
* Whole-second formatting truncates (``62.9`` s is ``00:01:02``), as the reference's
  ``seconds_to_timestamp`` does: a shown time never lies past the real one.
* Windows are clamped to ``[0, duration]`` (the reference clamps timestamps to the duration), but
  nothing is ever swapped or invented silently: a reversed window or one that lies wholly outside
  the video is an error that says so.
"""

from __future__ import annotations

import math
import numbers
import re

__all__ = [
    "ACCEPTED_FORMS",
    "clamp_time",
    "clamp_window",
    "format_timestamp",
    "parse_timestamp",
]

ACCEPTED_FORMS = (
    "accepted forms: 'HH:MM:SS' (e.g. '00:01:05'), 'MM:SS' (e.g. '01:05'), 'SS' (e.g. '65'), "
    "each with optional fractional seconds (e.g. '00:01:05.5'), or a non-negative number of seconds"
)
"""The sentence every parse error ends with, so the model always sees how to write a timestamp."""

# ASCII digits only: ``\d`` would also accept e.g. Arabic-Indic digits, which float() then parses.
_INT_FIELD = re.compile(r"[0-9]+")
_SECONDS_FIELD = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _parse_error(value: object, reason: str, name: str) -> ValueError:
    return ValueError(f"invalid {name} {value!r}: {reason}; {ACCEPTED_FORMS}")


def _finite_float(value: object, name: str) -> float:
    """``value`` as a finite float, or a ValueError naming ``name`` (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return result


def parse_timestamp(value: str | float | int, *, name: str = "timestamp") -> float:
    """Seconds from a model-written timestamp: ``"HH:MM:SS"``, ``"MM:SS"``, ``"SS"`` or a number.

    The last field may carry a fraction (``"00:01:02.5"`` is 62.5 s). In ``HH:MM:SS`` minutes and
    seconds must be below 60; in ``MM:SS`` the seconds must be, while the minutes may run past 59
    (``"75:30"`` is 75 min 30 s: models write long offsets that way). A plain number (int, float or
    a numeric string) is taken as seconds.

    Rejected with a ``ValueError`` that repeats the value and lists the accepted forms: negatives,
    NaN/inf, booleans, empty strings, more than three fields, empty or non-digit fields, a
    fraction anywhere but the seconds, and out-of-range minutes/seconds. ``name`` (e.g.
    ``"timestamp_start"``) is used in the message so that the model knows which argument was wrong.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise _parse_error(value, "it is empty", name)
        if text.startswith("-"):
            raise _parse_error(value, "timestamps cannot be negative", name)
        fields = text.split(":")
        if len(fields) > 3:
            raise _parse_error(
                value, f"it has {len(fields)} ':'-separated fields, at most 3 are allowed", name
            )
        *leading, last = fields
        for field in leading:
            if not _INT_FIELD.fullmatch(field):
                reason = (
                    "only the seconds may have a fraction"
                    if _SECONDS_FIELD.fullmatch(field)
                    else f"field {field!r} is not a whole number"
                )
                raise _parse_error(value, reason, name)
        if not _SECONDS_FIELD.fullmatch(last):
            reason = (
                f"seconds field {last!r} is not a number" if leading else "it is not a number or a timestamp"
            )
            raise _parse_error(value, reason, name)
        seconds = float(last)
        if leading and seconds >= 60:
            raise _parse_error(value, f"seconds must be below 60 when minutes are given, got {last!r}", name)
        if len(leading) == 2 and int(leading[1]) >= 60:
            raise _parse_error(
                value,
                f"minutes must be below 60 in HH:MM:SS, got {leading[1]!r} (carry them into the hours)",
                name,
            )
        whole = 0
        for field in leading:
            whole = whole * 60 + int(field)
        try:
            total = whole * 60 + seconds if leading else seconds
        except OverflowError:
            total = math.inf
        if not math.isfinite(total):
            raise _parse_error(value, "it is too large", name)
        return total

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _parse_error(value, f"expected a string or a number, got {type(value).__name__}", name)
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise _parse_error(value, "it is not a finite number", name)
    if seconds < 0:
        raise _parse_error(value, "timestamps cannot be negative", name)
    return seconds


def format_timestamp(seconds: float, *, millis: bool = False) -> str:
    """``"HH:MM:SS"`` (truncated to the second) or, with ``millis``, ``"HH:MM:SS.mmm"`` (rounded).

    Hours are zero-padded to two digits but not capped (``360000`` s is ``"100:00:00"``).
    Truncation matches the reference code's formatting of durations and offsets; a tiny guard
    (rounding to the microsecond first) keeps float noise such as ``2.9999999999`` from showing as
    ``00:00:02``. Raises ``ValueError`` for negative, NaN or infinite input: those have no
    timestamp, and printing one would hide a bug upstream.
    """
    value = _finite_float(seconds, "seconds")
    if value < 0:
        raise ValueError(f"cannot format a negative time as a timestamp: {seconds!r}")
    if millis:
        total_ms = round(value * 1000)
        whole, ms = divmod(total_ms, 1000)
    else:
        whole, ms = math.floor(round(value, 6)), 0
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{text}.{ms:03d}" if millis else text


def _seconds(t: float) -> str:
    """Seconds for messages, without exponent notation or float noise: ``65``, ``62.5``, ``-3``."""
    return f"{t:.3f}".rstrip("0").rstrip(".")


def _describe(t: float) -> str:
    """A time for error messages: ``00:01:05 (65 s)``; negatives (which have no timestamp) as seconds."""
    if t < 0:
        return f"{_seconds(t)} s"
    return f"{format_timestamp(t, millis=t != math.floor(t))} ({_seconds(t)} s)"


def clamp_time(t: float, duration: float) -> float:
    """``t`` clamped to ``[0, duration]`` (both in seconds); ValueError on NaN/inf or a negative duration."""
    time = _finite_float(t, "time")
    length = _finite_float(duration, "duration")
    if length < 0:
        raise ValueError(f"duration must be non-negative, got {duration!r}")
    return min(max(time, 0.0), length)


def clamp_window(
    start: float, end: float, duration: float, *, max_window: float | None = None
) -> tuple[float, float]:
    """``(start, end)`` in seconds clamped to ``[0, duration]``, checked against a tool's window limit.

    SAGE's tools bound the span they look at (grounding and transcription windows under 10 min,
    extraction under 5 min): a long window would make the tool model skim, or take minutes of
    decoding and ASR, so the limit is enforced here instead of being silently truncated, and the
    error tells the model how to split its request. The limit applies to the clamped window (a
    request for 00:00:00-00:15:00 on an 8-minute video is fine), and a window of exactly
    ``max_window`` is accepted (models naturally ask for 00:00:00-00:10:00).

    Raises ``ValueError`` (message names both ends and what to do) when ``start > end`` (never
    swapped: a reversed window usually means the model confused two events), when the window lies
    wholly after the end of the video or before its start, or when it is longer than
    ``max_window``. A zero-length window (``start == end``) is returned as is.
    """
    s = _finite_float(start, "window start")
    e = _finite_float(end, "window end")
    length = _finite_float(duration, "duration")
    if length < 0:
        raise ValueError(f"duration must be non-negative, got {duration!r}")
    if s > e:
        raise ValueError(
            f"window start {_describe(s)} is after window end {_describe(e)}; "
            "give the earlier time as timestamp_start and the later one as timestamp_end"
        )
    if s > length:
        raise ValueError(
            f"window {_describe(s)} to {_describe(e)} starts after the end of the video, which is "
            f"{_describe(length)} long; choose times between 00:00:00 and {format_timestamp(length)}"
        )
    if e < 0:
        raise ValueError(
            f"window {_describe(s)} to {_describe(e)} ends before the start of the video; "
            f"choose times between 00:00:00 and {format_timestamp(length)}"
        )
    s, e = max(s, 0.0), min(e, length)
    if max_window is not None:
        limit = _finite_float(max_window, "max_window")
        if limit <= 0:
            raise ValueError(f"max_window must be positive, got {max_window!r}")
        # 1 µs of slack: the window was parsed from text and float noise must not reject an exact limit.
        if e - s > limit + 1e-6:
            suggestion_end = min(s + limit, length)
            raise ValueError(
                f"window {_describe(s)} to {_describe(e)} is {_describe(e - s)} long, over this tool's "
                f"limit of {_describe(limit)}; ask for at most {_seconds(limit)} s per call, e.g. "
                f"{format_timestamp(s)} to {format_timestamp(suggestion_end)}, and make further calls "
                "for the rest"
            )
    return s, e
