"""Trajectories: every turn of an episode, as dataclasses that round-trip through JSONL.

One record serves every later user (DESIGN.md §6): RL rewards read the raw output, the
``repaired`` / ``keys_exact`` flags, each tool call's validity and repeats, and where the answer
came from; evaluation reads the answer, timings, tokens and cost; SFT turns each turn's prompt and
response into a sample; the viewer draws it. Frames are stored by reference (their timestamps),
never as pixels, so a trajectory stays a few kilobytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sage_fast.jsonl import append_lines, read_lines, write_lines

Stage = Literal["stage1", "stage2"]
COULD_NOT_PRODUCE = "Could not produce an answer within the step limit."


@dataclass
class ToolCallRecord:
    """One executed (or rejected) tool call and what came back."""

    name: str
    arguments: dict[str, Any]  # as the model wrote them
    rationale: str = ""
    validated_arguments: dict[str, Any] = field(default_factory=dict)
    dropped_arguments: list[str] = field(default_factory=list)
    valid: bool = True  # arguments passed the schema and the tool's own checks
    result: str = ""
    error: bool = False  # result is an error message (invalid call, tool exception, time-out)
    seconds: float = 0.0
    cached: bool = False  # served from the shared tool-result cache
    attempts: int = 1  # tries, retries after transient network failures included
    repeat: int = 0  # how many earlier calls in the episode had the same name and arguments


@dataclass
class Turn:
    """One model call: its prompt, its raw output, what was parsed and what was done."""

    stage: Stage
    step: int  # 0 for Stage-1, then 1, 2, ... for Stage-2 calls
    messages: list[dict[str, Any]]  # prompt messages; images appear as {"type": "frame", "pts": s}
    raw_output: str
    parsed: dict[str, Any] | None = None
    repaired: bool = False
    keys_exact: bool = False
    parse_error: str | None = None
    tool_call: ToolCallRecord | None = None
    generate_seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    frames: int = 0  # frames attached to this turn's prompt
    visual_tokens: int = 0


@dataclass
class Cost:
    """What one answer cost: decoding, model calls, tokens and tool time."""

    frames_decoded: int = 0
    decode_seconds: float = 0.0  # Stage-1 frame sampling (tools' own decoding is in tool_seconds)
    visual_tokens: int = 0
    model_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    tool_seconds: float = 0.0
    tool_cache_hits: int = 0
    seconds: float = 0.0


@dataclass
class Trajectory:
    """A whole episode for one (video, question)."""

    video_path: str
    question: str
    duration_seconds: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    answer_stage: Stage | None = None  # where the answer came from (direct Stage-1 or Stage-2)
    could_not_produce: bool = False  # the Stage-2 cap was reached without an answer
    turn_cap: int = 10
    error: str | None = None  # the episode itself failed (not a tool: those are in the turns)
    cost: Cost = field(default_factory=Cost)
    metadata: dict[str, Any] = field(default_factory=dict)  # question id, ground truth, model names...

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        return [t.tool_call for t in self.turns if t.tool_call is not None]

    @property
    def multi_turn(self) -> bool:
        return any(t.stage == "stage2" for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["turns"] = [_turn_from_dict(t) for t in data.get("turns", [])]
        values["cost"] = _only_known(Cost, data.get("cost", {}))
        return cls(**values)


def _only_known(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def _turn_from_dict(data: dict[str, Any]) -> Turn:
    turn = _only_known(Turn, data)
    if isinstance(data.get("tool_call"), dict):
        turn.tool_call = _only_known(ToolCallRecord, data["tool_call"])
    return turn


def append_jsonl(path: str | Path, trajectories: Iterable[Trajectory]) -> None:
    """Appends one line per trajectory, flushed and fsynced: a crash loses at most the line
    being written, which :func:`read_jsonl` skips, so long runs resume where they stopped."""
    append_lines(path, (t.to_dict() for t in trajectories))


def write_jsonl(path: str | Path, trajectories: Iterable[Trajectory]) -> None:
    """Replaces ``path`` atomically (temporary file, then rename)."""
    write_lines(path, (t.to_dict() for t in trajectories))


def read_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Reads trajectories back; a torn last line (a crash mid-write) is skipped, any other bad
    line is an error that names the file and line."""
    for _, data in read_lines(path, what="JSON trajectory"):
        yield Trajectory.from_dict(data)
