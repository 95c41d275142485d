"""extract_parts_from_timestamp: right frames and clips, limits enforced, model arguments contained."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.tools.schema import function_schema
from sage_fast.tools.video_tools import extract_parts_from_timestamp
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video, read_frame_index


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 12 minutes at 1 fps: long enough for the 5-minute limit, cheap to make.
    return make_indexed_video(tmp_path_factory.mktemp("v") / "long.mp4",
                              IndexedVideoSpec(num_frames=720, fps=1.0, gop=30, bframes=2))


@pytest.fixture
def context(video: Path, tmp_path: Path) -> ToolContext:
    return ToolContext(video_path=video, work_dir=tmp_path / "work")


def test_schema_is_what_the_model_sees() -> None:
    function = function_schema(extract_parts_from_timestamp)["function"]
    assert function["name"] == "extract_parts_from_timestamp"
    assert list(function["parameters"]["properties"]) == ["video_path", "timestamp_start", "timestamp_end",
                                                          "extract_type"]
    assert function["parameters"]["required"] == ["video_path", "timestamp_start", "timestamp_end"]


def test_frames_are_the_frames_at_their_named_times(context: ToolContext, video: Path) -> None:
    result = extract_parts_from_timestamp(context, str(video), "00:02:00", "00:03:40")
    lines = result.splitlines()[1:]
    assert len(lines) == 10 and result.startswith("Extracted 10 frames of 00:02:00.000 to 00:03:40.000")
    for line in lines:
        stamp, path = line.split(": ", 1)
        hours, minutes, seconds = stamp.split(":")
        t = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        assert 120 <= t <= 220 and Path(path).parent.parent == context.work_dir / "extract"
        assert read_frame_index(np.asarray(Image.open(path).convert("RGB"))) == round(t)  # 1 fps: index = t


def test_subclip(context: ToolContext, video: Path) -> None:
    result = extract_parts_from_timestamp(context, str(video), "00:01:00", "00:01:30", extract_type="subclips")
    clip = Path(result.splitlines()[-1])
    assert clip.suffix == ".mp4" and clip.is_file() and context.work_dir in clip.parents


@pytest.mark.parametrize(("start", "end", "problem"), [
    ("00:00:00", "00:05:01", "limit"),
    ("00:30:00", "00:31:00", "after the end of the video"),
    ("00:03:00", "00:02:00", "after window end"),
    ("00:01:00", "00:01:00", "empty"),
    ("yesterday", "00:01:00", "timestamp_start"),
])
def test_bad_windows_are_actionable_errors(context: ToolContext, video: Path, start: str, end: str,
                                           problem: str) -> None:
    with pytest.raises(ToolInputError, match=problem):
        extract_parts_from_timestamp(context, str(video), start, end)


def test_clamped_past_the_end(context: ToolContext, video: Path) -> None:
    result = extract_parts_from_timestamp(context, str(video), "00:10:00", "00:14:00")
    assert "00:10:00.000 to 00:12:00.000" in result.splitlines()[0]


@pytest.mark.parametrize("other", ["/etc/passwd", "../long.mp4", "", "long.mp4"])
def test_other_videos_are_refused(context: ToolContext, other: str) -> None:
    with pytest.raises(ToolInputError, match="not this episode's video|must be the episode's video"):
        extract_parts_from_timestamp(context, other, "00:00:00", "00:01:00")


def test_the_same_file_by_another_spelling_is_accepted(context: ToolContext, video: Path, tmp_path: Path) -> None:
    link = tmp_path / "alias.mp4"
    os.symlink(video, link)
    assert context.check_video_path(str(link)) == video
    assert context.check_video_path(f"  {video}  ") == video


def test_media_paths_must_stay_in_the_work_folder(context: ToolContext, tmp_path: Path) -> None:
    inside = context.work_dir / "extract" / "a.jpg"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"x")
    assert context.check_media_path(str(inside)) == inside.resolve()
    assert context.check_media_path("extract/a.jpg") == inside.resolve()
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    escape = context.work_dir / "extract" / "link.jpg"
    os.symlink(outside, escape)
    for bad in (str(outside), "../secret.txt", str(escape), "/etc/passwd"):
        with pytest.raises(ToolInputError, match="outside"):
            context.check_media_path(bad)
    with pytest.raises(ToolInputError, match="does not exist"):
        context.check_media_path("extract/missing.jpg")
