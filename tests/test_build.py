"""The compiled core: it loads, reports how it was built, fails clearly, and ships in a wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sage_fast import _ext

ROOT = Path(__file__).resolve().parents[1]


def test_core_loads_and_reports_its_build() -> None:
    info = _ext.build_info()
    assert info["loaded"] is True
    assert isinstance(info["ffmpeg"], bool) and isinstance(info["cuda"], bool)
    assert info["cuda_devices"] >= 0
    if info["ffmpeg"]:
        assert re.match(r"avformat \d+\.\d+\.\d+", info["ffmpeg_versions"])
        assert hasattr(_ext.load(), "NativeDecoder")


def test_failed_load_names_the_causes(monkeypatch: pytest.MonkeyPatch) -> None:
    import sage_fast

    monkeypatch.setitem(sys.modules, "sage_fast._C", None)  # makes `from sage_fast import _C` fail
    monkeypatch.delattr(sage_fast, "_C", raising=False)
    _ext._load.cache_clear()
    try:
        assert not _ext.available()
        with pytest.raises(_ext.ExtensionLoadError) as caught:
            _ext.load()
        message = str(caught.value)
        assert "not built" in message and "ABI mismatch" in message and "Original error" in message
        assert _ext.build_info()["loaded"] is False
    finally:
        _ext._load.cache_clear()


def test_stub_file_matches_the_module() -> None:
    stub = (ROOT / "sage_fast" / "_C.pyi").read_text()
    core = _ext.load()
    for name in ("build_info", "cuda_device_count", "NativeDecoder"):
        if hasattr(core, name):
            assert f" {name}" in stub
    if hasattr(core, "NativeDecoder"):
        for method in ("metadata", "index_arrays", "decode"):
            assert hasattr(core.NativeDecoder, method) and f"def {method}" in stub


@pytest.mark.slow
def test_pip_wheel_builds_installs_and_imports(tmp_path: Path) -> None:
    """`pip wheel .` gives a wheel with the core, its stub and the Triton kernels package."""
    env = dict(os.environ, SAGE_FAST_CUDA="OFF")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), f"--config-settings=build-dir={tmp_path / 'build'}"],
                   check=True, env=env)
    (wheel,) = (tmp_path / "dist").glob("sage_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.match(r"sage_fast/_C\..*\.so$", n) for n in names), names
    assert "sage_fast/_C.pyi" in names and "sage_fast/kernels/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    probe = ("import sage_fast, sage_fast._C as C, sage_fast.kernels; "
             f"assert sage_fast.__file__.startswith({str(target)!r}); print(C.build_info())")
    # -S: no site-packages, so the editable install of this checkout cannot shadow the wheel.
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)))
    assert "'cuda': False" in out.stdout


def test_readme_and_ci_run_the_same_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"\n{ci}\n" in readme, f"README.md must contain the CI command verbatim: {ci}"
    assert shutil.which("bash")
