"""Files cut for tools: timestamped JPEG frames, stream-copied and re-encoded subclips, 16 kHz audio.

Videos are indexed (each frame shows its number), so a JPEG or a clip's first frame can be checked
against the frame the reader says is on screen at that time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sage_fast.video import NoAudioError, VideoDecodeError, VideoReader
from sage_fast.video.clips import load_audio, timestamp_for_filename
from sage_fast.video.synth import (
    IndexedVideoSpec,
    SampleVideoConfig,
    make_indexed_video,
    make_sample_video,
    read_frame_index,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")

TONE = IndexedVideoSpec(num_frames=90, gop=15, audio=True)  # 3 s, keyframes every 0.5 s, 440 Hz tone
FRAME_S = 1 / TONE.fps
RATE = 16000
NAME = re.compile(r"frame_(\d\d)_(\d\d)-(\d\d)-(\d\d)\.(\d{3})\.jpg")


def stamp_seconds(path: Path) -> float:
    """The timestamp in a frame file's name (HH-MM-SS.mmm) in seconds."""
    match = NAME.fullmatch(path.name)
    assert match is not None, f"unexpected name {path.name}"
    hours, minutes, seconds, millis = (int(g) for g in match.groups()[1:])
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def leftovers(folder: Path) -> list[str]:
    """Hidden or partial files a write may have left behind."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or "partial" in p.name]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def tone(folder: Path) -> VideoReader:
    return VideoReader(make_indexed_video(folder / "tone.mp4", TONE), backend="auto")


@pytest.fixture(scope="module")
def silent(folder: Path) -> VideoReader:
    return VideoReader(make_indexed_video(folder / "silent.mp4", IndexedVideoSpec(num_frames=30)))


# -- extract_frames ----------------------------------------------------------------------------


def test_extract_frames_names_and_pixels(tone: VideoReader, tmp_path: Path) -> None:
    paths = tone.extract_frames(0.5, 2.0, 5, tmp_path)
    assert len(paths) == 5 and sorted(tmp_path.iterdir()) == sorted(paths)
    expected = tone.frames_at(0.5 + (np.arange(5) + 0.5) * 0.3)
    for i, (path, pts, frame) in enumerate(zip(paths, expected.pts_seconds.tolist(), expected.data, strict=True)):
        assert NAME.fullmatch(path.name) and path.name.startswith(f"frame_{i:02d}_")
        assert path.name.endswith(f"_{timestamp_for_filename(pts)}.jpg")
        assert stamp_seconds(path) == pytest.approx(pts, abs=5e-4)
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert read_frame_index(pixels) == int(expected.indices[i])
        assert np.abs(pixels.astype(np.int16) - frame.permute(1, 2, 0).numpy()).mean() < 4  # JPEG loss only
    assert leftovers(tmp_path) == []


def test_extract_frames_clamps_windows_past_the_ends(tone: VideoReader, tmp_path: Path) -> None:
    last, end = tone.metadata.num_frames - 1, tone.metadata.end_seconds
    tail = tone.extract_frames(2.5, 10.0, 3, tmp_path / "tail")
    assert all(2.5 <= stamp_seconds(p) <= end for p in tail)
    head = tone.extract_frames(-5.0, 0.01, 2, tmp_path / "head")  # clamped to [0, 0.01]
    assert [read_frame_index(np.asarray(Image.open(p).convert("RGB"))) for p in head] == [0, 0]
    (only,) = tone.extract_frames(2.99, 10.0, 1, tmp_path / "last")  # clamped to [2.99, 3.0]
    assert read_frame_index(np.asarray(Image.open(only).convert("RGB"))) == last
    with pytest.raises(ValueError, match="after the video ends"):
        tone.extract_frames(5.0, 10.0, 2, tmp_path / "beyond")
    with pytest.raises(ValueError, match="before the video starts"):
        tone.extract_frames(-5.0, -1.0, 2, tmp_path / "before")
    assert not (tmp_path / "beyond").exists() and not (tmp_path / "before").exists()


@pytest.mark.parametrize(("start", "end", "n", "problem"), [
    (2.0, 1.0, 3, "after end"), (float("nan"), 1.0, 3, "finite"), (0.0, 1.0, 0, "between 1 and 1000"),
])
def test_extract_frames_bad_requests(tone: VideoReader, tmp_path: Path, start: float, end: float, n: int,
                                     problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        tone.extract_frames(start, end, n, tmp_path / "out")
    assert str(tone.path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_extract_frames_failure_leaves_no_partial_file(tone: VideoReader, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    saved = Image.Image.save
    calls = []

    def failing_save(self: Image.Image, fp: Path, *args: object, **kwargs: object) -> None:
        calls.append(fp)
        if len(calls) == 2:
            Path(fp).write_bytes(b"half a jpeg")  # a write that dies midway
            raise OSError("disk full")
        saved(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tone.extract_frames(0.0, 1.0, 3, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1 and leftovers(tmp_path) == []


# -- extract_subclip ---------------------------------------------------------------------------


def first_frame(path: Path) -> tuple[int, VideoReader]:
    clip = VideoReader(path, backend="pyav")
    return read_frame_index(clip.get_frames([0]).data[0]), clip


def test_subclip_stream_copy_starts_at_the_keyframe(tone: VideoReader, tmp_path: Path) -> None:
    start, end = 1.3, 2.3
    out = tone.extract_subclip(start, end, tmp_path / "copy.mp4")
    first, clip = first_frame(out)
    at_start = int(tone.frames_at(start).indices[0])
    keyframe = int(tone.index.keyframe_indices[tone.index.keyframe_indices <= at_start].max())
    assert first == keyframe
    gop_s = TONE.gop * FRAME_S
    assert end - start - FRAME_S <= clip.metadata.duration_seconds <= end - start + gop_s + 4 * FRAME_S
    assert clip.metadata.has_audio
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("start", [0.0, 1.0, 1.01, 1.3, 31 * FRAME_S, 32 * FRAME_S])
def test_subclip_reencode_starts_exactly(tone: VideoReader, tmp_path: Path, start: float) -> None:
    """The first frame is the one on screen at ``start``, also when ``start`` falls inside a frame."""
    out = tone.extract_subclip(start, start + 1.0, tmp_path / "exact.mp4", reencode=True)
    first, clip = first_frame(out)
    assert first == int(tone.frames_at(start).indices[0])
    assert clip.metadata.duration_seconds == pytest.approx(1.0, abs=FRAME_S + 1e-6)
    assert clip.metadata.has_audio


@pytest.fixture(scope="module")
def late(tone: VideoReader, folder: Path) -> VideoReader:
    """The tone video in MPEG-TS: its timeline starts at ~1.4 s and it seeks only approximately."""
    remuxed = folder / "tone.ts"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(tone.path), "-c", "copy", str(remuxed)], check=True)
    return VideoReader(remuxed)


@pytest.mark.parametrize("reencode", [False, True])
@pytest.mark.parametrize("offset", [0.49, 1.3])
def test_subclip_of_a_stream_that_starts_late(late: VideoReader, tmp_path: Path, offset: float,
                                              reencode: bool) -> None:
    """Times are the stream's own: a copy starts at the keyframe before ``start``, a re-encode at ``start``."""
    start = late.metadata.begin_seconds + offset
    at_start = int(late.frames_at(start).indices[0])
    first, clip = first_frame(late.extract_subclip(start, start + 0.5, tmp_path / "clip.mp4", reencode=reencode))
    if reencode:
        assert first == at_start
    else:
        assert first == int(late.index.keyframe_indices[late.index.keyframe_indices <= at_start].max())
    last = read_frame_index(clip.get_frames([clip.metadata.num_frames - 1]).data[0])
    at_end = int(late.frames_at(start + 0.5 - 1e-6).indices[0])
    assert last == at_end if reencode else at_end <= last <= at_end + 4  # a copy may run a few frames on


@pytest.mark.parametrize(("start", "end", "problem"), [
    (2.0, 1.0, "after end"), (5.0, 6.0, "after the video ends"), (1.0, 1.0, "empty"), (0.0, float("nan"), "finite"),
])
def test_subclip_bad_windows(tone: VideoReader, tmp_path: Path, start: float, end: float, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        tone.extract_subclip(start, end, tmp_path / "clip.mp4")
    assert str(tone.path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_subclip_failure_is_atomic(tone: VideoReader, tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError) as info:
        tone.extract_subclip(0.0, 1.0, tmp_path / "clip.notaformat")  # ffmpeg has no muxer for it
    assert str(tone.path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- audio -------------------------------------------------------------------------------------


def test_audio_tone_is_16k_mono_float(tone: VideoReader) -> None:
    samples = tone.audio()
    assert samples.dtype.is_floating_point and samples.dtype.itemsize == 4 and samples.dim() == 1
    assert abs(len(samples) - tone.metadata.duration_seconds * RATE) <= FRAME_S * RATE
    spectrum = np.abs(np.fft.rfft(samples.numpy()))
    assert np.fft.rfftfreq(len(samples), 1 / RATE)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert 0.05 < float(samples.abs().max()) <= 1.0


@pytest.mark.parametrize(("start", "end", "seconds"), [(0.5, 1.5, 1.0), (2.5, 10.0, 0.5), (1.0, 1.0, 0.0),
                                                       (-1.0, 0.5, 0.5)])
def test_audio_windows(tone: VideoReader, start: float, end: float, seconds: float) -> None:
    assert abs(len(tone.audio(start, end)) - seconds * RATE) <= FRAME_S * RATE


def test_audio_sample_rate(tone: VideoReader) -> None:
    assert abs(len(tone.audio(0.0, 1.0, sample_rate=8000)) - 8000) <= FRAME_S * 8000


@pytest.mark.parametrize(("start", "end", "problem"), [(2.0, 1.0, "before start"), (float("nan"), 1.0, "finite")])
def test_audio_bad_windows(tone: VideoReader, start: float, end: float, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        tone.audio(start, end)
    assert str(tone.path) in str(info.value)


def test_no_audio_track(silent: VideoReader) -> None:
    with pytest.raises(NoAudioError, match="no audio track") as info:
        silent.audio()
    assert str(silent.path) in str(info.value)
    with pytest.raises(NoAudioError, match=re.escape(str(silent.path))):
        load_audio(silent.path)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_audio_of_speech_has_energy_in_every_scene(folder: Path) -> None:
    config = SampleVideoConfig(duration_s=3.0, width=160, height=96)
    reader = VideoReader(make_sample_video(folder / "speech.mp4", config=config, progress=False))
    samples = reader.audio().numpy()
    assert abs(len(samples) - 3.0 * RATE) <= RATE / config.fps
    for scene in config.scenes():
        spoken = samples[int(scene.start_s * RATE):int(scene.end_s * RATE)]
        assert np.sqrt(np.mean(spoken**2)) > 0.01, f"no speech in {scene.title}"
