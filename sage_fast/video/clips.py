"""Files cut from a video for tools: timestamped JPEG frames, subclips and speech-ready audio.

These are what SAGE's extract-video-parts and transcribe-speech tools hand on, so each output is
written atomically (a crash never leaves half a JPEG behind) and ffmpeg always gets an argument
list, never a shell string: the times come from a model's tool call.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sage_fast.video.errors import NoAudioError, VideoDecodeError

if TYPE_CHECKING:
    from sage_fast.video.reader import VideoReader


def ffmpeg_binary() -> str:
    """Path of the ffmpeg CLI, or an error that says how to install it."""
    found = shutil.which("ffmpeg")
    if found is None:
        raise RuntimeError("the ffmpeg command is not installed: `apt-get install -y ffmpeg` (Debian/Ubuntu) "
                           "or `conda install ffmpeg`")
    return found


def _temporary_sibling(path: Path) -> Path:
    # Process and thread ids: two tool calls writing the same output never share a partial file.
    return path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.partial{path.suffix}")


def _window(source: Path, start: float, end: float, duration: float) -> tuple[float, float]:
    start, end = float(start), float(end)
    if not (np.isfinite(start) and np.isfinite(end)):
        raise ValueError(f"{source}: start and end must be finite seconds, got {start} and {end}")
    if start > end:
        raise ValueError(f"{source}: start ({start:.3f} s) is after end ({end:.3f} s); swap them")
    if end < 0:
        raise ValueError(f"{source}: the window ends at {end:.3f} s, before the video starts; ask for a "
                         f"window inside [0, {duration:.3f}]")
    if start > duration:
        raise ValueError(f"{source}: the window starts at {start:.3f} s, after the video ends "
                         f"({duration:.3f} s); ask for a window inside [0, {duration:.3f}]")
    clamped_start = min(max(start, 0.0), duration)
    return clamped_start, min(max(end, clamped_start), duration)


def timestamp_for_filename(seconds: float) -> str:
    """HH-MM-SS.mmm: a timestamp that sorts and is legal in file names everywhere."""
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}-{minutes:02d}-{secs:02d}.{millis:03d}"


def extract_frames(reader: VideoReader, start: float, end: float, n: int, out_dir: Path, *,
                   prefix: str = "frame", quality: int = 90) -> list[Path]:
    """``n`` frames at the centres of ``n`` equal slices of [start, end], saved as JPEGs named
    ``{prefix}_{i:02d}_{HH-MM-SS.mmm}.jpg`` with each frame's own timestamp."""
    from PIL import Image

    if not 1 <= n <= 1000:
        raise ValueError(f"{reader.path}: n must be between 1 and 1000 frames, got {n}")
    if "/" in prefix or "\\" in prefix or prefix.startswith("."):
        raise ValueError(f"{reader.path}: prefix must be a plain file-name prefix, got {prefix!r}")
    start, end = _window(reader.path, start, end, reader.metadata.end_seconds)
    times = start + (np.arange(n) + 0.5) * ((end - start) / n)
    batch = reader.frames_at(times)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pixels = batch.data.permute(0, 2, 3, 1).cpu().numpy()
    for i, (image, pts) in enumerate(zip(pixels, batch.pts_seconds.tolist(), strict=True)):
        path = out_dir / f"{prefix}_{i:02d}_{timestamp_for_filename(pts)}.jpg"
        partial = _temporary_sibling(path)
        try:
            Image.fromarray(image).save(partial, format="JPEG", quality=quality)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def _run_ffmpeg(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([ffmpeg_binary(), "-nostdin", "-hide_banner", "-v", "error", *args],
                          capture_output=True, check=False)


def _has_video_frames(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return False
            return any(p.size for p in container.demux(video=0))
    except Exception:
        return False


@dataclass(frozen=True)
class _SeekPlan:
    """Where a cut of ``start`` begins, in stream seconds.

    ``shown``: the pts of the frame on screen at ``start``; ``keyframe``: a time to seek the input
    to so that decoding starts at (or before) the keyframe that frame is decoded from;
    ``origin``: the file's start time, which ffmpeg's -ss counts from.
    """

    shown: float
    keyframe: float
    origin: float = 0.0


def _seek_plan(source: Path, start: float) -> _SeekPlan:
    """Reads packets (no decoding) around ``start`` to plan an exact cut.

    ffmpeg's ``-ss`` is relative to the file's start time, drops every frame shown before it when
    re-encoding (which would lose the frame already on screen at ``start``), and on demuxers
    without an index (MPEG-TS) lands on any packet, so the decoder would drop frames until the
    next keyframe. Scanning starts a second (then ten, then the whole file) before ``start``
    because B-frames reorder pts and such demuxers seek only approximately.
    """
    import av

    try:
        with av.open(str(source)) as container:
            origin = container.start_time / 1e6 if container.start_time is not None else 0.0
            stream = container.streams.video[0]
            time_base = float(stream.time_base)
            for back in (1.0, 10.0, 60.0, None):
                target = 0 if back is None else int((start - back) / time_base)
                container.seek(target, backward=True, any_frame=False, stream=stream)
                shown, first, keys = None, None, []
                for packet in container.demux(stream):
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    if stamp is None:
                        continue
                    decoded_at = (packet.dts if packet.dts is not None else stamp) * time_base
                    first = decoded_at if first is None else first
                    if decoded_at > start + 1e-9:
                        break  # decode order: every later packet is shown after start
                    if stamp * time_base <= start + 1e-9:
                        shown = max(shown if shown is not None else -math.inf, stamp * time_base)
                    if packet.is_keyframe:
                        keys.append((stamp * time_base, decoded_at))
                if shown is None:
                    if back is None:  # start is before the first frame
                        return _SeekPlan(start, start, origin)
                    continue
                # The frame's keyframe: the last one shown at or before it (open-GOP leading
                # pictures precede their keyframe's pts, so they pick the previous keyframe).
                key = max((k for k in keys if k[0] <= shown + 1e-9), default=None)
                if key is not None and first is not None and (back is None or first <= start - 0.5):
                    return _SeekPlan(shown, _keyframe_seek_time(container, stream, *key), origin)
    except Exception:  # the cut itself reports unreadable files
        pass
    return _SeekPlan(start, start)


def _keyframe_seek_time(container: Any, stream: Any, pts: float, dts: float) -> float:
    """Its pts when a seek there lands on the keyframe itself (indexed containers: MP4, MKV),
    else its decode time: demuxers that search by dts (MPEG-TS) land after the keyframe when
    asked for its pts, and a stream copy from there starts with undecodable frames."""
    time_base = float(stream.time_base)
    container.seek(int(round(pts / time_base)), backward=True, any_frame=False, stream=stream)
    for packet in container.demux(stream):
        if packet.pts is None and packet.dts is None:
            continue
        landed = (packet.pts if packet.pts is not None else packet.dts) * time_base
        return pts if packet.is_keyframe and abs(landed - pts) < 1e-6 else min(dts, pts)
    return min(dts, pts)


def _seconds_arg(seconds: float) -> str:
    """Seconds for ffmpeg, rounded down to its microseconds so a frame at ``seconds`` is kept."""
    return f"{math.floor(max(seconds, 0.0) * 1e6 + 1e-3) / 1e6:.6f}"


def extract_subclip(source: Path, start: float, end: float, out_path: Path, *, duration: float,
                    reencode: bool = False) -> Path:
    """Cuts [start, end] into ``out_path``.

    Stream copy first: no quality loss and no decoding, but the clip starts at the keyframe at
    or before ``start``. When copying fails (or ``reencode``), the window is re-encoded with
    libx264/AAC and its first frame is the one on screen at ``start``.
    """
    start, end = _window(source, start, end, duration)
    if end - start <= 0:
        raise ValueError(f"{source}: the window [{start:.3f}, {end:.3f}] s is empty; give end > start")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _temporary_sibling(out_path)
    plan = _seek_plan(source, start)
    # The input is sought to the keyframe the first frame is decoded from (to its decode time where
    # seeking is approximate, as in MPEG-TS), so a copy starts there and no needed packet is skipped.
    keyframe = float(_seconds_arg(plan.keyframe - plan.origin))
    streams = ["-map", "0:v:0", "-map", "0:a:0?"]
    attempts = []
    if not reencode:
        attempts.append(["-ss", f"{keyframe:.6f}", "-i", str(source), "-t", f"{end - plan.origin - keyframe:.6f}",
                         *streams, "-c", "copy", "-avoid_negative_ts", "make_zero"])
    # Re-encode: decoded frames before the one on screen at start are dropped (output -ss, 0.1 ms
    # early so that rounding never drops that frame itself).
    skip = _seconds_arg(plan.shown - plan.origin - keyframe - 1e-4)
    attempts.append(["-ss", f"{keyframe:.6f}", "-i", str(source), "-ss", skip, "-t", f"{end - plan.shown:.6f}",
                     *streams, "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
                     "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"])
    errors = []
    for args in attempts:
        result = _run_ffmpeg(["-y", *args, str(partial)])
        if result.returncode == 0 and _has_video_frames(partial):
            os.replace(partial, out_path)
            return out_path
        errors.append(result.stderr.decode(errors="replace").strip()[-500:])
    partial.unlink(missing_ok=True)
    raise VideoDecodeError(f"{source}: could not cut [{start:.3f}, {end:.3f}] s into {out_path}: {errors[-1]}")


def load_audio(path: str | Path, start: float = 0.0, end: float | None = None, *,
               sample_rate: int = 16000) -> torch.Tensor:
    """Mono float32 samples in [-1, 1] of [start, end] at ``sample_rate``.

    ffmpeg decodes, downmixes and resamples, and trims sample-accurately (input ``-ss``).
    """
    if not 1000 <= sample_rate <= 192000:
        raise ValueError(f"{path}: sample_rate must be between 1000 and 192000 Hz, got {sample_rate}")
    if not math.isfinite(float(start)) or (end is not None and not math.isfinite(float(end))):
        raise ValueError(f"{path}: start and end must be finite seconds, got {start} and {end}")
    start = max(float(start), 0.0)
    if end is not None and float(end) < start:
        raise ValueError(f"{path}: end ({end} s) is before start ({start} s); swap them")
    args = ["-ss", f"{start:.6f}", "-i", str(path)]
    if end is not None:
        args += ["-t", f"{float(end) - start:.6f}"]
    result = _run_ffmpeg([*args, "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"])
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        if "matches no streams" in message:
            raise NoAudioError(f"{path}: has no audio track, so there is no speech to transcribe")
        raise VideoDecodeError(f"{path}: could not read audio ({message[-500:]})")
    return torch.from_numpy(np.frombuffer(result.stdout, dtype=np.float32).copy())
