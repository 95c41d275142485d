"""Files cut from a video for tools: timestamped JPEG frames, subclips and speech-ready audio.

These are what SAGE's extract-video-parts and transcribe-speech tools hand on, so each output is
written atomically (a crash never leaves half a JPEG behind) and ffmpeg always gets an argument
list, never a shell string: the times come from a model's tool call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

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
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")


def _window(start: float, end: float, duration: float) -> tuple[float, float]:
    start, end = float(start), float(end)
    if not (np.isfinite(start) and np.isfinite(end)):
        raise ValueError(f"start and end must be finite seconds, got {start} and {end}")
    if start > end:
        raise ValueError(f"start ({start:.3f} s) is after end ({end:.3f} s); swap them")
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
        raise ValueError(f"n must be between 1 and 1000 frames, got {n}")
    if "/" in prefix or "\\" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    start, end = _window(start, end, reader.metadata.end_seconds)
    times = start + (np.arange(n) + 0.5) * ((end - start) / n)
    batch = reader.frames_at(times)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pixels = batch.data.permute(0, 2, 3, 1).cpu().numpy()
    for i, (image, pts) in enumerate(zip(pixels, batch.pts_seconds.tolist(), strict=True)):
        path = out_dir / f"{prefix}_{i:02d}_{timestamp_for_filename(pts)}.jpg"
        partial = _temporary_sibling(path)
        Image.fromarray(image).save(partial, format="JPEG", quality=quality)
        os.replace(partial, path)
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


def extract_subclip(source: Path, start: float, end: float, out_path: Path, *, duration: float,
                    reencode: bool = False) -> Path:
    """Cuts [start, end] into ``out_path``.

    Stream copy first: no quality loss and no decoding, but the clip starts at the keyframe at
    or before ``start``. When copying fails (or ``reencode``), the window is re-encoded with
    libx264/AAC and starts exactly at ``start``.
    """
    start, end = _window(start, end, duration)
    if end - start <= 0:
        raise ValueError(f"the window [{start:.3f}, {end:.3f}] s is empty; give end > start")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _temporary_sibling(out_path)
    window = ["-ss", f"{start:.6f}", "-i", str(source), "-t", f"{end - start:.6f}", "-map", "0:v:0", "-map", "0:a:0?"]
    attempts = [] if reencode else [[*window, "-c", "copy", "-avoid_negative_ts", "make_zero"]]
    attempts.append([*window, "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
                     "-c:a", "aac", "-b:a", "128k"])
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
        raise ValueError(f"sample_rate must be between 1000 and 192000 Hz, got {sample_rate}")
    start = max(float(start), 0.0)
    if end is not None and float(end) < start:
        raise ValueError(f"end ({end} s) is before start ({start} s); swap them")
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
