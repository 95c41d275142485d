"""``VideoReader``: timestamped frames from a video file, with opened videos kept for reuse.

One reader owns one decode backend (its index and decoders). ``open_video`` keeps recently
used readers in an LRU, so an agent's 100 tool calls on one video index and open it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from sage_fast import envs
from sage_fast.video import clips
from sage_fast.video.backends import choose_backend, open_backend
from sage_fast.video.backends.base import check_frame_indices
from sage_fast.video.errors import VideoOpenError
from sage_fast.video.index import VideoIndex, frames_at_times, nearest_keyframes, uniform_times
from sage_fast.video.types import FrameBatch, VideoMetadata

MODES = ("exact", "skim")


class VideoNotFoundError(VideoOpenError, FileNotFoundError):
    """The path does not name an existing file."""


def check_video_file(path: str | Path) -> Path:
    """Rejects missing, non-regular and empty files with an error that names them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})")
    if not path.is_file():
        raise VideoOpenError(f"{path}: is not a regular file (a folder or device?); pass a video file")
    if path.stat().st_size == 0:
        raise VideoOpenError(f"{path}: is empty (0 bytes); the download or copy did not finish")
    return path


def metadata_from_index(path: Path, index: VideoIndex) -> VideoMetadata:
    info = index.info
    rotation = int(info["rotation"])
    width, height = int(info["width"]), int(info["height"])
    if rotation in (90, 270):
        width, height = height, width
    keys = index.pts_seconds[index.keyframe_indices]
    return VideoMetadata(
        path=path, duration_seconds=index.end_seconds - index.begin_seconds,
        begin_seconds=index.begin_seconds, end_seconds=index.end_seconds,
        num_frames=index.num_frames, average_fps=float(info["average_fps"]), width=width,
        height=height, rotation=rotation, has_audio=bool(info["has_audio"]), codec=str(info["codec"]),
        pixel_format=str(info["pixel_format"]), container=str(info["container"]),
        bit_rate=int(info["bit_rate"]), keyframe_seconds=tuple(float(k) for k in keys),
    )


class VideoReader:
    """Exact, timestamped frames of one video file.

    ``backend``: ``auto`` (DALI on a GPU, else the native core, else torchcodec, else PyAV) or
    one of ``native``, ``torchcodec``, ``pyav``, ``dali``. ``device``: where frames are returned.
    Frames come out upright (rotation metadata applied) as uint8 (N, 3, H, W) RGB.
    """

    def __init__(self, path: str | Path, *, backend: str = "auto", device: str | torch.device = "cpu",
                 num_threads: int | None = None) -> None:
        self.path = check_video_file(path)
        self.device = torch.device(device)
        self.backend_name = choose_backend(backend, str(self.device))
        threads = envs.decode_threads() if num_threads is None else num_threads
        self._backend = open_backend(self.path, self.backend_name, str(self.device), threads)
        self.index: VideoIndex = self._backend.index
        self.metadata: VideoMetadata = metadata_from_index(self.path, self.index)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"VideoReader({str(self.path)!r}, backend={self.backend_name!r}, {m.width}x{m.height}, "
                f"{m.duration_seconds:.2f} s, {m.num_frames} frames)")

    # -- frames ---------------------------------------------------------------------------------
    def get_frames(self, indices: np.ndarray | list[int], *, size: tuple[int, int] | None = None) -> FrameBatch:
        """Frames by presentation index (0 = first frame shown), resized to ``size`` = (height,
        width) with ffmpeg's bicubic scaler on the native backend."""
        frames = np.ascontiguousarray(check_frame_indices(self.index, np.asarray(indices).reshape(-1)))
        height, width = size if size is not None else (self.metadata.height, self.metadata.width)
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive (height, width), got {size}")
        rotation = 0 if getattr(self._backend, "applies_rotation", False) else self.metadata.rotation
        coded = (width, height) if rotation in (90, 270) else (height, width)
        data = self._backend.decode(frames, coded)
        if rotation:
            data = torch.rot90(data, k=-rotation // 90, dims=(1, 2))
        data = data.permute(0, 3, 1, 2)  # (N, 3, H, W) view of channels-last memory
        if data.device != self.device:
            data = data.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else data.to(self.device)
        return FrameBatch(
            data=data, pts_seconds=torch.from_numpy(self.index.pts_seconds[frames]),
            duration_seconds=torch.from_numpy(self.index.duration_seconds[frames]),
            indices=torch.from_numpy(frames),
        )

    def frames_at(self, seconds: float | list[float] | np.ndarray, *, size: tuple[int, int] | None = None) -> FrameBatch:
        """The frame on screen at each time (the last one whose pts <= t); times outside the
        video are clamped to its first and last frames."""
        try:
            frames = frames_at_times(self.index, np.atleast_1d(np.asarray(seconds, dtype=np.float64)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: {exc}") from exc
        return self.get_frames(frames, size=size)

    def sample_uniform(self, n: int = 128, max_fps: float | None = 2.0, *, mode: str = "exact",
                       size: tuple[int, int] | None = None) -> FrameBatch:
        """``n`` frames spread evenly over the whole video (at most ``max_fps`` per second).

        ``mode="exact"`` returns the frame on screen at the centre of each of ``n`` equal slices;
        ``mode="skim"`` returns the keyframe nearest to each, which skips almost all decoding and
        suits previews and coarse Stage-1 passes.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        frames = frames_at_times(self.index, uniform_times(self.index, n, max_fps))
        if mode == "skim":
            frames = nearest_keyframes(self.index, frames)
        return self.get_frames(frames, size=size)

    # -- files for tools ------------------------------------------------------------------------
    def extract_frames(self, start: float, end: float, n: int = 10, out_dir: str | Path = ".", *,
                       prefix: str = "frame", quality: int = 90) -> list[Path]:
        """Saves ``n`` evenly spaced frames of [start, end] as JPEGs named with their timestamps."""
        return clips.extract_frames(self, start, end, n, Path(out_dir), prefix=prefix, quality=quality)

    def extract_subclip(self, start: float, end: float, out_path: str | Path, *, reencode: bool = False) -> Path:
        """Writes [start, end] to ``out_path`` by stream copy (re-encoding when copy fails)."""
        return clips.extract_subclip(self.path, start, end, Path(out_path), duration=self.metadata.end_seconds,
                                     reencode=reencode)

    def audio(self, start: float = 0.0, end: float | None = None, *, sample_rate: int = 16000) -> torch.Tensor:
        """Mono float32 samples of [start, end] at ``sample_rate`` (16 kHz suits speech models)."""
        if not self.metadata.has_audio:
            from sage_fast.video.errors import NoAudioError

            raise NoAudioError(f"{self.path}: has no audio track, so there is no speech to transcribe")
        if float(start) > self.metadata.end_seconds:
            raise ValueError(f"{self.path}: the window starts at {float(start):.3f} s, after the video ends "
                             f"({self.metadata.end_seconds:.3f} s)")
        return clips.load_audio(self.path, start, end, sample_rate=sample_rate)

    @property
    def last_decode_stats(self) -> dict[str, int]:
        """What the last call cost on the native backend: packets read and sent to the decoder,
        frames decoded, seeks, decode runs and worker threads (empty on other backends)."""
        return dict(getattr(self._backend, "last_stats", {}))

    def close(self) -> None:
        self._backend.close()


_CACHE: OrderedDict[tuple, VideoReader] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def open_video(path: str | Path, *, backend: str = "auto", device: str | torch.device = "cpu",
               num_threads: int | None = None) -> VideoReader:
    """A shared :class:`VideoReader` for ``path``, reused while the file is unchanged.

    The key includes the file's size and modification time, so a rewritten file is reopened.
    ``SAGE_FAST_VIDEO_CACHE`` sets how many videos stay open (default 8).
    """
    resolved = check_video_file(path).resolve()
    stat = resolved.stat()
    device = torch.device(device)
    # "auto" and the backend it resolves to share one entry, so one file is indexed once.
    key = (str(resolved), stat.st_mtime_ns, stat.st_size, choose_backend(backend, str(device)), str(device),
           num_threads)
    with _CACHE_LOCK:
        reader = _CACHE.get(key)
        if reader is not None:
            _CACHE.move_to_end(key)
            return reader
    reader = VideoReader(resolved, backend=backend, device=device, num_threads=num_threads)
    with _CACHE_LOCK:
        reader = _CACHE.setdefault(key, reader)
        _CACHE.move_to_end(key)
        while len(_CACHE) > max(envs.video_cache_size(), 1):
            _CACHE.popitem(last=False)  # not closed: another thread may still hold it
    return reader


def clear_video_cache() -> None:
    """Forgets every cached reader; each closes when its last user drops it."""
    with _CACHE_LOCK:
        _CACHE.clear()
