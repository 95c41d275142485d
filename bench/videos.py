"""Generates the benchmark videos once (ffmpeg CLI) into ``bench/.data/`` and finds them again.

The videos are encoded like real uploads, because decode benchmarks on easy files flatter every
decoder: 8-bit 4:2:0 H.264 High profile with 3 B-frames, closed GOPs of random length (2-10 s,
seeded, given to ``-force_key_frames`` with ``-g`` huge and scene-cut detection off so that the
GOP lengths are exactly ours), per-frame temporal noise so each frame costs real bits (~3 Mbit/s at
720p), and an AAC audio track interleaved with the video as in any .mp4.

The hour-long videos are a short encode stream-copied several times with the concat demuxer:
timestamps run on continuously, and generation takes minutes instead of an hour on 2 cores.

``SAGE_BENCH_SMALL=1`` swaps in tiny stand-ins (320x180, tens of seconds) to check the suite
quickly; their file names differ, so both sets can live in the cache side by side.

    python -m bench.videos            # generate (or find) every benchmark video, with progress
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

DATA_DIR = Path(os.environ.get("SAGE_BENCH_DATA", Path(__file__).resolve().parent / ".data"))
NAMES = ("720p_10min", "720p_60min", "1080p_60min")


def small_mode() -> bool:
    """True when ``SAGE_BENCH_SMALL`` asks for the tiny stand-in videos."""
    return os.environ.get("SAGE_BENCH_SMALL", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class VideoSpec:
    """One benchmark video: a base encode of ``seconds``, concatenated ``copies`` times."""

    name: str
    width: int
    height: int
    fps: int
    seconds: int
    copies: int
    video_kbps: int
    gop_seconds: tuple[float, float]
    seed: int = 2024

    @property
    def duration(self) -> int:
        return self.seconds * self.copies

    @property
    def filename(self) -> str:
        # Every parameter is in the name, so a changed spec never reuses a stale file.
        lo, hi = self.gop_seconds
        return (f"{self.width}x{self.height}_{self.fps}fps_{self.seconds}s_x{self.copies}_"
                f"{self.video_kbps}k_gop{lo:g}-{hi:g}_s{self.seed}.mp4")

    @property
    def base(self) -> VideoSpec:
        return replace(self, copies=1)


def spec(name: str) -> VideoSpec:
    """The spec behind a benchmark video name (small stand-ins under ``SAGE_BENCH_SMALL=1``)."""
    if name not in NAMES:
        raise ValueError(f"unknown benchmark video {name!r}; choose one of {', '.join(NAMES)}")
    if small_mode():
        small = {
            "720p_10min": VideoSpec(name, 320, 180, 30, 20, 1, 400, (1.0, 3.0)),
            "720p_60min": VideoSpec(name, 320, 180, 30, 20, 3, 400, (1.0, 3.0)),
            "1080p_60min": VideoSpec(name, 480, 270, 30, 10, 3, 800, (1.0, 3.0)),
        }
        return small[name]
    full = {
        "720p_10min": VideoSpec(name, 1280, 720, 30, 600, 1, 3000, (2.0, 10.0)),
        "720p_60min": VideoSpec(name, 1280, 720, 30, 600, 6, 3000, (2.0, 10.0)),
        "1080p_60min": VideoSpec(name, 1920, 1080, 30, 300, 12, 5000, (2.0, 10.0)),
    }
    return full[name]


def keyframe_times(s: VideoSpec) -> list[float]:
    """Seeded keyframe times: GOP lengths drawn uniformly from ``s.gop_seconds``, on frame times."""
    rng = random.Random(f"{s.seed}-{s.width}x{s.height}-{s.seconds}")
    times, t = [0.0], 0.0
    while True:
        t += rng.uniform(*s.gop_seconds)
        snapped = round(t * s.fps) / s.fps
        if snapped >= s.seconds - 0.5:  # no sliver GOP at the very end
            return times
        times.append(snapped)


def _run_ffmpeg(args: list[str], label: str, seconds: float, log: Callable[[str], None]) -> None:
    """Runs ffmpeg, logging its progress every few seconds (it can take minutes)."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the benchmark videos need the ffmpeg CLI: apt-get install ffmpeg")
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1", *args]
    start = last = time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith("out_time_us=") and time.monotonic() - last >= 5:
                last = time.monotonic()
                done = int(line.split("=", 1)[1]) / 1e6 if line.split("=", 1)[1].strip().isdigit() else 0
                log(f"[bench videos] {label}: {100 * done / seconds:5.1f}% ({last - start:.0f} s)")
        err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed making {label} (exit {proc.returncode}):\n{err}\n{' '.join(cmd)}")


def _encode(s: VideoSpec, out: Path, log: Callable[[str], None]) -> None:
    keys = ",".join(f"{t:.3f}" for t in keyframe_times(s))
    source = f"testsrc2=size={s.width}x{s.height}:rate={s.fps}"
    _run_ffmpeg([
        "-y", "-f", "lavfi", "-i", source, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-vf", "noise=alls=12:allf=t", "-filter_threads", str(os.cpu_count() or 2), "-t", str(s.seconds),
        "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p",
        "-bf", "3", "-g", "100000", "-sc_threshold", "0", "-force_key_frames", keys,
        "-b:v", f"{s.video_kbps}k", "-maxrate", f"{s.video_kbps * 4 // 3}k", "-bufsize", f"{s.video_kbps * 2}k",
        "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-movflags", "+faststart", str(out),
    ], f"encode {out.name}", s.seconds, log)


def _concat(base: Path, copies: int, out: Path, seconds: float, log: Callable[[str], None]) -> None:
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{base.resolve()}'\n" for _ in range(copies)))
    try:
        _run_ffmpeg(["-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0", "-c", "copy",
                     "-movflags", "+faststart", str(out)], f"concat {out.name}", seconds, log)
    finally:
        listing.unlink(missing_ok=True)


def _make(s: VideoSpec, log: Callable[[str], None]) -> Path:
    final = DATA_DIR / s.filename
    if final.exists():
        return final
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.stem + ".part.mp4")  # renamed when complete: no half files
    start = time.monotonic()
    if s.copies == 1:
        log(f"[bench videos] encoding {final.name} ({s.seconds} s of {s.width}x{s.height}) ...")
        _encode(s, partial, log)
    else:
        base = _make(s.base, log)
        log(f"[bench videos] concatenating {s.copies} x {base.name} -> {final.name} ...")
        _concat(base, s.copies, partial, s.duration, log)
    partial.replace(final)
    log(f"[bench videos] {final.name}: {final.stat().st_size / 1e6:.0f} MB in {time.monotonic() - start:.0f} s")
    return final


def ensure_video(name: str, log: Callable[[str], None] = print) -> Path:
    """Path of benchmark video ``name`` (see :data:`NAMES`), generating it on first use."""
    return _make(spec(name), log)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(NAMES)
    start = time.monotonic()
    for name in names:
        path = ensure_video(name, lambda msg: print(msg, flush=True))
        print(f"{name}: {path}", flush=True)
    print(f"[bench videos] all ready in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
