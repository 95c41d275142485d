"""Type stubs for sage_fast's compiled core (csrc/bindings.cpp). Import it through sage_fast._ext."""

from typing import Any

import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, Any]:
    """{'ffmpeg': bool, 'cuda': bool, 'ffmpeg_versions': str, 'compiler': str}."""

def cuda_device_count() -> int:
    """CUDA devices visible to the core (0 without CUDA support, a driver or a device)."""

def set_ffmpeg_log_level(level: int) -> None:
    """Log level of the linked FFmpeg libraries (-8 quiet, 8 fatal, 16 error, 24 warning, 32 info)."""

class NativeDecoder:
    """Native FFmpeg decoder of one video file; present only when built with FFmpeg."""

    def __init__(self, path: str) -> None: ...
    @property
    def metadata(self) -> dict[str, Any]:
        """path, codec, pixel_format, container, width, height, rotation, has_audio, average_fps,
        container_duration, bit_rate, time_base (num, den), num_packets, index_source ('tables' when
        the MP4 sample tables gave the index without reading payloads, else 'packets')."""
    def index_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Per presented frame (pts order): pts, duration, decode_position (int64), is_key (bool)."""
    def decode(
        self, frames: npt.NDArray[np.int64], out: npt.NDArray[np.uint8], num_threads: int = 0
    ) -> dict[str, int]:
        """Decodes frames into out (n, H, W, 3) uint8 RGB, resized to H x W; releases the GIL."""
