"""``sage-fast sample-video``, ``video-info`` and ``frames``: make, inspect and sample videos."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser("sample-video", help="make a realistic test video (scenes, burned-in clock, speech)")
    sample.add_argument("output", nargs="?", default="sample.mp4", help="where to write it (default: sample.mp4)")
    sample.add_argument("--duration", type=float, default=60.0, help="seconds (default: 60)")
    sample.add_argument("--size", default="640x360", help="WIDTHxHEIGHT (default: 640x360)")
    sample.add_argument("--fps", type=int, default=25)
    sample.add_argument("--no-speech", action="store_true", help="a tone pattern instead of espeak-ng speech")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.set_defaults(handler=run_sample_video)

    info = subparsers.add_parser("video-info", help="metadata and keyframe index of a video")
    info.add_argument("video")
    info.add_argument("--backend", default="auto", help="auto, native, torchcodec, pyav or dali")
    info.add_argument("--json", action="store_true", help="print JSON (with every keyframe time)")
    info.set_defaults(handler=run_video_info)

    frames = subparsers.add_parser("frames", help="sample N frames to a folder and/or a contact sheet PNG")
    frames.add_argument("video")
    frames.add_argument("-n", "--num-frames", type=int, default=16)
    frames.add_argument("--max-fps", type=float, default=2.0, help="cap on frames per second of video (default: 2)")
    frames.add_argument("--start", default=None, help="window start, seconds or HH:MM:SS (default: whole video)")
    frames.add_argument("--end", default=None, help="window end, seconds or HH:MM:SS")
    frames.add_argument("--mode", choices=("exact", "skim"), default="exact",
                        help="exact frames, or the nearest keyframes (much faster)")
    frames.add_argument("--out-dir", default=None, help="write one JPEG per frame here (names carry timestamps)")
    frames.add_argument("--contact-sheet", default=None, help="write a PNG grid of the frames with their timestamps")
    frames.add_argument("--width", type=int, default=320, help="thumbnail width on the contact sheet")
    frames.add_argument("--backend", default="auto")
    frames.add_argument("--quiet", action="store_true", help="no progress bar")
    frames.set_defaults(handler=run_frames)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"--size {text!r} must look like WIDTHxHEIGHT, e.g. 640x360") from exc
    return width, height


def run_sample_video(args: argparse.Namespace) -> int:
    from sage_fast.video.synth import make_sample_video

    width, height = _parse_size(args.size)
    path = make_sample_video(args.output, duration_s=args.duration, width=width, height=height, fps=args.fps,
                             speech=not args.no_speech, progress=not args.quiet)
    print(path)
    return 0


def run_video_info(args: argparse.Namespace) -> int:
    from sage_fast.video import VideoReader
    from sage_fast.video.timecode import format_timestamp

    reader = VideoReader(args.video, backend=args.backend)
    meta = reader.metadata
    if args.json:
        fields = {k: (str(v) if isinstance(v, Path) else v) for k, v in meta.__dict__.items()}
        fields["keyframe_seconds"] = list(meta.keyframe_seconds)
        fields["backend"] = reader.backend_name
        print(json.dumps(fields, indent=2))
        return 0
    keys = np.asarray(meta.keyframe_seconds)
    gaps = np.diff(keys) if len(keys) > 1 else np.array([meta.duration_seconds])
    print(f"{meta.path}")
    print(f"  duration   {format_timestamp(meta.duration_seconds, millis=True)} ({meta.duration_seconds:.3f} s, "
          f"{meta.begin_seconds:.3f} to {meta.end_seconds:.3f})")
    print(f"  video      {meta.codec} {meta.pixel_format} {meta.width}x{meta.height} "
          f"rotation {meta.rotation}, {meta.num_frames} frames, {meta.average_fps:.3f} fps average")
    print(f"  container  {meta.container}, {meta.bit_rate / 1000:.0f} kb/s, audio: {'yes' if meta.has_audio else 'no'}")
    print(f"  keyframes  {len(keys)}, every {gaps.mean():.2f} s on average (max {gaps.max():.2f} s)")
    print(f"  backend    {reader.backend_name}")
    return 0


def _window_times(reader, args: argparse.Namespace) -> np.ndarray | None:  # noqa: ANN001
    from sage_fast.video.index import uniform_times
    from sage_fast.video.timecode import parse_timestamp

    if args.start is None and args.end is None:
        return None
    meta = reader.metadata
    start = parse_timestamp(args.start, name="--start") if args.start is not None else meta.begin_seconds
    end = parse_timestamp(args.end, name="--end") if args.end is not None else meta.end_seconds
    start, end = max(start, meta.begin_seconds), min(end, meta.end_seconds)
    if end <= start:
        raise ValueError(f"{meta.path}: --start {args.start} / --end {args.end} leave an empty window inside "
                         f"[{meta.begin_seconds:.3f}, {meta.end_seconds:.3f}] s")
    span = uniform_times(reader.index, args.num_frames, args.max_fps)  # for the count only
    count = len(span) if args.max_fps is None else min(len(span), max(1, int((end - start) * args.max_fps)))
    return start + (np.arange(count) + 0.5) * ((end - start) / count)


def _contact_sheet(images: np.ndarray, stamps: list[str], width: int, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    count, height_px, width_px = images.shape[0], images.shape[1], images.shape[2]
    thumb_w = max(16, width)
    thumb_h = max(1, round(height_px * thumb_w / width_px))
    columns = math.ceil(math.sqrt(count * 16 / 9 * thumb_h / thumb_w)) or 1
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    label_h = 18
    sheet = Image.new("RGB", (columns * thumb_w, rows * (thumb_h + label_h)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 13)
    except OSError:
        font = ImageFont.load_default()
    for i, (image, stamp) in enumerate(zip(images, stamps, strict=True)):
        x, y = (i % columns) * thumb_w, (i // columns) * (thumb_h + label_h)
        sheet.paste(Image.fromarray(image).resize((thumb_w, thumb_h), Image.BICUBIC), (x, y))
        draw.text((x + 4, y + thumb_h + 2), stamp, fill=(235, 235, 235), font=font)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.png")
    sheet.save(partial, format="PNG")
    os.replace(partial, path)


def run_frames(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from sage_fast.video import VideoReader
    from sage_fast.video.clips import timestamp_for_filename
    from sage_fast.video.index import frames_at_times, nearest_keyframes, uniform_times
    from sage_fast.video.timecode import format_timestamp

    if args.out_dir is None and args.contact_sheet is None:
        raise ValueError(f"{args.video}: nothing to write: give --out-dir DIR and/or --contact-sheet FILE.png")
    if args.num_frames < 1:
        raise ValueError(f"{args.video}: --num-frames must be at least 1, got {args.num_frames}")
    reader = VideoReader(args.video, backend=args.backend)
    times = _window_times(reader, args)
    if times is None:
        times = uniform_times(reader.index, args.num_frames, args.max_fps)
    indices = frames_at_times(reader.index, times)
    if args.mode == "skim":
        indices = nearest_keyframes(reader.index, indices)
    # Decode in chunks so a long request shows progress; each chunk is still planned GOP by GOP.
    chunk = 16
    batches = []
    with tqdm(total=len(indices), unit="frame", desc="decoding", disable=args.quiet or None, file=sys.stderr) as bar:
        for begin in range(0, len(indices), chunk):
            batches.append(reader.get_frames(indices[begin:begin + chunk]))
            bar.update(len(batches[-1]))
    data = torch.cat([b.data for b in batches]).permute(0, 2, 3, 1).numpy()
    pts = torch.cat([b.pts_seconds for b in batches]).tolist()
    if args.out_dir is not None:
        from PIL import Image

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, (image, t) in enumerate(zip(data, pts, strict=True)):
            path = out_dir / f"frame_{i:03d}_{timestamp_for_filename(t)}.jpg"
            partial = path.with_name(f".{path.stem}.partial.jpg")
            Image.fromarray(image).save(partial, format="JPEG", quality=90)
            os.replace(partial, path)
        print(f"wrote {len(data)} frames to {out_dir}")
    if args.contact_sheet is not None:
        _contact_sheet(data, [format_timestamp(t, millis=True) for t in pts], args.width, Path(args.contact_sheet))
        print(f"wrote contact sheet {args.contact_sheet}")
    return 0
