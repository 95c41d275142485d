"""The DALI backend: NVDEC decoding on the GPU through nvidia-dali (extra ``[gpu]``).

GPU only: DALI's CPU video decoder has no H.264, so on the CPU sage_fast uses its native core.
Frames are chosen by our own index (presentation order) and handed to DALI's ``frames``
argument, so the answer to "which frame is at t" is the same as on every other backend.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from sage_fast.video.backends.base import check_frame_indices
from sage_fast.video.backends.torchcodec_backend import resize_nhwc
from sage_fast.video.errors import BackendUnavailableError, VideoDecodeError
from sage_fast.video.index import VideoIndex


def dali_available() -> bool:
    """True when nvidia-dali imports and a CUDA device is visible to torch."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


class DaliBackend:
    """One DALI pipeline per call: the frame list is an argument of the decoder operator."""

    name = "dali"

    def __init__(self, path: Path, index: VideoIndex, *, device: str = "cuda", num_threads: int = 0) -> None:
        try:
            from nvidia.dali import fn, pipeline_def, types  # noqa: F401
        except Exception as exc:
            raise BackendUnavailableError(
                "backend 'dali' needs NVIDIA DALI: `pip install 'sage-fast[gpu]'` (nvidia-dali-cuda120) "
                f"on a machine with an NVIDIA GPU. Import error: {exc}"
            ) from exc
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                "backend 'dali' decodes with NVDEC and needs a CUDA GPU; none is visible. Use "
                "backend='native' (CPU) instead."
            )
        self.index = index
        self.device = torch.device(device if str(device).startswith("cuda") else "cuda")
        self.num_threads = max(1, num_threads or 4)
        self._encoded = np.fromfile(str(path), dtype=np.uint8)
        self._lock = threading.Lock()

    def decode(self, frame_indices: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        from nvidia.dali import fn, pipeline_def
        from nvidia.dali.plugin.pytorch import feed_ndarray

        frames = check_frame_indices(self.index, frame_indices)
        if len(frames) == 0:
            return torch.empty((0, size[0], size[1], 3), dtype=torch.uint8, device=self.device)
        unique, inverse = np.unique(frames, return_inverse=True)
        encoded = self._encoded

        @pipeline_def(batch_size=1, num_threads=self.num_threads, device_id=self.device.index or 0)
        def pipeline():  # noqa: ANN202
            data = fn.external_source(source=lambda: [encoded], batch=True, cycle=False)
            return fn.decoders.video(data, device="mixed", frames=unique.tolist())

        try:
            with self._lock:
                pipe = pipeline()
                pipe.build()
                (sequences,) = pipe.run()
                tensor = sequences.as_tensor()
                out = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=self.device)
                feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))
        except Exception as exc:
            raise VideoDecodeError(f"{self.index.path}: DALI failed to decode ({exc})") from exc
        decoded = out[0][torch.as_tensor(inverse, device=self.device)]
        return resize_nhwc(decoded, size)

    def close(self) -> None:
        self._encoded = None
