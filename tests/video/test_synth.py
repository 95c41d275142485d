"""Tests for sage_fast.video.synth: indexed videos round-trip, sample video shape, broken inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sage_fast.video import synth
from sage_fast.video.synth import (
    IndexedVideoSpec,
    SampleVideoConfig,
    ffprobe,
    frame_times,
    make_broken_inputs,
    make_indexed_video,
    make_sample_video,
    read_frame_index,
    render_index_frame,
)

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs the ffmpeg CLI"
)


def decode_rgb(path: Path, width: int, height: int, *, autorotate: bool = False) -> np.ndarray:
    """All frames of `path` as (N, H, W, 3) uint8 via the ffmpeg CLI, one output frame per decoded frame."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin"]
    if not autorotate:
        cmd.append("-noautorotate")
    cmd += [
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def key_frame_indices(path: Path) -> list[int]:
    """Display-order indices of the key frames of the first video stream."""
    frames = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=key_frame")["frames"]
    return [i for i, f in enumerate(frames) if f["key_frame"] == 1]


def video_pts_seconds(path: Path) -> np.ndarray:
    """Sorted presentation times (s) of the video packets, from ffprobe."""
    packets = ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts_time")["packets"]
    return np.sort(np.array([float(p["pts_time"]) for p in packets]))


def stream_types(path: Path) -> list[str]:
    return [s["codec_type"] for s in ffprobe(path, "-show_streams")["streams"]]


# --------------------------------------------------------------------------- the frame code


def test_code_roundtrip_in_memory_and_torch() -> None:
    for index in [*range(0, 4096, 97), 4095]:
        assert read_frame_index(render_index_frame(index, 48, 64)) == index
    torch = pytest.importorskip("torch")
    frame = render_index_frame(1234, 121, 161)
    assert read_frame_index(torch.from_numpy(frame).permute(2, 0, 1)) == 1234


def test_code_rejects_non_indexed_frames() -> None:
    for value in (0, 255):
        with pytest.raises(ValueError, match="check bits"):
            read_frame_index(np.full((120, 160, 3), value, np.uint8))
    with pytest.raises(ValueError, match="at least"):
        read_frame_index(np.zeros((40, 40, 3), np.uint8))


# --------------------------------------------------------------------------- indexed videos

CASES = {
    "x264_bframes.mp4": IndexedVideoSpec(num_frames=40, bframes=3, gop=10),
    "mpeg4.mp4": IndexedVideoSpec(num_frames=40, codec="mpeg4", gop=10),
    "mpeg4_bf3.mkv": IndexedVideoSpec(num_frames=23, codec="mpeg4", gop=7, bframes=3),
    "vp9_altref.webm": IndexedVideoSpec(num_frames=40, codec="libvpx-vp9", gop=10),
    "vp9_realtime.mkv": IndexedVideoSpec(num_frames=30, codec="libvpx-vp9", bframes=0),
    "x264_odd444.mkv": IndexedVideoSpec(num_frames=30, width=161, height=121, pix_fmt="yuv444p"),
    "mpeg4_odd.avi": IndexedVideoSpec(num_frames=30, codec="mpeg4", width=161, height=121),
    "vp9_odd.webm": IndexedVideoSpec(num_frames=20, codec="libvpx-vp9", width=65, height=49, bframes=0),
    "x264_min.mp4": IndexedVideoSpec(num_frames=30, width=64, height=48),
    "x264_big_pc709.mp4": IndexedVideoSpec(
        num_frames=15, width=640, height=360, color_range="pc", colorspace="bt709"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_indexed_video_decodes_to_its_indices(tmp_path: Path, name: str) -> None:
    spec = CASES[name]
    path = make_indexed_video(tmp_path / name, spec)
    frames = decode_rgb(path, spec.width, spec.height)
    assert [read_frame_index(f) for f in frames] == list(range(spec.num_frames))
    assert key_frame_indices(path) == list(range(0, spec.num_frames, spec.gop))
    assert sorted(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_bframes_really_reorder(tmp_path: Path) -> None:
    path = make_indexed_video(tmp_path / "b.mp4", IndexedVideoSpec(num_frames=24))
    frames = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=pict_type")["frames"]
    assert "B" in {f["pict_type"] for f in frames}
    assert ffprobe(path, "-show_streams")["streams"][0]["has_b_frames"] > 0


def test_vfr_has_unequal_durations_matching_frame_times(tmp_path: Path) -> None:
    spec = IndexedVideoSpec(num_frames=30, vfr=True, audio=True)
    path = make_indexed_video(tmp_path / "vfr.mp4", spec)
    pts = video_pts_seconds(path)
    durations = np.round(np.diff(pts), 6)
    assert len(set(durations.tolist())) >= 3
    np.testing.assert_allclose(pts, frame_times(spec), atol=1e-6)
    assert abs(np.mean(np.diff(frame_times(spec))[:25]) - 1 / spec.fps) < 1e-9  # mean rate is still fps
    frames = decode_rgb(path, spec.width, spec.height)
    assert [read_frame_index(f) for f in frames] == list(range(spec.num_frames))
    assert stream_types(path) == ["video", "audio"]


def test_vfr_timestamps_in_pyav(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    spec = IndexedVideoSpec(num_frames=20, vfr=True, codec="libvpx-vp9")
    path = make_indexed_video(tmp_path / "vfr.webm", spec)
    with av.open(str(path)) as container:
        decoded = [
            (f.time, read_frame_index(f.to_ndarray(format="rgb24"))) for f in container.decode(video=0)
        ]
    assert [i for _, i in decoded] == list(range(20))
    np.testing.assert_allclose([t for t, _ in decoded], frame_times(spec), atol=1.001e-3)  # WebM stores ms


@pytest.mark.parametrize("rotation, reported", [(90, 90), (270, -90)])
def test_rotation_metadata(tmp_path: Path, rotation: int, reported: int) -> None:
    spec = IndexedVideoSpec(num_frames=12, rotation=rotation)
    path = make_indexed_video(tmp_path / "rot.mp4", spec)
    stream = ffprobe(path, "-show_streams")["streams"][0]
    matrix = [sd for sd in stream.get("side_data_list", []) if sd.get("side_data_type") == "Display Matrix"]
    assert matrix and int(matrix[0]["rotation"]) == reported
    stored = decode_rgb(path, spec.width, spec.height)
    assert [read_frame_index(f) for f in stored] == list(range(12))
    # ffmpeg's autorotate shows the picture rotated; undoing it as documented restores the code.
    shown = decode_rgb(path, spec.height, spec.width, autorotate=True)
    with pytest.raises(ValueError):
        read_frame_index(shown[3])
    assert read_frame_index(np.rot90(shown[3], k=-rotation // 90)) == 3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"width": 161, "height": 121}, "width x height"),
        ({"width": 32}, "width x height"),
        ({"codec": "mpeg4", "pix_fmt": "yuv444p"}, "pix_fmt"),
        ({"codec": "h265"}, "codec"),
        ({"rotation": 45}, "rotation"),
        ({"num_frames": 5000}, "num_frames"),
        ({"gop": 0}, "gop"),
        ({"color_range": "full"}, "color_range"),
    ],
)
def test_spec_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        IndexedVideoSpec(**kwargs)


def test_container_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="webm"):
        make_indexed_video(tmp_path / "a.webm", IndexedVideoSpec())
    with pytest.raises(ValueError, match="vfr"):
        make_indexed_video(tmp_path / "a.avi", IndexedVideoSpec(vfr=True))
    with pytest.raises(ValueError, match="rotation"):
        make_indexed_video(tmp_path / "a.mkv", IndexedVideoSpec(rotation=90))
    with pytest.raises(ValueError, match="container"):
        make_indexed_video(tmp_path / "a.gif", IndexedVideoSpec())
    assert list(tmp_path.iterdir()) == []


def test_missing_ffmpeg_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y ffmpeg"):
        make_indexed_video(tmp_path / "a.mp4", IndexedVideoSpec(num_frames=2))


# --------------------------------------------------------------------------- sample video


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    return make_sample_video(folder / "sample.mp4", duration_s=7.0, width=320, height=180, progress=False)


def test_sample_video_layout(sample_video: Path) -> None:
    assert sorted(p.name for p in sample_video.parent.iterdir()) == ["sample.mp4"]  # written atomically
    info = ffprobe(sample_video, "-show_streams", "-show_format")
    assert abs(float(info["format"]["duration"]) - 7.0) <= 0.2
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"]) == (
        "h264",
        "yuv420p",
        320,
        180,
    )
    assert video["has_b_frames"] > 0
    assert audio["codec_name"] == "aac"
    assert abs(float(audio["duration"]) - 7.0) <= 0.2
    keys = key_frame_indices(sample_video)
    assert keys == [0, 50, 100, 150]  # 25 fps, 2 s GOP, scene cuts add none
    frames = decode_rgb(sample_video, 320, 180)
    assert len(frames) == 175
    # Distinct scenes: frames from different scenes differ much more than neighbours in one scene.
    scenes = SampleVideoConfig(duration_s=7.0, width=320, height=180).scenes()
    assert len(scenes) == 5 and scenes[0].start_s == 0 and scenes[-1].end_s == 7.0
    mids = [frames[int((s.start_s + s.end_s) / 2 * 25)].astype(float) for s in scenes]
    assert min(np.abs(a - b).mean() for a, b in zip(mids[:-1], mids[1:], strict=True)) > 10


def test_sample_video_speech_starts_each_scene(sample_video: Path) -> None:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(sample_video),
            "-map",
            "0:a",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "s16le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    pcm = np.frombuffer(raw, np.int16).astype(np.float64)
    for scene in SampleVideoConfig(duration_s=7.0, width=320, height=180).scenes():
        start = int(scene.start_s * 16000)
        assert np.sqrt(np.mean(pcm[start : start + 8000] ** 2)) > 300, scene.title


def test_sample_video_without_espeak_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(synth.shutil, "which", lambda name: None if name == "espeak-ng" else real_which(name))
    with pytest.warns(UserWarning, match="espeak-ng"):
        path = make_sample_video(tmp_path / "beeps.mp4", duration_s=2.0, width=128, height=72, progress=False)
    assert stream_types(path) == ["video", "audio"]


def test_sample_config_validation_and_long_plans() -> None:
    with pytest.raises(ValueError, match="width x height"):
        SampleVideoConfig(width=321)
    with pytest.raises(ValueError, match="crf"):
        SampleVideoConfig(crf=99)
    plan = SampleVideoConfig(duration_s=600.0).scenes()
    assert len(plan) == 40 and all(s.end_s - s.start_s <= 15.0 for s in plan)
    assert [s.start_s for s in plan[1:]] == [s.end_s for s in plan[:-1]]


# --------------------------------------------------------------------------- broken inputs


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_broken_inputs(tmp_path_factory.mktemp("broken"))


def test_broken_inputs_exist(broken: dict[str, Path]) -> None:
    assert set(broken) == {
        "empty", "not_a_video", "truncated", "audio_only", "zero_length", "odd_size", "rotated", "vfr"
    }  # fmt: skip
    assert all(p.is_file() for p in broken.values())
    assert sorted(p.name for p in broken["empty"].parent.iterdir()) == sorted(p.name for p in broken.values())


def test_unreadable_inputs(broken: dict[str, Path]) -> None:
    assert broken["empty"].stat().st_size == 0
    for name in ("empty", "not_a_video"):
        proc = subprocess.run(["ffprobe", "-v", "error", str(broken[name])], capture_output=True)
        assert proc.returncode != 0, name


def test_truncated_promises_more_than_it_has(broken: dict[str, Path]) -> None:
    data = broken["truncated"].read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: the index survives the cut
    stream = ffprobe(broken["truncated"], "-show_streams")["streams"][0]
    assert int(stream["nb_frames"]) == 75
    frames = decode_rgb(broken["truncated"], 320, 240)
    assert 0 < len(frames) < 75


def test_audio_only_and_zero_length(broken: dict[str, Path]) -> None:
    assert stream_types(broken["audio_only"]) == ["audio"]
    stream = ffprobe(broken["zero_length"], "-show_streams")["streams"]
    assert [(s["codec_type"], s["width"], s["height"]) for s in stream] == [("video", 160, 120)]
    av = pytest.importorskip("av")
    with av.open(str(broken["zero_length"])) as container:
        assert container.streams.video[0].width == 160
        assert list(container.decode(video=0)) == []


def test_indexed_broken_cases(broken: dict[str, Path]) -> None:
    odd = ffprobe(broken["odd_size"], "-show_streams")["streams"][0]
    assert (odd["width"], odd["height"]) == (161, 121)
    assert [read_frame_index(f) for f in decode_rgb(broken["odd_size"], 161, 121)] == list(range(24))
    rotated = ffprobe(broken["rotated"], "-show_streams")["streams"][0]
    assert any(int(sd.get("rotation", 0)) == 90 for sd in rotated["side_data_list"])
    assert len(set(np.round(np.diff(video_pts_seconds(broken["vfr"])), 6).tolist())) >= 3
