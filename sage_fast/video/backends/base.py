"""What every decode backend provides: an index and exact frames for presentation indices."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from sage_fast.video.index import VideoIndex


class DecodeBackend(Protocol):
    """A decoder of one video file.

    ``decode`` returns uint8 (n, height, width, 3) RGB frames, in the order asked, in the
    stream's coded orientation (the reader applies rotation) unless the backend sets
    ``applies_rotation = True`` (then upright, and ``size`` is upright too), resized to ``size`` = (height,
    width) when it differs from the coded size. Implementations must be safe to call from
    several threads (serialising is fine).
    """

    name: str
    index: VideoIndex
    device: torch.device

    def decode(self, frame_indices: np.ndarray, size: tuple[int, int]) -> torch.Tensor: ...

    def close(self) -> None: ...


def check_frame_indices(index: VideoIndex, frame_indices: np.ndarray) -> np.ndarray:
    """Validates frame numbers (they may come from a model's tool call) and returns int64."""
    frames = np.asarray(frame_indices)
    if frames.ndim != 1:
        raise ValueError(f"frame indices must be 1-D, got shape {frames.shape}")
    if frames.size and not np.issubdtype(frames.dtype, np.integer):
        raise ValueError(f"frame indices must be integers, got dtype {frames.dtype}")
    frames = frames.astype(np.int64)
    if frames.size and (frames.min() < 0 or frames.max() >= index.num_frames):
        raise ValueError(
            f"frame indices must lie in [0, {index.num_frames}) for {index.path}, got "
            f"[{frames.min()}, {frames.max()}]"
        )
    return frames
