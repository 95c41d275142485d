"""JSONL files that survive crashes: fsynced appends, atomic rewrites, torn last lines skipped or cut.

Every long job here (evaluations, data synthesis, rollouts) writes one JSON line per finished unit
and resumes from what is on disk. A crash can leave only the last line incomplete; these helpers
are the one place that knows how to write so that this is true and how to read past it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def append_lines(path: str | Path, objects: Iterable[Any]) -> None:
    """Appends one JSON line per object, flushed and fsynced: a crash loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)
        handle.flush()
        os.fsync(handle.fileno())


def write_lines(path: str | Path, objects: Iterable[Any]) -> None:
    """Replaces ``path`` atomically with one JSON line per object (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def read_lines(path: str | Path, *, what: str = "JSON line") -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` for each non-blank line. A torn last line (a crash mid-write) is
    skipped; any other bad line is an error naming the file, the line and ``what`` it should be."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                return  # the line a crash cut short
            raise ValueError(f"{path}:{number}: not a {what} ({exc})") from exc
        yield number, data


def ends_with_newline(path: str | Path) -> bool:
    """Whether a non-empty file's last byte is a newline (read from the end, not the whole file)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _last_line_start(handle: Any, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline before the end (0 if none), read backwards in blocks."""
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        found = handle.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def seal(path: str | Path) -> None:
    """Makes ``path`` end with a whole line before appending to it: a torn last line is cut off (its
    unit runs again), a complete one that only lacks its newline gets it. Only the file's tail is
    read, so resuming a run with gigabytes of trajectories costs nothing."""
    path = Path(path)
    if not path.is_file() or ends_with_newline(path):
        return
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = _last_line_start(handle, size)
        handle.seek(start)
        try:
            json.loads(handle.read(size - start))
        except ValueError:
            handle.truncate(start)
            return
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n")
