"""Decoded frames equal ffmpeg's own CLI output byte for byte, on every CPU backend.

The reference is `ffmpeg -i VIDEO -f rawvideo -pix_fmt rgb24` (the FFmpeg the native core links),
and each frame also carries its index in its pixels, so a test can tell which frame it got.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from sage_fast import _ext
from sage_fast.video import BackendUnavailableError, VideoReader, clear_video_cache, open_video
from sage_fast.video.backends import cpu_backends
from sage_fast.video.index import build_index_pyav, index_from_native
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video, read_frame_index

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")

BACKENDS = cpu_backends()

SPECS = {
    "h264_bframes_mp4": ("v.mp4", IndexedVideoSpec(num_frames=75, gop=12, bframes=3)),
    "h264_mkv": ("v.mkv", IndexedVideoSpec(num_frames=50, gop=10, bframes=2)),
    "mpeg4_avi": ("v.avi", IndexedVideoSpec(num_frames=40, codec="mpeg4", gop=8, bframes=1)),
    "vp9_webm": ("v.webm", IndexedVideoSpec(num_frames=40, codec="libvpx-vp9", gop=10, bframes=0)),
    "bt709_full_range": ("v.mp4", IndexedVideoSpec(num_frames=30, width=192, height=108, gop=10,
                                                    color_range="pc", colorspace="bt709")),
    "odd_yuv444": ("v.mp4", IndexedVideoSpec(num_frames=30, width=161, height=121, pix_fmt="yuv444p", gop=9)),
}


def ffmpeg_rgb(path: Path, height: int, width: int, *, scale: tuple[int, int] | None = None) -> np.ndarray:
    """Every presented frame as ffmpeg's CLI decodes it (autorotated, one frame per frame)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
    if scale is not None:
        cmd += ["-vf", f"scale={scale[1]}:{scale[0]}"]
        height, width = scale
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def hwc(batch) -> np.ndarray:  # noqa: ANN001 (FrameBatch)
    return batch.data.permute(0, 2, 3, 1).cpu().numpy()


@pytest.fixture(scope="module", params=sorted(SPECS))
def video(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    name, spec = SPECS[request.param]
    path = make_indexed_video(tmp_path_factory.mktemp(request.param) / name, spec)
    return path, ffmpeg_rgb(path, spec.height, spec.width)


def open_reader(path: Path, backend: str) -> VideoReader:
    if backend == "torchcodec" and path.suffix == ".avi":
        with pytest.raises(BackendUnavailableError, match="timeline"):
            VideoReader(path, backend=backend)
        pytest.skip("torchcodec refuses AVI without pts (it would return frames in decode order)")
    return VideoReader(path, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_frame_equals_ffmpeg(video: tuple[Path, np.ndarray], backend: str) -> None:
    path, reference = video
    reader = open_reader(path, backend)
    assert reader.metadata.num_frames == len(reference)
    frames = hwc(reader.get_frames(np.arange(len(reference))))
    assert np.array_equal(frames, reference)
    assert [read_frame_index(f) for f in frames] == list(range(len(reference)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_order_with_duplicates(video: tuple[Path, np.ndarray], backend: str) -> None:
    path, reference = video
    rng = np.random.default_rng(7)
    wanted = np.concatenate([rng.integers(0, len(reference), 9), [len(reference) - 1, 0, 3, 3]])
    reader = open_reader(path, backend)
    batch = reader.get_frames(wanted)
    assert np.array_equal(hwc(batch), reference[wanted])
    assert batch.indices.tolist() == wanted.tolist()


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_native_thread_counts_agree(video: tuple[Path, np.ndarray], threads: int) -> None:
    if not _ext.has_native_decoder():
        pytest.skip("compiled core built without FFmpeg")
    path, reference = video
    wanted = np.arange(0, len(reference), 3)[::-1]
    batch = VideoReader(path, backend="native", num_threads=threads).get_frames(wanted)
    assert np.array_equal(hwc(batch), reference[wanted])


def test_native_index_equals_python_index(video: tuple[Path, np.ndarray]) -> None:
    if not _ext.has_native_decoder():
        pytest.skip("compiled core built without FFmpeg")
    path, _ = video
    python = build_index_pyav(path)
    native = index_from_native(path, _ext.load().NativeDecoder(str(path)))
    for field in ("pts", "duration", "is_key", "decode_position"):
        assert np.array_equal(getattr(python, field), getattr(native, field)), field
    assert python.time_base == native.time_base
    assert python.info == native.info
    # MP4/MOV with H.264 is indexed from its sample tables alone; everything else by reading packets.
    source = _ext.load().NativeDecoder(str(path)).metadata["index_source"]
    assert source == ("tables" if path.suffix == ".mp4" else "packets")


def test_resize_equals_ffmpeg_scale(video: tuple[Path, np.ndarray]) -> None:
    """Native resizing is ffmpeg's scale filter (bicubic swscale); PyAV bundles another FFmpeg
    whose scaler rounds differently, so it is only close."""
    path, reference = video
    size = (reference.shape[1] // 2 + 1, reference.shape[2] // 3 + 3)
    scaled = ffmpeg_rgb(path, *reference.shape[1:3], scale=size)
    wanted = np.arange(0, len(reference), 4)
    if _ext.has_native_decoder():
        native = hwc(VideoReader(path, backend="native").get_frames(wanted, size=size))
        assert np.array_equal(native, scaled[wanted])
    python = hwc(VideoReader(path, backend="pyav").get_frames(wanted, size=size)).astype(np.int16)
    assert np.abs(python - scaled[wanted]).mean() < 3.0


def test_open_gop_leading_frames(tmp_path: Path) -> None:
    """Open GOPs: B-frames shown before a keyframe reference the previous GOP."""
    spec = IndexedVideoSpec(num_frames=60, gop=12, bframes=3)
    plain = make_indexed_video(tmp_path / "plain.mp4", spec)
    path = tmp_path / "open_gop.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(plain), "-c:v", "libx264", "-bf", "3",
                    "-g", "12", "-keyint_min", "12", "-sc_threshold", "0", "-x264-params", "open-gop=1",
                    "-crf", "18", str(path)], check=True)
    reference = ffmpeg_rgb(path, spec.height, spec.width)
    wanted = np.array([11, 23, 10, 35, 47, 59, 22, 12, 24])
    for backend in BACKENDS:
        batch = VideoReader(path, backend=backend).get_frames(wanted)
        assert np.array_equal(hwc(batch), reference[wanted]), backend


def test_native_skips_work(tmp_path: Path) -> None:
    """Keyframe targets decode one frame each; a GOP's tail after its last target is never sent."""
    if not _ext.has_native_decoder():
        pytest.skip("compiled core built without FFmpeg")
    path = make_indexed_video(tmp_path / "v.mp4", IndexedVideoSpec(num_frames=96, gop=24, bframes=3))
    reader = VideoReader(path, backend="native", num_threads=1)
    keys = reader.index.keyframe_indices
    reader.get_frames(keys)
    stats = reader.last_decode_stats
    assert stats["packets_sent"] == len(keys) and stats["frames_decoded"] == len(keys)
    reader.get_frames([5])
    stats = reader.last_decode_stats
    assert stats["packets_sent"] <= 10
    # With B-frames, frames that no target shows and nothing references are dropped undecoded.
    reader.get_frames([23])
    stats = reader.last_decode_stats
    assert stats["frames_decoded"] < stats["packets_sent"] <= 24


def test_sample_uniform_exact_and_skim(tmp_path: Path) -> None:
    spec = IndexedVideoSpec(num_frames=90, fps=30.0, gop=15, bframes=2)
    path = make_indexed_video(tmp_path / "v.mp4", spec)
    reader = VideoReader(path)
    batch = reader.sample_uniform(8, max_fps=2.0)
    assert len(batch) == 6  # 3 s at most 2 frames per second
    expected_times = (np.arange(6) + 0.5) * 0.5
    assert np.array_equal(batch.indices.numpy(), np.floor(expected_times * 30 + 1e-9).astype(int))
    assert [read_frame_index(f) for f in hwc(batch)] == batch.indices.tolist()
    skim = reader.sample_uniform(8, max_fps=2.0, mode="skim")
    assert set(skim.indices.tolist()) <= set(reader.index.keyframe_indices.tolist())
    assert np.all(np.abs(skim.pts_seconds.numpy() - expected_times) <= 0.25 + 1e-9)
    assert len(reader.sample_uniform(500, max_fps=None)) == 90


def test_frames_at_is_frame_on_screen(tmp_path: Path) -> None:
    path = make_indexed_video(tmp_path / "v.mp4", IndexedVideoSpec(num_frames=30, fps=10.0, gop=10))
    reader = VideoReader(path)
    batch = reader.frames_at([0.0, 0.099, 0.1, 1.55, 2.95, 99.0, -4.0])
    assert batch.indices.tolist() == [0, 0, 1, 15, 29, 29, 0]
    assert [read_frame_index(f) for f in hwc(batch)] == batch.indices.tolist()


def test_open_video_reuses_until_file_changes(tmp_path: Path) -> None:
    clear_video_cache()
    path = make_indexed_video(tmp_path / "v.mp4", IndexedVideoSpec(num_frames=20, gop=10))
    first = open_video(path)
    assert open_video(str(path)) is first
    assert open_video(path, backend="pyav") is not first
    if _ext.has_native_decoder():
        assert open_video(path, backend="native") is first  # "auto" resolved before the lookup
    make_indexed_video(path, IndexedVideoSpec(num_frames=24, gop=12))
    again = open_video(path)
    assert again is not first and again.metadata.num_frames == 24


def test_concurrent_calls_on_one_reader(tmp_path: Path) -> None:
    path = make_indexed_video(tmp_path / "v.mp4", IndexedVideoSpec(num_frames=60, gop=12, bframes=2))
    reader = open_video(path)
    errors: list[str] = []

    def work(offset: int) -> None:
        for start in range(offset, 60, 7):
            wanted = [start, (start * 5) % 60]
            got = [read_frame_index(f) for f in hwc(reader.get_frames(wanted))]
            if got != wanted:
                errors.append(f"asked {wanted}, got {got}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors


@pytest.mark.gpu
def test_cuda_device_frames_equal_cpu(tmp_path: Path) -> None:
    path = make_indexed_video(tmp_path / "v.mp4", IndexedVideoSpec(num_frames=40, gop=10, bframes=2))
    cpu = VideoReader(path).get_frames(np.arange(0, 40, 3))
    cuda = VideoReader(path, device="cuda").get_frames(np.arange(0, 40, 3))
    assert cuda.data.device.type == "cuda"
    # NVDEC's colour conversion differs slightly from swscale's; the frames must still be the same frames.
    assert [read_frame_index(f) for f in hwc(cuda)] == list(range(0, 40, 3))
    assert (cuda.data.cpu().int() - cpu.data.int()).abs().float().mean() < 3.0


def test_table_only_index_of_a_many_gop_mp4(tmp_path: Path) -> None:
    """The MP4 sample-table index keeps every keyframe flag (parsers off) and equals a full read."""
    if not _ext.has_native_decoder():
        pytest.skip("compiled core built without FFmpeg")
    path = make_indexed_video(tmp_path / "v.mp4", IndexedVideoSpec(num_frames=300, gop=10, bframes=3))
    decoder = _ext.load().NativeDecoder(str(path))
    assert decoder.metadata["index_source"] == "tables"
    native = index_from_native(path, decoder)
    python = build_index_pyav(path)
    assert native.is_key.sum() == 30
    for field in ("pts", "duration", "is_key", "decode_position"):
        assert np.array_equal(getattr(python, field), getattr(native, field)), field
