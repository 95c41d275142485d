"""``sage-fast tool``: one tool by hand through the agent's own registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.cli.main import main
from sage_fast.cli.tool import parse_arguments
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video, read_frame_index


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "t.mp4", IndexedVideoSpec(num_frames=120, fps=2.0))


def test_extract_by_hand_writes_the_named_frames(video: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["tool", "extract_parts_from_timestamp", "--video", str(video), "--work-dir", str(tmp_path),
                 "--arg", f"video_path={video}", "--arg", "timestamp_start=00:00:10",
                 "--arg", "timestamp_end=00:00:20", "--arg", "unknown=1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("Extracted 10 frames of 00:00:10.000 to 00:00:20.000")
    first = Path(lines[1].split(": ", 1)[1])
    assert first.is_file() and str(first).startswith(str(tmp_path))
    import numpy as np
    from PIL import Image

    assert read_frame_index(np.asarray(Image.open(first).convert("RGB"))) == 21  # 10.5 s at 2 fps
    assert "dropped unknown arguments: unknown" in captured.err


def test_errors_are_results_and_missing_backends_are_named(video: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["tool", "extract_parts_from_timestamp", "--video", str(video), "--work-dir", str(tmp_path),
                 "--arg", "video_path=/etc/passwd", "--arg", "timestamp_start=0", "--arg", "timestamp_end=5"]) == 1
    assert "Invalid arguments" in capsys.readouterr().out
    assert main(["tool", "perform_reasoning", "--video", str(video)]) == 1
    assert "needs --tool-model" in capsys.readouterr().err
    assert main(["tool", "extract_parts_from_timestamp", "--video", str(tmp_path / "missing.mp4")]) == 1
    assert "--video" in capsys.readouterr().err
    assert main(["tool", "--list"]) == 0
    names = [s["function"]["name"] for s in json.loads(capsys.readouterr().out)]
    assert names == ["extract_parts_from_timestamp"]


def test_arguments_parse_as_json_when_they_can() -> None:
    assert parse_arguments(["a=1", "b=[\"x\", \"y\"]", "c=00:01:00", "d=some text"]) == {
        "a": 1, "b": ["x", "y"], "c": "00:01:00", "d": "some text"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_arguments(["novalue"])
