"""The `sage-fast` CLI: doctor, sample-video, video-info and frames, in-process and as the console script.

Bad input must end with exit code 1 and one line on stderr that names the file, never a traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sage_fast.cli.main import main
from sage_fast.video import VideoReader
from sage_fast.video.synth import make_broken_inputs

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")

DURATION_S = 6.0
JPEG = re.compile(r"frame_\d{3}_(\d\d)-(\d\d)-(\d\d)\.(\d{3})\.jpg")


def jpeg_seconds(folder: Path) -> list[float]:
    """Timestamps in the names of the JPEGs `frames --out-dir` wrote, in name order."""
    stamps = []
    for path in sorted(folder.iterdir()):
        match = JPEG.fullmatch(path.name)
        assert match is not None, f"unexpected file {path.name}"
        hours, minutes, seconds, millis = (int(g) for g in match.groups())
        stamps.append(hours * 3600 + minutes * 60 + seconds + millis / 1000)
    return stamps


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sage-fast sample-video OUT --duration 6 --quiet`, run once for the module."""
    path = tmp_path_factory.mktemp("cli") / "sample.mp4"
    assert main(["sample-video", str(path), "--duration", str(DURATION_S), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_broken_inputs(tmp_path_factory.mktemp("broken"))


def test_doctor_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "compiled core: loaded" in out
    assert re.search(r"^\s+pyav\s+ok", out, re.MULTILINE)


def test_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compiled_core"]["loaded"] is True
    assert report["decode_backends"]["native"].startswith("ok")
    assert report["decode_backends"]["pyav"].startswith("ok")
    assert report["ffmpeg_cli"].startswith("ffmpeg version")
    assert report["auto_backend"]["cpu"] in ("native", "torchcodec", "pyav")
    assert report["agent"]["rollout scheduler"] == "C++ core"  # the test install builds the compiled core
    assert "gemini" in report["agent"]["orchestrators"]  # google-genai is in the test extra
    assert "offline-tiny.en ready" in report["agent"]["speech"]
    assert "sft: TRL" in report["agent"]["training"] and "HF datasets" in report["agent"]["training"]  # test extra


def test_sample_video_has_audio(sample: Path) -> None:
    meta = VideoReader(sample).metadata
    assert meta.has_audio
    assert meta.duration_seconds == pytest.approx(DURATION_S, abs=0.1)
    assert (meta.width, meta.height) == (640, 360)


def test_video_info_text(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["video-info", str(sample)]) == 0
    out = capsys.readouterr().out
    assert str(sample) in out
    assert "640x360" in out and "audio: yes" in out
    assert re.search(r"keyframes\s+3, every 2\.00 s", out)


def test_video_info_json(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["video-info", str(sample), "--json", "--backend", "pyav"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(sample) and info["backend"] == "pyav"
    assert info["keyframe_seconds"] == pytest.approx([0.0, 2.0, 4.0])
    assert info["num_frames"] == 150 and info["has_audio"] is True


def test_frames_out_dir_and_contact_sheet(sample: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    args = ["frames", str(sample), "-n", "6", "--out-dir", str(tmp_path / "jpgs"), "--contact-sheet", str(sheet),
            "--width", "160", "--quiet"]
    assert main(args) == 0
    stamps = jpeg_seconds(tmp_path / "jpgs")
    assert len(stamps) == 6 and stamps == sorted(stamps) and stamps[0] >= 0 and stamps[-1] < DURATION_S
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        width, height = image.size
    thumb_h = 90  # 640x360 scaled to 160 wide
    assert width % 160 == 0 and 160 <= width <= 6 * 160
    columns = width // 160
    assert height == -(-6 // columns) * (thumb_h + 18)  # rows x (thumbnail + label strip)
    assert [p.name for p in tmp_path.rglob(".*")] == []


def test_frames_window(sample: Path, tmp_path: Path) -> None:
    assert main(["frames", str(sample), "-n", "4", "--start", "00:00:02", "--end", "4",
                 "--out-dir", str(tmp_path), "--quiet"]) == 0
    stamps = jpeg_seconds(tmp_path)
    assert len(stamps) == 4 and all(2.0 <= t < 4.0 for t in stamps)


def test_frames_skim_gives_keyframes(sample: Path, tmp_path: Path) -> None:
    assert main(["frames", str(sample), "-n", "6", "--mode", "skim", "--out-dir", str(tmp_path), "--quiet"]) == 0
    stamps = jpeg_seconds(tmp_path)
    assert len(stamps) == 6 and set(stamps) <= {0.0, 2.0, 4.0}


def one_error_line(err: str, command: str, path: Path | str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith(f"sage-fast {command}: error: ")
    assert str(path) in lines[0]
    return lines[0]


@pytest.mark.parametrize("name", ["missing", "directory", "empty", "not_a_video", "audio_only", "zero_length"])
@pytest.mark.parametrize("command", ["video-info", "frames"])
def test_bad_input_is_one_line_and_exit_1(broken: dict[str, Path], tmp_path: Path, name: str, command: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = {"missing": tmp_path / "missing.mp4", "directory": tmp_path}.get(name) or broken[name]
    extra = ["--out-dir", str(tmp_path / "out"), "--quiet"] if command == "frames" else []
    assert main([command, str(path), *extra]) == 1
    one_error_line(capsys.readouterr().err, command, path)


def test_frames_without_outputs_is_an_error(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frames", str(sample)]) == 1
    assert "nothing to write" in one_error_line(capsys.readouterr().err, "frames", sample)


def test_frames_empty_window_is_an_error(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frames", str(sample), "--start", "5", "--end", "2", "--out-dir", str(tmp_path)]) == 1
    assert "empty window" in one_error_line(capsys.readouterr().err, "frames", sample)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["missing", "not_a_video"])
def test_console_script(broken: dict[str, Path], tmp_path: Path, name: str) -> None:
    """The installed `sage-fast` entry point, in a fresh process: exit status 1 and one line on stderr."""
    script = shutil.which("sage-fast") or str(Path(sys.executable).with_name("sage-fast"))
    if not Path(script).exists():
        pytest.skip("the sage-fast console script is not installed")
    path = tmp_path / "missing.mp4" if name == "missing" else broken[name]
    result = subprocess.run([script, "video-info", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    one_error_line(result.stderr, "video-info", path)


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in ("doctor", "sample-video", "video-info", "frames"))
