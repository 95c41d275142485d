"""Decode providers for the benchmark: sage_fast's paths and each public alternative, cold.

Every provider answers the same question (these frames of this file, as uint8 RGB) with that
library's best public API and all cores, and opens the file itself inside the timed call, as a
new video in the agent's Stage-1 would be opened: index building and scanning are part of the
cost. Outputs are (n, H, W, 3) uint8 arrays in target order plus the pts each provider says it
returned, so the suite can check them against sage_fast before timing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from sage_fast.video import VideoReader
from sage_fast.video.index import VideoIndex, frames_at_times, nearest_keyframes, uniform_times


@dataclass(frozen=True)
class Targets:
    """The frames asked for, by sage_fast's index (the one answer to "frame on screen at t")."""

    path: Path
    seconds: np.ndarray  # the query times
    frames: np.ndarray  # presentation indices
    pts: np.ndarray  # int64 ticks of the stream time base
    pts_seconds: np.ndarray
    mid_seconds: np.ndarray  # each frame's mid-point: unambiguous for decoders that seek by time
    time_base: Fraction
    begin_seconds: float  # pts of the first frame (often not 0: B-frame delay, edited streams)
    uniform: tuple[int, float] | None = None  # (n, max_fps) when these came from sample_uniform

    @classmethod
    def at_times(cls, index: VideoIndex, seconds: np.ndarray, uniform: tuple[int, float] | None = None) -> Targets:
        frames = frames_at_times(index, seconds)
        return cls.of_frames(index, frames, seconds, uniform)

    @classmethod
    def of_frames(cls, index: VideoIndex, frames: np.ndarray, seconds: np.ndarray | None = None,
                  uniform: tuple[int, float] | None = None) -> Targets:
        pts_s = index.pts_seconds[frames]
        return cls(
            path=Path(index.path), seconds=pts_s if seconds is None else np.asarray(seconds, dtype=np.float64),
            frames=frames, pts=index.pts[frames], pts_seconds=pts_s,
            mid_seconds=pts_s + index.duration_seconds[frames] / 2, time_base=index.time_base,
            begin_seconds=index.begin_seconds, uniform=uniform,
        )

    @classmethod
    def uniform_sample(cls, index: VideoIndex, n: int, max_fps: float) -> Targets:
        return cls.at_times(index, uniform_times(index, n, max_fps), uniform=(n, max_fps))

    def keyframes(self, index: VideoIndex) -> Targets:
        """What skim mode promises for these targets: the nearest keyframe of each."""
        return Targets.of_frames(index, nearest_keyframes(index, self.frames), uniform=self.uniform)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class Decoded:
    """One provider's answer: frames (None for the floor, which converts nothing) and their pts."""

    frames: np.ndarray | None
    pts_seconds: np.ndarray
    indices: np.ndarray | None = None
    stats: dict = field(default_factory=dict)


Provider = Callable[[Targets], Decoded]


# -- sage_fast ------------------------------------------------------------------------------------
def _sage_fast(t: Targets, backend: str, mode: str = "exact") -> Decoded:
    reader = VideoReader(t.path, backend=backend, num_threads=0)
    return _sample(reader, t, mode)


def _sample(reader: VideoReader, t: Targets, mode: str = "exact") -> Decoded:
    if t.uniform is not None:
        batch = reader.sample_uniform(t.uniform[0], t.uniform[1], mode=mode)
    else:
        assert mode == "exact", "skim is only defined for sample_uniform"
        batch = reader.frames_at(t.seconds)
    stats = reader.last_decode_stats
    return Decoded(batch.data.permute(0, 2, 3, 1).numpy(), batch.pts_seconds.numpy(), batch.indices.numpy(), stats)


def sage_fast_exact(t: Targets) -> Decoded:
    """sage_fast's native C++ core (GOP plan, NONREF skipping, GOP-parallel workers)."""
    return _sage_fast(t, "native")


def sage_fast_skim(t: Targets) -> Decoded:
    """sage_fast's skim mode: the nearest keyframe to each target (keyframes only)."""
    return _sage_fast(t, "native", mode="skim")


def sage_fast_pyav(t: Targets) -> Decoded:
    """sage_fast's Python fallback: the same GOP plan driven through PyAV."""
    return _sage_fast(t, "pyav")


def sage_fast_warm(reader: VideoReader) -> Provider:
    """sage_fast exact on an already opened reader: decode only, the number to hold against the floor."""
    return lambda t: _sample(reader, t)


# -- torchcodec ------------------------------------------------------------------------------------
def _torchcodec(t: Targets, seek_mode: str, times: np.ndarray | None = None) -> Decoded:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(t.path), seek_mode=seek_mode, num_ffmpeg_threads=0, dimension_order="NHWC")
    return torchcodec_frames(decoder, t.mid_seconds if times is None else times)


def torchcodec_frames(decoder, seconds: np.ndarray) -> Decoded:  # noqa: ANN001 (torchcodec VideoDecoder)
    """The batch API (one pass over the sorted times, no re-seeking inside a GOP)."""
    batch = decoder.get_frames_played_at(seconds.tolist())
    return Decoded(batch.data.numpy(), batch.pts_seconds.numpy())


def torchcodec_exact(t: Targets) -> Decoded:
    """torchcodec, exact seek mode (scans the file at open) with frame mid-times."""
    return _torchcodec(t, "exact")


def torchcodec_approximate(t: Targets) -> Decoded:
    """torchcodec, approximate seek mode (no scan; frame positions from the average rate)."""
    return _torchcodec(t, "approximate")


# -- decord ----------------------------------------------------------------------------------------
def decord_batch(t: Targets) -> Decoded:
    """decord's get_batch; its frame numbers are matched to ours by timestamp.

    decord's timestamps (float32) count from the stream's first frame, not from pts 0, so they
    are shifted by the first frame's pts before matching.
    """
    import decord

    reader = decord.VideoReader(str(t.path), ctx=decord.cpu(0), num_threads=0)
    starts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64) + t.begin_seconds
    order = np.argsort(starts, kind="stable")
    pos = np.clip(np.searchsorted(starts[order], t.pts_seconds - 1e-3), 0, len(order) - 1)
    indices = order[pos]
    frames = reader.get_batch(indices.tolist()).asnumpy()
    return Decoded(frames, starts[indices], indices)


# -- PyAV by hand ----------------------------------------------------------------------------------
def _pyav_open(path: Path):  # noqa: ANN202 (av container, stream)
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads, all cores
    return container, stream


def _rgb(frame) -> np.ndarray:  # noqa: ANN001 (av.VideoFrame)
    # The conversion sage_fast's PyAV backend uses, so the two are comparable byte for byte.
    return frame.reformat(format="rgb24", interpolation="BICUBIC").to_ndarray()


def pyav_seek_per_frame(t: Targets) -> Decoded:
    """The textbook loop: for each target, seek to the keyframe before it and decode up to it."""
    container, stream = _pyav_open(t.path)
    wanted = np.unique(t.pts)
    found: dict[int, np.ndarray] = {}
    with container:
        for pts in wanted.tolist():
            container.seek(pts, backward=True, any_frame=False, stream=stream)
            stream.codec_context.flush_buffers()
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < pts:
                    continue
                if frame.pts == pts:
                    found[pts] = _rgb(frame)
                break
    return _in_target_order(t, found)


def pyav_sequential(t: Targets) -> Decoded:
    """Decode every frame from the start and convert only the targets (no seeking at all)."""
    container, stream = _pyav_open(t.path)
    wanted = set(t.pts.tolist())
    found: dict[int, np.ndarray] = {}
    with container:
        for frame in container.decode(stream):
            if frame.pts in wanted:
                found[frame.pts] = _rgb(frame)
                if len(found) == len(wanted):
                    break  # the frames after the last target would be wasted work
    return _in_target_order(t, found)


def _in_target_order(t: Targets, found: dict[int, np.ndarray]) -> Decoded:
    missing = [p for p in t.pts.tolist() if p not in found]
    if missing:
        raise AssertionError(f"{len(missing)} targets never decoded, first at pts {missing[0]}")
    frames = np.stack([found[p] for p in t.pts.tolist()])
    return Decoded(frames, t.pts_seconds.copy())


# -- GPU (NVDEC) -----------------------------------------------------------------------------------
# Frames stay on the GPU inside the timed call (where the model wants them); the providers wait for
# the device before returning, and the check copies them back afterwards.
def _synchronize() -> None:
    import torch

    torch.cuda.synchronize()


def sage_fast_dali(t: Targets) -> Decoded:
    """sage_fast's DALI backend: NVDEC decoding, frames on the GPU."""
    import torch

    reader = VideoReader(t.path, backend="dali", device="cuda")
    batch = reader.sample_uniform(t.uniform[0], t.uniform[1]) if t.uniform else reader.frames_at(t.seconds)
    _synchronize()
    return Decoded(batch.data.permute(0, 2, 3, 1), batch.pts_seconds.numpy(), batch.indices.numpy(),
                   {"device": str(batch.data.device), "torch": torch.__version__})


def torchcodec_cuda(t: Targets) -> Decoded:
    """torchcodec on the GPU (NVDEC), exact seek mode, batch API."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(t.path), seek_mode="exact", device="cuda", dimension_order="NHWC")
    batch = decoder.get_frames_played_at(t.mid_seconds.tolist())
    _synchronize()
    return Decoded(batch.data, batch.pts_seconds.numpy())


GPU_CASE_A: dict[str, Provider] = {
    "sage_fast dali (NVDEC)": sage_fast_dali,
    "torchcodec cuda (NVDEC)": torchcodec_cuda,
}


CASE_A: dict[str, Provider] = {
    "sage_fast exact": sage_fast_exact,
    "sage_fast skim": sage_fast_skim,
    "sage_fast pyav backend": sage_fast_pyav,
    "torchcodec exact": torchcodec_exact,
    "torchcodec approximate": torchcodec_approximate,
    "decord": decord_batch,
    "pyav seek per frame": pyav_seek_per_frame,
    "pyav sequential": pyav_sequential,
}
