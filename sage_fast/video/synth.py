"""Make test and demo videos with the ffmpeg CLI: frame-indexed clips, a narrated sample, broken inputs.

Decoders are only trustworthy when checked against videos whose truth is known, so this module
writes three kinds of files:

* `make_indexed_video`: every frame carries its own index as a big binary code in its pixels
  (`read_frame_index` reads it back), so a decoder test can assert "frame i is really frame i"
  across codecs, GOPs, B-frames, odd sizes, variable frame rate and rotation metadata.
* `make_sample_video`: a realistic narrated clip (distinct scenes, a burned-in clock, speech that
  names each scene) for demos and end-to-end agent runs; `SampleVideoConfig.scenes()` is its truth.
* `make_broken_inputs`: the bad files (empty, truncated, audio only, ...) that error paths must handle.

Everything goes through the `ffmpeg`/`ffprobe` executables with argument lists (never a shell), so
the files match what users' own ffmpeg produces; the encoder flags were checked against ffmpeg 5.1.
Outputs are written to a temporary file in the destination folder and moved into place with
`os.replace`, so a crash never leaves a half-written video under the final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import warnings
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VFR_PATTERN",
    "IndexedVideoSpec",
    "SampleScene",
    "SampleVideoConfig",
    "ffprobe",
    "frame_times",
    "make_broken_inputs",
    "make_indexed_video",
    "make_sample_video",
    "read_frame_index",
    "render_index_frame",
]

# Frame durations of a VFR indexed video, in units of 1/(4*fps), repeated. Mean 4 units, so the mean
# frame rate is still `fps`; the durations (1, .5, 1.5, .75, 1.25 frame periods) are all different.
VFR_PATTERN: tuple[int, ...] = (4, 2, 6, 3, 5)
_VFR_SUBTICKS = 4

_CODE_SIDE = 4  # 4x4 cells: 12 data bits (index, MSB first) then 4 check bits
_MAX_INDEX = (1 << 12) - 1
_MIN_WIDTH, _MIN_HEIGHT = 64, 48
_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

# codec -> pixel formats it accepts here (mpeg4 is 4:2:0 only; VP9 4:2:2/4:4:4 need profile 1).
_CODEC_PIX_FMTS = {
    "libx264": ("yuv420p", "yuv422p", "yuv444p"),
    "mpeg4": ("yuv420p",),
    "libvpx-vp9": ("yuv420p", "yuv422p", "yuv444p"),
}
# container extension -> codecs it may hold (WebM is VP8/VP9/AV1 only).
_CONTAINER_CODECS = {
    ".mp4": ("libx264", "mpeg4", "libvpx-vp9"),
    ".mov": ("libx264", "mpeg4"),
    ".mkv": ("libx264", "mpeg4", "libvpx-vp9"),
    ".webm": ("libvpx-vp9",),
    ".avi": ("libx264", "mpeg4"),
}
_AUDIO_CODEC = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus", ".avi": "libmp3lame"}
# -colorspace tag -> swscale matrix name, so the tag matches the matrix actually used for RGB->YUV.
_COLORSPACES = {"bt709": "bt709", "smpte170m": "smpte170m", "bt470bg": "bt470", "bt2020nc": "bt2020"}


# --------------------------------------------------------------------------- ffmpeg plumbing


def _tool(name: str) -> str:
    """Path of an ffmpeg executable, or a RuntimeError that says how to install it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` was not found on PATH; install it with `apt-get install -y ffmpeg`.")
    return path


def _run(cmd: list[str], *, stdin_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command, turning a failure into a RuntimeError that carries ffmpeg's own message."""
    proc = subprocess.run(cmd, input=stdin_bytes, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {tail}")
    return proc


def ffprobe(path: str | os.PathLike[str], *args: str) -> dict[str, Any]:
    """ffprobe's JSON report for `path`, e.g. `ffprobe(p, "-show_streams")` (args go before the file)."""
    cmd = [_tool("ffprobe"), "-v", "error", "-of", "json", *args, str(path)]
    return json.loads(_run(cmd).stdout or b"{}")


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix, so ffmpeg picks the container); move it on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rate(value: float) -> Fraction:
    """A frame rate as an exact fraction (29.97 -> 2997/100), so ffmpeg gets no rounding surprises."""
    return Fraction(value).limit_denominator(1001 * 1000)


# --------------------------------------------------------------------------- indexed videos


@dataclass
class IndexedVideoSpec:
    """What `make_indexed_video` writes; the container comes from the output file's extension."""

    num_frames: int = 60
    fps: float = 30.0  # for vfr: the mean rate; durations follow VFR_PATTERN
    width: int = 160
    height: int = 120
    codec: str = "libx264"  # "libx264" | "mpeg4" | "libvpx-vp9"
    pix_fmt: str = "yuv420p"
    gop: int = 12  # keyframe interval in frames, exact for libx264/mpeg4/vp9
    bframes: int = 2  # B-frames; for VP9 (no B-frames) >0 turns on hidden alt-ref frames instead
    vfr: bool = False  # frame durations cycle through VFR_PATTERN (not for .avi)
    rotation: int = 0  # 0/90/180/270 display-matrix rotation (.mp4/.mov only)
    audio: bool = False  # add a 440 Hz sine track of the video's length
    color_range: str | None = None  # "tv" | "pc"; None = encoder default (tv)
    colorspace: str | None = None  # "bt709" | "smpte170m" | "bt470bg" | "bt2020nc"; None = bt601 untagged

    def __post_init__(self) -> None:
        if not 1 <= self.num_frames <= _MAX_INDEX + 1:
            raise ValueError(
                f"num_frames={self.num_frames}: the 12-bit code holds 1..{_MAX_INDEX + 1} frames"
            )
        if not self.fps > 0:
            raise ValueError(f"fps={self.fps}: must be > 0")
        if self.width < _MIN_WIDTH or self.height < _MIN_HEIGHT:
            raise ValueError(
                f"width x height={self.width}x{self.height}: the frame code needs at least "
                f"{_MIN_WIDTH}x{_MIN_HEIGHT}; raise width/height"
            )
        if self.codec not in _CODEC_PIX_FMTS:
            raise ValueError(f"codec={self.codec!r}: choose one of {sorted(_CODEC_PIX_FMTS)}")
        if self.pix_fmt not in _CODEC_PIX_FMTS[self.codec]:
            raise ValueError(
                f"pix_fmt={self.pix_fmt!r} is not supported with codec={self.codec!r}; "
                f"use one of {_CODEC_PIX_FMTS[self.codec]}"
            )
        if self.codec == "libx264" and self.pix_fmt in ("yuv420p", "yuv422p"):
            odd_h = self.pix_fmt == "yuv420p" and self.height % 2
            if self.width % 2 or odd_h:
                raise ValueError(
                    f"width x height={self.width}x{self.height}: libx264 with pix_fmt={self.pix_fmt!r} needs "
                    "even dimensions; make them even, or use pix_fmt='yuv444p' or codec='mpeg4' for odd sizes"
                )
        if self.gop < 1:
            raise ValueError(f"gop={self.gop}: must be >= 1")
        if not 0 <= self.bframes <= 16:
            raise ValueError(f"bframes={self.bframes}: must be in 0..16")
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation={self.rotation}: must be 0, 90, 180 or 270")
        if self.color_range not in (None, "tv", "pc"):
            raise ValueError(f"color_range={self.color_range!r}: use None, 'tv' or 'pc'")
        if self.colorspace is not None and self.colorspace not in _COLORSPACES:
            raise ValueError(f"colorspace={self.colorspace!r}: use None or one of {sorted(_COLORSPACES)}")


def frame_times(spec: IndexedVideoSpec) -> np.ndarray:
    """Presentation time in seconds of each frame of `make_indexed_video(path, spec)`, shape (num_frames,).

    Exact for mp4/mov; Matroska/WebM store milliseconds, so compare with a 1 ms tolerance there.
    """
    rate = float(_rate(spec.fps))
    if not spec.vfr:
        return np.arange(spec.num_frames, dtype=np.float64) / rate
    durations = np.resize(np.asarray(VFR_PATTERN, dtype=np.float64), spec.num_frames)
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    return starts / (_VFR_SUBTICKS * rate)


def _code_layout(height: int, width: int) -> tuple[int, int, int]:
    """(cell, top, left) of the 4x4 code grid: cells >= 8 px, centred, with >= half a cell of guard."""
    cell = max(8, min(width // 8, height // 6))
    return cell, (height - _CODE_SIDE * cell) // 2, (width - _CODE_SIDE * cell) // 2


def _code_bits(index: int) -> list[int]:
    """16 cell values: the 12-bit index MSB first, then the complement of the XOR of its three nibbles.

    The complement makes all-black and all-white frames invalid codes, and any single flipped cell
    fails the check, so a wrong frame is reported instead of silently misread.
    """
    check = ~((index >> 8) ^ (index >> 4) ^ index) & 0xF
    word = (index << 4) | check
    return [(word >> (15 - k)) & 1 for k in range(16)]


def render_index_frame(index: int, height: int, width: int) -> np.ndarray:
    """The (height, width, 3) uint8 RGB frame that encodes `index`: smooth moving colours + the code."""
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"index={index}: must be in 0..{_MAX_INDEX}")
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)
    phase = np.float32(index / 23.0)  # non-integer period: consecutive frames always differ
    frame = np.empty((height, width, 3), dtype=np.float32)
    frame[..., 0] = (128 + 90 * np.sin(2 * np.pi * (x + phase)))[None, :]
    frame[..., 1] = (128 + 90 * np.sin(2 * np.pi * (0.8 * y - 1.3 * phase)))[:, None]
    frame[..., 2] = 128 + 90 * np.sin(2 * np.pi * (0.5 * (x[None, :] + y[:, None]) + 0.7 * phase))
    out = frame.astype(np.uint8)

    cell, top, left = _code_layout(height, width)
    guard = cell // 2
    side = _CODE_SIDE * cell
    out[top - guard : top + side + guard, left - guard : left + side + guard] = 128
    for k, bit in enumerate(_code_bits(index)):
        r, c = divmod(k, _CODE_SIDE)
        out[top + r * cell : top + (r + 1) * cell, left + c * cell : left + (c + 1) * cell] = 255 * bit
    return out


def read_frame_index(frame_rgb: Any) -> int:
    """Decode the frame index drawn by `make_indexed_video`.

    Args:
        frame_rgb: the decoded frame as stored, either a numpy (H, W, 3) or (H, W) array or a torch
            (3, H, W) / (H, W) tensor, uint8 or float in [0, 255].
    Returns:
        the index, 0..4095.
    Raises:
        ValueError: the frame is too small or its code fails the check bits (not an indexed frame,
            wrong frame geometry, or badly damaged pixels).

    The code is located from the frame size, so the frame must be the stored picture. For a video
    made with `rotation=R` whose decoder applied the display rotation (R degrees counter-clockwise;
    width and height swap for 90/270), undo it first: `np.rot90(frame, k=-R // 90)`.
    """
    if hasattr(frame_rgb, "detach"):  # torch tensor: channels first
        arr = frame_rgb.detach().cpu().numpy()
        if arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.asarray(frame_rgb)
    if arr.ndim == 3:
        arr = arr.astype(np.float32).mean(axis=-1)
    elif arr.ndim != 2:
        raise ValueError(f"frame_rgb has shape {arr.shape}; expected (H, W, 3), (3, H, W) or (H, W)")
    height, width = arr.shape
    if height < _MIN_HEIGHT or width < _MIN_WIDTH:
        raise ValueError(f"frame is {width}x{height}; indexed frames are at least {_MIN_WIDTH}x{_MIN_HEIGHT}")
    cell, top, left = _code_layout(height, width)
    lo, hi = cell // 4, cell - cell // 4  # cell centre only: edges bleed under chroma subsampling/DCT
    bits = []
    for k in range(_CODE_SIDE * _CODE_SIDE):
        r, c = divmod(k, _CODE_SIDE)
        y0, x0 = top + r * cell, left + c * cell
        bits.append(int(arr[y0 + lo : y0 + hi, x0 + lo : x0 + hi].mean() >= 128))
    word = int("".join(map(str, bits)), 2)
    index = word >> 4
    if _code_bits(index) != bits:
        raise ValueError("frame code failed its check bits: not an indexed frame, or rotated/resized/damaged")
    return index


def _codec_args(spec: IndexedVideoSpec) -> list[str]:
    """Encoder flags giving near-lossless quality and keyframes exactly every `spec.gop` frames."""
    gop = str(spec.gop)
    if spec.codec == "libx264":
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-g", gop, "-keyint_min", gop,
                "-sc_threshold", "0", "-bf", str(spec.bframes)]  # fmt: skip
    if spec.codec == "mpeg4":
        # The mpegvideo encoder's own GOP logic drifts when gop is not a multiple of bframes+1 (and
        # codes the last frame as I), so keyframes are forced per frame number and -g is put out of
        # reach; the huge sc_threshold stops scene-change I-frames.
        return ["-c:v", "mpeg4", "-qscale:v", "2", "-bf", str(spec.bframes), "-g", "1000000",
                "-force_key_frames", f"expr:eq(mod(n,{spec.gop}),0)", "-sc_threshold", "1000000000"]  # fmt: skip
    args = ["-c:v", "libvpx-vp9", "-crf", "20", "-b:v", "0", "-g", gop, "-keyint_min", gop, "-row-mt", "1"]
    if spec.bframes:  # hidden alt-ref frames are VP9's frame reordering
        return [*args, "-deadline", "good", "-cpu-used", "5", "-auto-alt-ref", "1", "-lag-in-frames", "16"]
    return [*args, "-deadline", "realtime", "-cpu-used", "8"]


def _vfr_setpts(pattern: tuple[int, ...]) -> str:
    """A setpts expression giving frame N the start time sum(pattern[:N]) (pattern repeated)."""
    offsets = np.concatenate([[0], np.cumsum(pattern)[:-1]]).tolist()
    n, period = len(pattern), sum(pattern)
    expr = "0"
    for k in range(n - 1, 0, -1):
        expr = f"if(eq(mod(N,{n}),{k}),{offsets[k]},{expr})"
    return f"{period}*floor(N/{n})+{expr}"


def make_indexed_video(path: str | os.PathLike[str], spec: IndexedVideoSpec | None = None) -> Path:
    """Write a video whose frame i shows the code of i (see `read_frame_index`); return its path.

    Raw RGB frames are piped into ffmpeg, so the pixels are known exactly before encoding. VFR
    timestamps come from a `setpts` expression over the frame number with `-fps_mode passthrough`
    and `-enc_time_base` set to the pattern's tick (ffmpeg 5.1 otherwise re-stamps frames at the input
    rate). Rotation is added by a stream-copy remux with `-metadata:s:v:0 rotate=R`: ffmpeg 5.1 turns
    that tag into a display matrix only when remuxing, and ffprobe then reports `rotation=R`
    (normalised to -180..180, e.g. 270 -> -90), meaning "display R degrees counter-clockwise".
    """
    spec = spec or IndexedVideoSpec()
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _CONTAINER_CODECS:
        raise ValueError(
            f"{path.name}: container {ext or '(none)'} unsupported; use {sorted(_CONTAINER_CODECS)}"
        )
    if spec.codec not in _CONTAINER_CODECS[ext]:
        raise ValueError(f"codec={spec.codec!r} cannot go in {ext}; use one of {_CONTAINER_CODECS[ext]}")
    if spec.vfr and ext == ".avi":
        raise ValueError("vfr=True needs a container with timestamps; AVI is constant-rate, use .mp4/.mkv")
    if spec.rotation and ext not in (".mp4", ".mov"):
        raise ValueError(f"rotation={spec.rotation} is stored as an MP4 display matrix; use .mp4 or .mov")
    ffmpeg = _tool("ffmpeg")

    rate = _rate(spec.fps)
    scale = "scale=out_range=" + ("pc" if spec.color_range == "pc" else "tv")
    if spec.colorspace:
        scale += f":out_color_matrix={_COLORSPACES[spec.colorspace]}"
    vf = f"{scale},format={spec.pix_fmt}"
    timing = ["-fps_mode", "passthrough"]
    if spec.vfr:
        tick = 1 / (rate * _VFR_SUBTICKS)
        vf = f"settb={tick.numerator}/{tick.denominator},setpts='{_vfr_setpts(VFR_PATTERN)}',{vf}"
        timing += ["-enc_time_base", f"{tick.numerator}:{tick.denominator}"]
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{spec.width}x{spec.height}",
           "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "-"]  # fmt: skip
    audio_out: list[str] = []
    if spec.audio:
        times = frame_times(spec)
        last = (VFR_PATTERN[(spec.num_frames - 1) % len(VFR_PATTERN)] / _VFR_SUBTICKS) if spec.vfr else 1.0
        duration = times[-1] + last / float(rate)
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration:.6f}"]
        audio_out = ["-map", "1:a", "-c:a", _AUDIO_CODEC[ext], "-b:a", "64k"]
    cmd += ["-map", "0:v", "-vf", vf, *timing, *_codec_args(spec), "-pix_fmt", spec.pix_fmt]
    if spec.color_range:
        cmd += ["-color_range", spec.color_range]
    if spec.colorspace:
        cmd += ["-colorspace", spec.colorspace]
    cmd += audio_out

    with _atomic_output(path) as tmp:
        _pipe_frames([*cmd, str(tmp)], spec)
        if spec.rotation:
            with _atomic_output(tmp) as rotated:
                _run([ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-i", str(tmp),
                      "-map", "0", "-c", "copy", "-metadata:s:v:0", f"rotate={spec.rotation}",
                      str(rotated)])  # fmt: skip
        if spec.vfr:
            _check_vfr(tmp)
    return path


def _pipe_frames(cmd: list[str], spec: IndexedVideoSpec) -> None:
    """Stream the indexed frames into ffmpeg's stdin one at a time (memory stays one frame)."""
    with tempfile.TemporaryFile() as err:
        with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err) as proc:
            assert proc.stdin is not None
            try:
                for i in range(spec.num_frames):
                    proc.stdin.write(render_index_frame(i, spec.height, spec.width).tobytes())
            except BrokenPipeError:
                pass  # ffmpeg died; its exit status and stderr below say why
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        code = proc.returncode
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed (exit {code}): {err.read().decode(errors='replace')[-2000:]}")


def _check_vfr(path: Path) -> None:
    """Fail loudly if a VFR file came out constant-rate (an ffmpeg version re-stamping frames)."""
    packets = ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pts")["packets"]
    pts = np.sort(np.array([int(p["pts"]) for p in packets if "pts" in p]))
    if len(pts) >= 3 and len(set(np.diff(pts).tolist())) < 2:
        raise RuntimeError(f"{path.name}: ffmpeg wrote constant frame durations for a vfr=True video")


# --------------------------------------------------------------------------- sample video


# (lavfi source with {w},{h},{r},{seed} placeholders, on-screen title, spoken description)
_SCENE_LIBRARY: tuple[tuple[str, str, str], ...] = (
    ("mandelbrot=s={w}x{h}:r={r}:maxiter=256", "Mandelbrot zoom", "A slow zoom into the Mandelbrot fractal."),
    ("life=s={qw}x{qh}:r={r}:seed={seed}:mold=10:life_color=#00ff00:mold_color=#402000,"
     "scale={w}:{h}:flags=neighbor", "Game of Life", "Green cells of Conway's game of life."),
    ("smptehdbars=s={w}x{h}:r={r}", "Colour bars", "Still colour bars, a broadcast test card."),
    ("cellauto=s={qw}x{qh}:r={r}:seed={seed}:rule=110,scale={w}:{h}:flags=neighbor",
     "Cellular automaton", "A scrolling cellular automaton, rule one hundred and ten."),
    ("gradients=s={w}x{h}:r={r}:seed={seed}:speed=0.03:n=4", "Gradients", "Slowly rotating colour gradients."),
    ("sierpinski=s={w}x{h}:r={r}:seed={seed}:type=triangle", "Sierpinski triangle",
     "A shifting Sierpinski triangle fractal."),
)  # fmt: skip


@dataclass(frozen=True)
class SampleScene:
    """One scene of the sample video: what is shown and said, and when (the video's ground truth)."""

    index: int  # 1-based, as spoken and shown
    title: str
    sentence: str
    start_s: float
    end_s: float
    source: str  # the lavfi source graph that draws it


@dataclass
class SampleVideoConfig:
    """Settings of `make_sample_video`; `scenes()` tells what appears when."""

    duration_s: float = 60.0
    width: int = 640
    height: int = 360
    fps: int = 25
    speech: bool = True  # espeak-ng narration; False (or no espeak-ng) gives beep patterns instead
    scene_max_s: float = 15.0  # long videos get more scenes (the library repeats with new seeds)
    gop_s: float = 2.0
    bframes: int = 2
    crf: int = 23
    audio_rate: int = 44100
    seed: int = 0
    font: Path = field(default=_FONT)

    def __post_init__(self) -> None:
        if not self.duration_s >= 1.0:
            raise ValueError(f"duration_s={self.duration_s}: must be >= 1 s")
        if self.width < _MIN_WIDTH or self.height < _MIN_HEIGHT or self.width % 2 or self.height % 2:
            raise ValueError(
                f"width x height={self.width}x{self.height}: H.264 yuv420p needs even sizes >= "
                f"{_MIN_WIDTH}x{_MIN_HEIGHT}; round them up to even numbers"
            )
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps={self.fps}: must be in 1..120")
        if not self.gop_s * self.fps >= 1:
            raise ValueError(f"gop_s={self.gop_s}: must be at least one frame long")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf={self.crf}: libx264 takes 0..51 (lower is better quality)")
        if self.audio_rate not in (16000, 22050, 44100, 48000):
            raise ValueError(f"audio_rate={self.audio_rate}: use 16000, 22050, 44100 or 48000")

    @property
    def num_frames(self) -> int:
        """Total frame count; the duration is rounded to whole frames."""
        return max(1, round(self.duration_s * self.fps))

    def scenes(self) -> list[SampleScene]:
        """The scene plan: 5 scenes (more for long videos, each <= scene_max_s), frame-aligned."""
        total = self.num_frames
        n = max(min(5, total // self.fps), math.ceil(total / (self.scene_max_s * self.fps)), 1)
        bounds = [round(k * total / n) for k in range(n + 1)]
        out = []
        for k in range(n):
            template, title, sentence = _SCENE_LIBRARY[k % len(_SCENE_LIBRARY)]
            source = template.format(
                w=self.width, h=self.height, qw=self.width // 4, qh=self.height // 4, r=self.fps,
                seed=self.seed + k,
            )  # fmt: skip
            out.append(SampleScene(k + 1, f"Scene {k + 1}: {title}", f"Scene {k + 1}. {sentence}",
                                   bounds[k] / self.fps, bounds[k + 1] / self.fps, source))  # fmt: skip
        return out


def _quote(value: str) -> str:
    """Quote a filter option value (paths, drawtext text) so ':' and ',' inside it stay literal."""
    if "'" in value:
        raise ValueError(f"cannot quote {value!r} for an ffmpeg filter graph (contains a single quote)")
    return f"'{value}'"


def _sample_filter_graph(cfg: SampleVideoConfig, scenes: list[SampleScene], workdir: Path) -> str:
    """Scenes (source, trim, title) concatenated, then the burned-in clock; output label [v]."""
    font = _quote(str(cfg.font))
    big, small = max(10, cfg.height // 14), max(8, cfg.height // 20)
    box = "fontcolor=white:box=1:boxcolor=black@0.75:boxborderw=6"
    chains = []
    for s in scenes:
        title_file = workdir / f"title{s.index}.txt"
        title_file.write_text(s.title, encoding="utf-8")  # a file avoids escaping the title text
        frames = round(s.end_s * cfg.fps) - round(s.start_s * cfg.fps)
        chains.append(
            f"{s.source},trim=end_frame={frames},setpts=PTS-STARTPTS,format=yuv420p,setsar=1,"
            f"drawtext=fontfile={font}:textfile={_quote(str(title_file))}:x=10:y=h-th-12:fontsize={small}:{box}"
            f"[s{s.index}]"
        )
    labels = "".join(f"[s{s.index}]" for s in scenes)
    clock = f"drawtext=fontfile={font}:text='%{{pts\\:hms}}':x=w-tw-10:y=10:fontsize={big}:{box}"
    return ";".join([*chains, f"{labels}concat=n={len(scenes)}:v=1:a=0,{clock}[v]"])


def _speech(sentence: str, workdir: Path, rate: int) -> np.ndarray:
    """espeak-ng's rendering of `sentence` as float32 mono samples at `rate` Hz."""
    wav_path = workdir / "speech.wav"
    _run([_tool("espeak-ng"), "-w", str(wav_path), sentence])
    with wave.open(str(wav_path), "rb") as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        raw = raw.reshape(-1, w.getnchannels()).mean(axis=1)
        src_rate = w.getframerate()
    if src_rate == rate:
        return raw
    n = int(round(len(raw) * rate / src_rate))  # linear resampling is plenty for speech
    return np.interp(np.arange(n) * (src_rate / rate), np.arange(len(raw)), raw).astype(np.float32)


def _beeps(scene_index: int, rate: int) -> np.ndarray:
    """`scene_index` short 880 Hz beeps (max 6): a speech-free audio cue that still marks each scene."""
    t = np.arange(int(0.15 * rate)) / rate
    beep = 0.4 * np.sin(2 * np.pi * 880 * t) * np.hanning(len(t))
    gap = np.zeros(int(0.1 * rate))
    return np.concatenate([np.concatenate([beep, gap]) for _ in range(min(scene_index, 6))]).astype(
        np.float32
    )


def _sample_audio(cfg: SampleVideoConfig, scenes: list[SampleScene], workdir: Path) -> Path:
    """A mono 16-bit wav of the full duration: each scene's cue starts at its scene start."""
    rate = cfg.audio_rate
    total = int(round(cfg.num_frames / cfg.fps * rate))
    track = np.zeros(total, dtype=np.float32)
    speech = cfg.speech and shutil.which("espeak-ng") is not None
    if cfg.speech and not speech:
        warnings.warn("espeak-ng not found: the sample video gets beep patterns instead of speech "
                      "(install it with `apt-get install -y espeak-ng`)", stacklevel=3)  # fmt: skip
    for s in scenes:
        cue = _speech(s.sentence, workdir, rate) if speech else _beeps(s.index, rate)
        start, end = int(round(s.start_s * rate)), int(round(s.end_s * rate))
        cue = cue[: end - start]  # a short scene cuts its sentence rather than overlapping the next
        track[start : start + len(cue)] += cue
    pcm = (np.clip(track, -1, 1) * 32767).astype("<i2")
    out = workdir / "audio.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out


def make_sample_video(
    path: str | os.PathLike[str],
    *,
    duration_s: float = 60.0,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    speech: bool = True,
    progress: bool = True,
    config: SampleVideoConfig | None = None,
) -> Path:
    """Write a narrated demo video (H.264 + AAC in MP4) and return its path.

    Scenes come from ffmpeg's lavfi sources (`SampleVideoConfig.scenes()` lists them with their
    times); each shows its title, a clock in the top-right shows the video time as HH:MM:SS.mmm,
    and the audio speaks "Scene k. <description>" at each scene start. Keyframes are exactly every
    `gop_s` seconds (scene-cut keyframes off) with B-frames on. `config`, when given, replaces the
    keyword settings. Progress comes from ffmpeg's `-progress pipe:1` and is shown with tqdm.
    """
    cfg = config or SampleVideoConfig(
        duration_s=duration_s, width=width, height=height, fps=fps, speech=speech
    )
    if not cfg.font.is_file():
        raise RuntimeError(
            f"font {cfg.font} not found; install it with `apt-get install -y fonts-dejavu-core`"
        )
    ffmpeg = _tool("ffmpeg")
    path = Path(path)
    scenes = cfg.scenes()
    gop = str(max(1, round(cfg.gop_s * cfg.fps)))
    with tempfile.TemporaryDirectory(prefix="sage_sample_") as tmp_dir, _atomic_output(path) as tmp:
        workdir = Path(tmp_dir)
        graph = _sample_filter_graph(cfg, scenes, workdir)
        audio = _sample_audio(cfg, scenes, workdir)
        cmd = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-nostats", "-progress", "pipe:1",
               "-filter_complex", graph, "-i", str(audio), "-map", "[v]", "-map", "0:a",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", str(cfg.crf), "-pix_fmt", "yuv420p",
               "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-bf", str(cfg.bframes),
               "-c:a", "aac", "-b:a", "96k", "-ar", str(cfg.audio_rate), "-ac", "1",
               "-movflags", "+faststart", "-f", "mp4", str(tmp)]  # fmt: skip
        _run_with_progress(cmd, cfg.num_frames / cfg.fps, progress, desc=path.name)
    return path


def _run_with_progress(cmd: list[str], duration_s: float, progress: bool, desc: str) -> None:
    """Run ffmpeg with `-progress pipe:1`, advancing a tqdm bar (in seconds) from its out_time lines."""
    from tqdm.auto import tqdm

    with tempfile.TemporaryFile() as err:
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]"
        with (
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as proc,
            tqdm(total=duration_s, desc=desc, bar_format=fmt, disable=not progress) as bar,
        ):
            assert proc.stdout is not None
            for line in proc.stdout:
                key, _, value = line.strip().partition("=")
                # out_time_ms is microseconds too (a long-standing ffmpeg quirk); prefer out_time_us.
                if key in ("out_time_us", "out_time_ms") and value.lstrip("-").isdigit():
                    bar.update(max(0.0, min(int(value) / 1e6, duration_s) - bar.n))
                elif key == "progress" and value == "end":
                    bar.update(max(0.0, duration_s - bar.n))
        code = proc.wait()
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed (exit {code}): {err.read().decode(errors='replace')[-2000:]}")


# --------------------------------------------------------------------------- broken inputs


def make_broken_inputs(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the bad inputs that decoders and loaders must reject or handle; return name -> path.

    * empty: a 0-byte .mp4.
    * not_a_video: a text file named .mp4.
    * truncated: a 3 s H.264 mp4 with the moov atom in front (+faststart), cut at 60% of its bytes,
      so the index promises frames the file no longer has.
    * audio_only: an AAC-only .m4a.
    * zero_length: an mp4 whose video track exists (codec, size) but has no frames. A plain mp4 with
      `-frames:v 0` gets no track at all in ffmpeg 5.1 (empty tracks are dropped), so it is written
      fragmented (`-movflags frag_keyframe+empty_moov`): the moov, with the track, comes first and
      no fragment follows.
    * odd_size: 161x121 H.264 yuv444p (4:2:0 cannot have odd sizes), indexed frames.
    * rotated: indexed 160x120 H.264 with a 90 degree display matrix.
    * vfr: indexed H.264 with frame durations from VFR_PATTERN.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ffmpeg = _tool("ffmpeg")
    base = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    out = {
        "empty": folder / "empty.mp4",
        "not_a_video": folder / "not_a_video.mp4",
        "truncated": folder / "truncated.mp4",
        "audio_only": folder / "audio_only.m4a",
        "zero_length": folder / "zero_length.mp4",
        "odd_size": folder / "odd_size.mp4",
        "rotated": folder / "rotated.mp4",
        "vfr": folder / "vfr.mp4",
    }
    out["empty"].write_bytes(b"")
    out["not_a_video"].write_text("This is a text file, not a video.\n" * 20, encoding="utf-8")

    with tempfile.TemporaryDirectory(dir=folder) as tmp_dir:
        full = Path(tmp_dir) / "full.mp4"
        _run([*base, "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=3", "-c:v", "libx264", "-preset",
              "veryfast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(full)])  # fmt: skip
        data = full.read_bytes()
    out["truncated"].write_bytes(data[: int(len(data) * 0.6)])

    with _atomic_output(out["audio_only"]) as tmp:
        _run([*base, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=2",
              "-c:a", "aac", "-b:a", "64k", str(tmp)])  # fmt: skip
    with _atomic_output(out["zero_length"]) as tmp:
        _run([*base, "-f", "lavfi", "-i", "testsrc2=s=160x120:r=25:d=1", "-c:v", "libx264",
              "-pix_fmt", "yuv420p", "-frames:v", "0", "-movflags", "frag_keyframe+empty_moov", str(tmp)])  # fmt: skip

    make_indexed_video(
        out["odd_size"], IndexedVideoSpec(num_frames=24, width=161, height=121, pix_fmt="yuv444p")
    )
    make_indexed_video(out["rotated"], IndexedVideoSpec(num_frames=24, rotation=90))
    make_indexed_video(out["vfr"], IndexedVideoSpec(num_frames=30, vfr=True))
    return out
