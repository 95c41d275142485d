"""Decode backends and the rule that picks one: ``auto``, or a backend forced by name."""

from __future__ import annotations

from pathlib import Path

from sage_fast import _ext
from sage_fast.video.backends.base import DecodeBackend
from sage_fast.video.errors import BackendUnavailableError

BACKENDS = ("auto", "native", "torchcodec", "pyav", "dali")


def torchcodec_available() -> bool:
    """True when torchcodec imports (its FFmpeg libraries load)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:
        return False
    return True


def cpu_backends() -> list[str]:
    """The CPU backends that work in this installation, fastest first (doctor and tests use it)."""
    names = ["native"] if _ext.has_native_decoder() else []
    names.append("pyav")
    if torchcodec_available():
        names.append("torchcodec")
    return names


def choose_backend(backend: str, device: str) -> str:
    """Resolves ``auto``: DALI on a GPU, else the native core, else torchcodec, else PyAV.

    The native core comes before torchcodec because it decodes the same exact frames faster
    (bench/RESULTS.md); the issue's order (DALI, torchcodec, PyAV) is kept for the rest.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if str(device).startswith("cuda"):
        from sage_fast.video.backends.dali_backend import dali_available

        if dali_available():
            return "dali"
    if _ext.has_native_decoder():
        return "native"
    if torchcodec_available():
        return "torchcodec"
    return "pyav"


def open_backend(path: Path, backend: str, device: str, num_threads: int) -> DecodeBackend:
    """Opens ``path`` with the named backend (already resolved from ``auto``)."""
    if backend == "native":
        from sage_fast.video.backends.native_backend import NativeBackend

        return NativeBackend(path, num_threads=num_threads)
    if backend == "pyav":
        from sage_fast.video.backends.pyav_backend import PyAVBackend

        return PyAVBackend(path, num_threads=num_threads)
    index = _shared_index(path)
    if backend == "torchcodec":
        if not torchcodec_available():
            raise BackendUnavailableError(
                "backend 'torchcodec' is not installed or does not load: `pip install torchcodec` "
                "(on the CPU-only machines here: `pip install torchcodec==0.13.0`)"
            )
        from sage_fast.video.backends.torchcodec_backend import TorchCodecBackend

        return TorchCodecBackend(path, index, device=device, num_threads=num_threads)
    if backend == "dali":
        from sage_fast.video.backends.dali_backend import DaliBackend

        return DaliBackend(path, index, device=device, num_threads=num_threads)
    raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _shared_index(path: Path):  # noqa: ANN202 (VideoIndex)
    """The frame index for backends that do not build one: native scan when built, else PyAV."""
    if _ext.has_native_decoder():
        from sage_fast.video.backends.native_backend import NativeBackend

        return NativeBackend(path).index
    from sage_fast.video.index import build_index_pyav

    return build_index_pyav(path)


__all__ = ["BACKENDS", "DecodeBackend", "choose_backend", "cpu_backends", "open_backend", "torchcodec_available"]
