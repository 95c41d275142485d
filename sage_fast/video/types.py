"""The data that leaves sage_fast.video: video metadata and batches of timestamped frames."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch


@dataclass(frozen=True)
class VideoMetadata:
    """What a caller needs to plan sampling and prompts; times are in seconds of stream time.

    ``width``/``height`` are the displayed size (after ``rotation``), which is what frames come
    out as. ``keyframe_seconds`` is the keyframe index: where decoding can start cheaply, and what
    ``mode="skim"`` sampling returns.
    """

    path: Path
    duration_seconds: float
    begin_seconds: float
    end_seconds: float
    num_frames: int
    average_fps: float
    width: int
    height: int
    rotation: int
    has_audio: bool
    codec: str
    pixel_format: str
    container: str
    bit_rate: int
    keyframe_seconds: tuple[float, ...] = field(repr=False)

    @property
    def coded_size(self) -> tuple[int, int]:
        """(height, width) as stored in the stream, before rotation."""
        if self.rotation in (90, 270):
            return self.width, self.height
        return self.height, self.width


@dataclass
class FrameBatch:
    """Frames with their timestamps: ``data`` is uint8 (N, C, H, W) RGB on ``data.device``.

    ``pts_seconds`` and ``duration_seconds`` are float64 (N,) on the CPU, ``indices`` int64 (N,)
    presentation-order frame numbers; together they let a prompt say exactly when each frame was
    on screen.
    """

    data: torch.Tensor
    pts_seconds: torch.Tensor
    duration_seconds: torch.Tensor
    indices: torch.Tensor

    def __post_init__(self) -> None:
        n = self.data.shape[0]
        if self.data.dim() != 4 or self.data.dtype != torch.uint8:
            raise ValueError(f"FrameBatch.data must be uint8 (N, C, H, W), got {self.data.dtype} {tuple(self.data.shape)}")
        for name in ("pts_seconds", "duration_seconds", "indices"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"FrameBatch.{name} must have shape ({n},), got {tuple(getattr(self, name).shape)}")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def to(self, device: str | torch.device, non_blocking: bool = False) -> FrameBatch:
        """Moves the pixels to ``device``; timestamps stay on the CPU."""
        return replace(self, data=self.data.to(device, non_blocking=non_blocking))
