"""The tools that read the episode's video directly: extract-video-parts (``extract_parts_from_timestamp``).

Names and arguments are the reference code's (DESIGN.md §2), so released SAGE-MM checkpoints'
calls run unchanged. Outputs are files in the episode's work folder whose names carry their
timestamps, and a text result that lists them with their times for the next turn.
"""

from __future__ import annotations

from typing import Literal

from sage_fast.tools.cache import not_cacheable
from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.video.timecode import format_timestamp

EXTRACT_MAX_WINDOW_S = 300.0  # extract-video-parts: windows under 5 minutes
FRAMES_PER_EXTRACT = 10


@not_cacheable  # its result names files in the episode's own work folder
def extract_parts_from_timestamp(context: ToolContext, video_path: str, timestamp_start: str,
                                 timestamp_end: str, extract_type: Literal["frames", "subclips"] = "frames") -> str:
    """Extracts 10 evenly spaced frames, or one subclip, from a window of the video for closer analysis.

    Args:
        video_path: Path of the video, exactly as given in the prompt.
        timestamp_start: Start of the window, HH:MM:SS.
        timestamp_end: End of the window, HH:MM:SS; the window must be at most 5 minutes long.
        extract_type: "frames" for 10 JPEG frames named with their timestamps, "subclips" for one MP4 clip.
    """
    context.check_video_path(video_path)
    start, end = context.window(timestamp_start, timestamp_end, max_seconds=EXTRACT_MAX_WINDOW_S,
                                tool="extract_parts_from_timestamp")
    if end <= start:
        raise ToolInputError(f"the window {format_timestamp(start)} to {format_timestamp(end)} is empty; "
                             "give timestamp_end later than timestamp_start")
    # One folder per window: the same request writes the same files (and a cache can reuse them).
    tag = f"{start:09.3f}-{end:09.3f}".replace(".", "_")
    reader = context.reader
    span = f"{format_timestamp(start, millis=True)} to {format_timestamp(end, millis=True)}"
    if extract_type == "subclips":
        clip = reader.extract_subclip(start, end, context.work_dir / "extract" / f"clip_{tag}.mp4")
        return f"Extracted one subclip of {span}:\n{clip}"
    paths = reader.extract_frames(start, end, FRAMES_PER_EXTRACT, context.work_dir / "extract" / f"frames_{tag}")
    lines = [f"{format_timestamp(_stamp(p.name), millis=True)}: {p}" for p in paths]
    return f"Extracted {len(paths)} frames of {span} (time: path):\n" + "\n".join(lines)


def _stamp(name: str) -> float:
    """The frame's time from its file name ``frame_03_HH-MM-SS.mmm.jpg`` (extract_frames names
    each file with its frame's pts, so nothing is decoded twice)."""
    hours, minutes, seconds = name.rsplit("_", 1)[1].removesuffix(".jpg").split("-")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
