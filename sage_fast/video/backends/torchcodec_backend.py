"""The torchcodec backend: torchcodec's batch API on the CPU, or NVDEC on CUDA devices."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sage_fast.video.backends.base import check_frame_indices
from sage_fast.video.errors import BackendUnavailableError, VideoDecodeError, VideoOpenError
from sage_fast.video.index import VideoIndex


def resize_nhwc(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of uint8 (n, H, W, 3) frames on their device (antialiased when shrinking)."""
    if tuple(frames.shape[1:3]) == tuple(size) or frames.shape[0] == 0:
        return frames
    chw = frames.permute(0, 3, 1, 2).float()
    shrink = size[0] < frames.shape[1] or size[1] < frames.shape[2]
    resized = F.interpolate(chw, size=size, mode="bicubic", align_corners=False, antialias=shrink)
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class TorchCodecBackend:
    """Frames are fetched by time (just after each pts), so torchcodec's own frame numbering
    never has to agree with ours; resizing, when asked, is torch's bicubic on the same device."""

    name = "torchcodec"

    def __init__(self, path: Path, index: VideoIndex, *, device: str = "cpu", num_threads: int = 0) -> None:
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as exc:
            raise BackendUnavailableError(
                "backend 'torchcodec' is not installed or does not load: `pip install torchcodec` "
                f"(CPU machines here: `pip install torchcodec==0.13.0`). Import error: {exc}"
            ) from exc
        self.index = index
        self.device = torch.device(device)
        self._make_decoder = lambda: VideoDecoder(
            str(path), seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=num_threads,
            device=str(self.device),
        )
        try:
            self._decoder = self._make_decoder()
        except Exception as exc:
            raise VideoOpenError(f"{path}: torchcodec cannot open it ({exc})") from exc
        begin = getattr(self._decoder.metadata, "begin_stream_seconds", None)
        if begin is not None and abs(begin - index.begin_seconds) > 1e-6:
            # Containers without pts (AVI with B-frames): torchcodec numbers frames in decode
            # order, so fetching "the frame at t" would return the wrong frames. Refuse instead.
            # (Only the start is compared: at a truncated tail the two may disagree harmlessly,
            # and a frame torchcodec cannot reach fails the pts check in decode().)
            raise BackendUnavailableError(
                f"{path}: torchcodec's timeline starts at {begin:.6f} s but the stream's presentation "
                f"timestamps start at {index.begin_seconds:.6f} s, usually a container without pts such "
                "as AVI with B-frames; use backend='native' or 'pyav'"
            )
        self._lock = threading.Lock()
        # torchcodec >= 0.8 turns frames upright itself (and reports the angle it applied).
        self.applies_rotation = hasattr(self._decoder.metadata, "rotation")

    def decode(self, frame_indices: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        frames = check_frame_indices(self.index, frame_indices)
        if len(frames) == 0:
            return torch.empty((0, size[0], size[1], 3), dtype=torch.uint8, device=self.device)
        # Just after each pts (not the mid-point): torchcodec may end the last frame earlier.
        just_after = self.index.pts_seconds[frames] + np.minimum(self.index.duration_seconds[frames] / 2, 1e-4)
        with self._lock:
            try:
                batch = self._decoder.get_frames_played_at(just_after.tolist())
            except Exception as exc:
                self._decoder = self._make_decoder()  # its state after a failure is not trusted
                raise VideoDecodeError(f"{self.index.path}: torchcodec failed to decode ({exc})") from exc
        # Around damaged data torchcodec can hand back a neighbouring frame: never pass that on.
        expected = self.index.pts_seconds[frames]
        wrong = np.flatnonzero(np.abs(batch.pts_seconds.cpu().numpy() - expected) > 1e-6)
        if len(wrong):
            with self._lock:
                self._decoder = self._make_decoder()
            raise VideoDecodeError(
                f"{self.index.path}: could not decode the frame at {expected[wrong[0]]:.6f} s "
                f"(torchcodec returned the frame at {batch.pts_seconds[wrong[0]]:.6f} s; damaged data?)"
            )
        return resize_nhwc(batch.data, size)

    def close(self) -> None:
        self._decoder = None
