"""pytest set-up for the benchmark suites: collection of ``bench_*.py``, videos, machine facts.

The suites live outside ``testpaths`` (tests/), so a plain ``pytest`` never runs them; they run
when named: ``python -m pytest bench/bench_decode.py --benchmark-only``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.videos import ensure_video


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collects ``bench_*.py`` when the folder is given (``pytest bench/``); named files already are."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Versions of everything that decodes in this suite, FFmpeg builds included (there are 3)."""
    versions: dict[str, str] = {}
    for name in ("torch", "av", "torchcodec", "decord", "numpy", "sage_fast"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # a missing provider is reported, not fatal here
            versions[name] = f"unavailable ({type(exc).__name__})"
    try:
        import av

        versions["ffmpeg (PyAV, bundled)"] = str(av.ffmpeg_version_info)
    except Exception:
        pass
    try:
        from sage_fast import _ext

        versions["ffmpeg (sage_fast native, torchcodec: system)"] = str(_ext.build_info().get("ffmpeg_versions"))
    except Exception:
        pass
    versions["ffmpeg (decord, bundled)"] = "4.1 (avcodec 58.35, in decord's wheel)" if "unavailable" not in versions["decord"] else "-"
    return versions


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Stores the facts bench/report.py prints next to the ratios."""
    machine_info["cpu_model"] = cpu_model()
    machine_info["cores"] = os.cpu_count()
    machine_info["library_versions"] = library_versions()
    machine_info["small_videos"] = os.environ.get("SAGE_BENCH_SMALL", "")


@contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        yield
        return
    with capture.global_and_fixture_disabled():
        yield


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Prints past pytest's output capture (progress of minute-long steps, measured numbers)."""

    def _say(message: str) -> None:
        with _uncaptured(pytestconfig):
            print(message, flush=True)

    return _say


@pytest.fixture(scope="session")
def bench_video(say: Callable[[str], None]) -> Callable[[str], Path]:
    """``bench_video(name)``: path of a benchmark video, generated on first use (minutes)."""
    return lambda name: ensure_video(name, log=say)
