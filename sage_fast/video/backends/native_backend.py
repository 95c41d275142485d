"""The native backend: sage_fast._C's GOP-planned FFmpeg decoder (the fast CPU path)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from sage_fast import _ext
from sage_fast.video.backends.base import check_frame_indices
from sage_fast.video.errors import BackendUnavailableError, VideoDecodeError, VideoOpenError
from sage_fast.video.index import index_from_native


class NativeBackend:
    """Decodes on the CPU with the compiled core; the GIL is released while it works."""

    name = "native"

    def __init__(self, path: Path, *, num_threads: int = 0) -> None:
        if not _ext.has_native_decoder():
            raise BackendUnavailableError(
                "backend 'native' needs sage_fast's compiled core built with FFmpeg: install "
                "libavformat-dev libavcodec-dev libswscale-dev pkg-config and reinstall sage_fast "
                f"(core status: {_ext.build_info()})"
            )
        try:
            self._decoder = _ext.load().NativeDecoder(str(path))
        except RuntimeError as exc:
            raise VideoOpenError(str(exc)) from exc
        self.index = index_from_native(path, self._decoder)
        self.device = torch.device("cpu")
        self.num_threads = num_threads
        self.last_stats: dict[str, int] = {}
        self._stats_lock = threading.Lock()

    def decode(self, frame_indices: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        frames = check_frame_indices(self.index, frame_indices)
        out = torch.empty((len(frames), size[0], size[1], 3), dtype=torch.uint8)
        if len(frames) == 0:
            return out
        try:
            stats = self._decoder.decode(frames, out.numpy(), self.num_threads)
        except RuntimeError as exc:
            raise VideoDecodeError(str(exc)) from exc
        with self._stats_lock:
            self.last_stats = stats
        return out

    def close(self) -> None:
        self._decoder = None
