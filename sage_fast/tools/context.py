"""The episode a tool call runs in, and the checks that keep model-chosen arguments inside it.

Tool arguments are written by the model, so they are untrusted input: a ``video_path`` must name
the episode's own video (anything else could read arbitrary files), media paths must lie inside
the episode's work folder (where extract wrote them), and timestamps are parsed strictly and
clamped to the video. Each check raises :class:`ToolInputError` with a message the model can act
on; the loop turns it into the tool's result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sage_fast.video import VideoReader, open_video
from sage_fast.video.timecode import clamp_window, parse_timestamp


class ToolInputError(ValueError):
    """A tool argument is unusable; the message says what to send instead."""


@dataclass
class ToolContext:
    """One episode: its video, its private work folder and the reader shared by its tools."""

    video_path: Path
    work_dir: Path
    backend: str = "auto"
    _reader: VideoReader | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.video_path = Path(self.video_path)
        self.work_dir = Path(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def reader(self) -> VideoReader:
        """The episode's video, opened once through the shared LRU (indexes are reused)."""
        if self._reader is None:
            self._reader = open_video(self.video_path, backend=self.backend)
        return self._reader

    @property
    def duration(self) -> float:
        return self.reader.metadata.end_seconds

    def check_video_path(self, value: str) -> Path:
        """The argument must name this episode's video (the prompt states its path)."""
        if not isinstance(value, str) or not value.strip():
            raise ToolInputError(f"video_path must be the episode's video path: {self.video_path}")
        given = Path(value.strip()).expanduser()
        if given == self.video_path or _same_file(given, self.video_path):
            return self.video_path
        raise ToolInputError(f"video_path {value!r} is not this episode's video; use {self.video_path}")

    def check_media_path(self, value: str) -> Path:
        """A media path must be a file inside the work folder (where extraction writes)."""
        root = self.work_dir.resolve()
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = root / candidate
        resolved = candidate.resolve()  # follows symlinks: a link out of the folder is refused
        if resolved != root and root not in resolved.parents:
            raise ToolInputError(f"media path {value!r} is outside this episode's work folder {root}; "
                                 "pass paths returned by extract_parts_from_timestamp")
        if not resolved.is_file():
            raise ToolInputError(f"media path {value!r} does not exist; pass paths returned by "
                                 "extract_parts_from_timestamp")
        return resolved

    def window(self, start: str, end: str, *, max_seconds: float | None, tool: str) -> tuple[float, float]:
        """Parses and clamps a [start, end] window of this video; enforces the tool's limit."""
        try:
            start_s = parse_timestamp(start, name="timestamp_start")
            end_s = parse_timestamp(end, name="timestamp_end")
            return clamp_window(start_s, end_s, self.duration, max_window=max_seconds)
        except ValueError as exc:
            raise ToolInputError(f"{tool}: {exc}") from exc


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
