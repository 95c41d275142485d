"""Every environment variable sage_fast reads, with its default and meaning, in one place."""

from __future__ import annotations

import os
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from exc


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def decode_threads() -> int:
    """SAGE_FAST_DECODE_THREADS: decoder threads per call (0 = all cores)."""
    return _int("SAGE_FAST_DECODE_THREADS", 0)


def video_cache_size() -> int:
    """SAGE_FAST_VIDEO_CACHE: opened videos kept (index + decoders) for reuse across calls."""
    return _int("SAGE_FAST_VIDEO_CACHE", 8)


FFMPEG_LOG_LEVELS = {"quiet": -8, "panic": 0, "fatal": 8, "error": 16, "warning": 24, "info": 32,
                     "verbose": 40, "debug": 48}


def ffmpeg_log_level() -> int:
    """SAGE_FAST_FFMPEG_LOG: what the native core's FFmpeg prints to stderr (default fatal: our
    errors already say what went wrong). One of quiet, panic, fatal, error, warning, info,
    verbose, debug."""
    raw = os.environ.get("SAGE_FAST_FFMPEG_LOG", "fatal").strip().lower()
    if raw not in FFMPEG_LOG_LEVELS:
        raise ValueError(f"SAGE_FAST_FFMPEG_LOG={raw!r}: use one of {', '.join(FFMPEG_LOG_LEVELS)}")
    return FFMPEG_LOG_LEVELS[raw]


def cache_dir() -> Path:
    """SAGE_FAST_CACHE: where sage_fast keeps what it builds once (tiny models); default
    ~/.cache/sage_fast."""
    return Path(os.environ.get("SAGE_FAST_CACHE", "") or Path.home() / ".cache" / "sage_fast")


def fail_without_cuda() -> bool:
    """SAGE_FAST_FAIL_WITHOUT_CUDA=1: GPU tests fail instead of skipping when no GPU is found."""
    return _flag("SAGE_FAST_FAIL_WITHOUT_CUDA")


def force_impl() -> str | None:
    """SAGE_FAST_FORCE_IMPL=kernel|reference: force one side of the Triton kernels."""
    value = os.environ.get("SAGE_FAST_FORCE_IMPL", "").strip().lower() or None
    if value not in {None, "kernel", "reference"}:
        raise ValueError(f"SAGE_FAST_FORCE_IMPL={value!r}: use 'kernel' or 'reference'")
    return value
