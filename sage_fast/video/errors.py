"""Errors raised by sage_fast.video: each names the file and says what to do about it."""

from __future__ import annotations


class VideoError(ValueError):
    """Base class: the video (or a request on it) is unusable; the message says why."""


class VideoOpenError(VideoError):
    """The file is missing, empty, not a video, or has no decodable video frames."""


class VideoDecodeError(VideoError):
    """Frames could not be decoded (damaged or truncated data)."""


class NoAudioError(VideoError):
    """Audio was asked for but the file has no audio track."""


class BackendUnavailableError(RuntimeError):
    """A decode backend was asked for by name but is not installed or cannot run here."""
