"""Frame index of a video stream and the sampling plans computed from it.

Every backend reports the same :class:`VideoIndex`: one row per presented frame in pts order
(pts, duration, keyframe flag, position in decode order). Sampling is planned on it in plain
numpy, so "which frame is on screen at t" has one answer whatever decodes the pixels. The PyAV
builder here mirrors csrc/decode/video_index.cpp rule for rule; tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sage_fast.video.errors import VideoOpenError

# Containers such as AVI store no pts: libavformat derives them (B-frame reordering included), as
# the native core asks with AVFMT_FLAG_GENPTS, so both index frames in presentation order.
GENPTS = {"fflags": "+genpts"}


@dataclass(frozen=True)
class PacketTable:
    """Video packets in decode order (what the PyAV decoder plans with)."""

    pts: np.ndarray  # int64
    dts: np.ndarray  # int64, INT64_MIN when unknown
    pos: np.ndarray  # int64, -1 when unknown
    is_key: np.ndarray  # bool
    is_frame: np.ndarray  # bool: False for packets flagged discard
    gop: np.ndarray  # int32: decode-order group (keyframe to next keyframe)
    gop_first_packet: np.ndarray  # int64: packet index of each GOP's keyframe


@dataclass(frozen=True)
class VideoIndex:
    """Per presented frame (pts order): pts and duration in time-base ticks, keyframe flag and
    position in decode order, plus the stream facts that metadata is built from."""

    path: Path
    pts: np.ndarray
    duration: np.ndarray
    is_key: np.ndarray
    decode_position: np.ndarray
    time_base: Fraction
    info: dict[str, Any]
    packets: PacketTable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.pts) == 0:
            raise VideoOpenError(
                f"{self.path}: the video stream has no decodable frames (empty, zero-length or "
                "truncated before the first keyframe)"
            )

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def seconds(self, ticks: np.ndarray) -> np.ndarray:
        """Ticks to seconds, dividing last: 1021 ticks of 1/1000 s is exactly the double nearest
        1.021, the time a prompt prints, so frames_at(1.021) finds that frame."""
        return ticks.astype(np.float64) * self.time_base.numerator / self.time_base.denominator

    @property
    def pts_seconds(self) -> np.ndarray:
        return self.seconds(self.pts)

    @property
    def duration_seconds(self) -> np.ndarray:
        return self.seconds(self.duration)

    @property
    def begin_seconds(self) -> float:
        return float(self.seconds(self.pts[:1])[0])

    @property
    def end_seconds(self) -> float:
        return float(self.seconds(self.pts[-1:] + self.duration[-1:])[0])

    @property
    def keyframe_indices(self) -> np.ndarray:
        return np.flatnonzero(self.is_key)


def frames_at_times(index: VideoIndex, seconds: np.ndarray | list[float]) -> np.ndarray:
    """The frame on screen at each time: the last frame whose pts <= t (times before the first
    frame give frame 0, times past the end give the last frame)."""
    times = np.asarray(seconds, dtype=np.float64)
    if times.ndim != 1:
        raise ValueError(f"seconds must be a 1-D sequence of times, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError("seconds must be finite numbers (got NaN or infinity)")
    # 1 ns of slack: times computed as k * (1 / fps) land a rounding step below the k-th pts.
    found = np.searchsorted(index.pts_seconds, times + 1e-9, side="right") - 1
    return np.clip(found, 0, index.num_frames - 1).astype(np.int64)


def uniform_times(index: VideoIndex, n: int, max_fps: float | None) -> np.ndarray:
    """Centres of ``n`` equal slices of the video, with ``n`` capped at ``max_fps`` x duration.

    Time-uniform (not index-uniform) so that variable-frame-rate videos are sampled evenly in
    time, which is what a prompt's "frame at t" promises.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if max_fps is not None and max_fps <= 0:
        raise ValueError(f"max_fps must be positive or None, got {max_fps}")
    span = max(index.end_seconds - index.begin_seconds, 0.0)
    count = min(n, index.num_frames)
    if max_fps is not None:
        count = min(count, max(1, int(np.floor(span * max_fps + 1e-9))))
    return index.begin_seconds + (np.arange(count, dtype=np.float64) + 0.5) * (span / count)


def nearest_keyframes(index: VideoIndex, frame_indices: np.ndarray) -> np.ndarray:
    """For each frame, the keyframe nearest to it in time (ties go to the earlier one)."""
    keys = index.keyframe_indices
    if len(keys) == 0:  # a stream whose first keyframe is a discarded packet: no cheap frames
        return np.asarray(frame_indices, dtype=np.int64)
    key_times = index.pts_seconds[keys]
    times = index.pts_seconds[np.asarray(frame_indices, dtype=np.int64)]
    right = np.clip(np.searchsorted(key_times, times, side="left"), 0, len(keys) - 1)
    left = np.clip(right - 1, 0, len(keys) - 1)
    pick_left = np.abs(times - key_times[left]) <= np.abs(key_times[right] - times)
    return keys[np.where(pick_left, left, right)].astype(np.int64)


def _display_rotation(container: Any, stream: Any) -> int:
    """Clockwise rotation that shows frames upright (ffmpeg's autorotate angle)."""
    for frame in container.decode(stream):
        ccw = getattr(frame, "rotation", 0) or 0
        return (int(round(-ccw)) % 360 + 45) // 90 * 90 % 360
    return 0


def build_index_pyav(path: str | Path) -> VideoIndex:
    """Scans every packet of the best video stream with PyAV (no decoding except one frame for
    the rotation). Same rules as the native scan: packets before the first keyframe are dropped,
    discard-flagged packets are decoded but not presented, a damaged tail ends the scan."""
    import av

    path = Path(path)
    try:
        container = av.open(str(path), options=GENPTS)
    except Exception as exc:
        raise VideoOpenError(f"{path}: cannot open as a media file ({exc})") from exc
    with container:
        videos = container.streams.video
        if not videos:
            raise VideoOpenError(f"{path}: has no video stream (audio-only or not a video file)")
        stream = container.streams.best("video")
        pts: list[int] = []
        dts: list[int] = []
        pos: list[int] = []
        key: list[bool] = []
        frame: list[bool] = []
        pkt_duration: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or (packet.pts is None and packet.dts is None):
                    continue
                dts.append(packet.dts if packet.dts is not None else np.iinfo(np.int64).min)
                pts.append(packet.pts if packet.pts is not None else packet.dts)
                pos.append(packet.pos if packet.pos is not None else -1)
                key.append(bool(packet.is_keyframe))
                frame.append(not packet.is_discard)
                pkt_duration.append(packet.duration or 0)
        except Exception:  # a truncated or damaged tail: keep the packets read so far
            pass
        try:
            container.seek(0, backward=True, any_frame=False, stream=stream)
            rotation = _display_rotation(container, stream)
        except Exception:
            rotation = 0
        codec = stream.codec_context
        info = {
            "codec": stream.codec_context.name,
            "pixel_format": codec.format.name if codec.format is not None else "unknown",
            "container": container.format.name,
            "width": codec.width,
            "height": codec.height,
            "rotation": rotation,
            "has_audio": bool(container.streams.audio),
            "average_fps": float(stream.average_rate) if stream.average_rate else 0.0,
            "container_duration": container.duration / 1e6 if container.duration else 0.0,
            "bit_rate": container.bit_rate or 0,
        }
        time_base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
    first_key = next((i for i, k in enumerate(key) if k), len(key))
    arrays = [np.asarray(a[first_key:]) for a in (pts, dts, pos, key, frame, pkt_duration)]
    p_pts, p_dts, p_pos, p_key, p_frame, p_dur = arrays
    gop = (np.cumsum(p_key.astype(np.int64)) - 1).astype(np.int32)
    packets = PacketTable(
        pts=p_pts.astype(np.int64), dts=p_dts.astype(np.int64), pos=p_pos.astype(np.int64),
        is_key=p_key.astype(bool), is_frame=p_frame.astype(bool), gop=gop,
        gop_first_packet=np.flatnonzero(p_key).astype(np.int64),
    )
    return index_from_packets(path, packets, p_dur.astype(np.int64), time_base, info)


def index_from_packets(
    path: Path, packets: PacketTable, packet_duration: np.ndarray, time_base: Fraction,
    info: dict[str, Any],
) -> VideoIndex:
    """Presented frames from decode-order packets: stable sort by pts, durations from gaps."""
    frame_packets = np.flatnonzero(packets.is_frame)
    order = frame_packets[np.argsort(packets.pts[frame_packets], kind="stable")]
    pts = packets.pts[order]
    duration = np.zeros(len(order), dtype=np.int64)
    if len(order):
        duration[:-1] = np.diff(pts)
        last = int(packet_duration[order[-1]])
        if last <= 0:
            if len(order) > 1:
                last = int(duration[-2])
            elif info.get("average_fps", 0) > 0:
                last = round(1 / (info["average_fps"] * float(time_base)))
        duration[-1] = max(last, 0)
    return VideoIndex(
        path=path, pts=pts, duration=duration, is_key=packets.is_key[order],
        decode_position=order.astype(np.int64), time_base=time_base, info=info, packets=packets,
    )


def index_from_native(path: Path, decoder: Any) -> VideoIndex:
    """The native decoder's index in the same form (the scan already happened in C++)."""
    meta = decoder.metadata
    arrays = decoder.index_arrays()
    num, den = meta["time_base"]
    info = {k: meta[k] for k in ("codec", "pixel_format", "container", "width", "height", "rotation",
                                 "has_audio", "average_fps", "container_duration", "bit_rate")}
    return VideoIndex(
        path=path, pts=arrays["pts"], duration=arrays["duration"], is_key=arrays["is_key"],
        decode_position=arrays["decode_position"], time_base=Fraction(num, den), info=info,
    )
