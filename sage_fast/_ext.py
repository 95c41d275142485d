"""Loads the compiled core ``sage_fast._C``; the only module that imports it.

Keeping the import in one place gives one clear error when the core is missing or was built for
another Python/FFmpeg, instead of an ImportError deep inside the video code. Callers that can
fall back (the PyAV decoder does) ask :func:`available` first.
"""

from __future__ import annotations

import functools
from types import ModuleType


class ExtensionLoadError(ImportError):
    """The compiled core could not be loaded; the message lists the likely causes."""


@functools.cache
def _load() -> ModuleType | BaseException:
    try:
        from sage_fast import _C
    except Exception as exc:  # keep the original exception for the message
        return exc
    if hasattr(_C, "set_ffmpeg_log_level"):
        from sage_fast import envs

        _C.set_ffmpeg_log_level(envs.ffmpeg_log_level())
    return _C


def load() -> ModuleType:
    """Returns ``sage_fast._C`` or raises :class:`ExtensionLoadError` naming the likely causes."""
    loaded = _load()
    if isinstance(loaded, BaseException):
        raise ExtensionLoadError(
            "sage_fast's compiled core (sage_fast._C) failed to load. Likely causes:\n"
            "  1. not built: run `pip install .` from the repository (or `pip install -e . "
            "--no-build-isolation`) instead of using the source tree directly;\n"
            "  2. ABI mismatch: it was built for another Python version or FFmpeg version "
            "(rebuild with `pip install --force-reinstall --no-deps .`);\n"
            "  3. missing shared libraries: FFmpeg's libavformat/libavcodec/libswscale "
            "(Debian: `apt-get install -y ffmpeg`).\n"
            f"Original error: {type(loaded).__name__}: {loaded}"
        ) from loaded
    return loaded


def available() -> bool:
    """True when the compiled core loads."""
    return not isinstance(_load(), BaseException)


def has_native_decoder() -> bool:
    """True when the core was built against FFmpeg's libraries (``NativeDecoder`` exists)."""
    return available() and hasattr(load(), "NativeDecoder")


def build_info() -> dict[str, object]:
    """How the core was built; ``{'loaded': False, 'error': ...}`` when it does not load."""
    loaded = _load()
    if isinstance(loaded, BaseException):
        return {"loaded": False, "error": f"{type(loaded).__name__}: {loaded}"}
    info = dict(loaded.build_info())
    info["loaded"] = True
    info["cuda_devices"] = loaded.cuda_device_count()
    return info
