"""On-disk cache of tool results keyed by (video content, tool, tool backend, normalized arguments).

Why: RL samples a group of n episodes per question, and they ask the same tools the same things
(ground "the goal" in the same window, transcribe the same minute) many times; evaluation reruns
ask them again. A hit returns the stored result in microseconds instead of a model or network call.

Keys are content-based, never path-based, so two episodes with different work folders share hits:
``video_path`` is replaced by the video's fingerprint and ``media_paths`` by the files' content
hashes. The fingerprint is a sampled hash (size plus 1 MiB at each end and 32 spread 64 KiB
chunks), computed once per (path, size, mtime): any re-encode or edit changes it, and it costs a
few milliseconds on an hour of video instead of reading a gigabyte. Entries are one JSON file
each, written to a temporary name and renamed, so concurrent processes (RL workers) never read a
torn entry; errors are never cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EDGE_BYTES = 1 << 20
SPREAD_CHUNKS = 32
CHUNK_BYTES = 64 << 10
FORMAT_VERSION = 1


def not_cacheable(fn: Callable[..., str]) -> Callable[..., str]:
    """Marks a tool function whose results must not be shared across episodes (e.g. results that
    name files in the episode's own work folder)."""
    fn.sage_not_cacheable = True  # type: ignore[attr-defined]
    return fn


@functools.lru_cache(maxsize=4096)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}:{size}".encode())
    with open(path, "rb") as handle:
        if size <= 2 * EDGE_BYTES + SPREAD_CHUNKS * CHUNK_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(handle.read(EDGE_BYTES))
        step = (size - 2 * EDGE_BYTES) // (SPREAD_CHUNKS + 1)
        for i in range(1, SPREAD_CHUNKS + 1):
            handle.seek(EDGE_BYTES + i * step)
            digest.update(handle.read(CHUNK_BYTES))
        handle.seek(size - EDGE_BYTES)
        digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def content_fingerprint(path: str | Path) -> str:
    """Sampled SHA-256 of a file's content (whole-file hash below ~4 MiB); cached per (path, size, mtime)."""
    stat = os.stat(path)
    return _fingerprint(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class CacheHit:
    """A stored result and when it was stored."""

    result: str
    created: float
    tool_seconds: float


class ToolResultCache:
    """``ToolResultCache("~/.cache/sage_fast/tools")``; share one folder across episodes and processes."""

    def __init__(self, directory: str | Path, *, max_age_s: float | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s  # web results go stale; None keeps entries forever
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(tool: str, backend: str, video_fingerprint: str, arguments: dict[str, Any]) -> str:
        """The entry's name: SHA-256 over the canonical JSON of everything the result depends on."""
        canonical = json.dumps({"v": FORMAT_VERSION, "tool": tool, "backend": backend, "video": video_fingerprint,
                                "arguments": arguments}, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> CacheHit | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, or unreadable for any reason: a miss, never a crash
            self.misses += 1
            return None
        if self.max_age_s is not None and time.time() - entry.get("created", 0) > self.max_age_s:
            self.misses += 1
            return None
        self.hits += 1
        return CacheHit(result=str(entry["result"]), created=float(entry["created"]),
                        tool_seconds=float(entry.get("tool_seconds", 0.0)))

    def put(self, key: str, result: str, *, tool_seconds: float = 0.0, describe: dict[str, Any] | None = None) -> None:
        """Stores ``result`` atomically (temporary file + rename in the same folder)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"result": result, "created": time.time(), "tool_seconds": tool_seconds, "about": describe or {}}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entry, handle, ensure_ascii=False, default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
