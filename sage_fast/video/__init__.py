"""Video I/O for sage_fast: exact, timestamped frames, clips and audio from any video file.

    from sage_fast.video import open_video
    video = open_video("match.mp4")            # indexed once, reused across calls
    batch = video.sample_uniform(128)          # FrameBatch: uint8 (128, 3, H, W) + pts_seconds
"""

from sage_fast.video.errors import (
    BackendUnavailableError,
    NoAudioError,
    VideoDecodeError,
    VideoError,
    VideoOpenError,
)
from sage_fast.video.reader import VideoNotFoundError, VideoReader, clear_video_cache, open_video
from sage_fast.video.types import FrameBatch, VideoMetadata

__all__ = [
    "BackendUnavailableError",
    "FrameBatch",
    "NoAudioError",
    "VideoDecodeError",
    "VideoError",
    "VideoMetadata",
    "VideoNotFoundError",
    "VideoOpenError",
    "VideoReader",
    "clear_video_cache",
    "open_video",
]
