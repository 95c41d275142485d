"""SFT records: one JSONL line per model turn (prompt messages + response), the shape of SAGE-MM-SFT.

The paper trains SAGE-MM on ~417K per-turn samples cut from correct trajectories of a strong
orchestrator (DESIGN.md §2): each Stage-1 or Stage-2 call is its own (prompt, response) pair.
A record keeps its frames by reference (``{"type": "frame", "pts": seconds}`` parts in the
messages, plus the video path), never as pixels, so 417K records stay a few GB of text and the
trainer re-decodes exactly the frames the turn saw (:func:`sage_fast.agent.samples.sample_frames`).

Writers (``sage-fast synth``) and readers (``sage-fast sft``) share this one module. Files are
written atomically (``write_records``) or appended with fsync (``append_records``); a torn last
line from a crash is skipped on read, so long jobs resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sage_fast.agent.samples import TurnSample, frame_pts, turn_samples
from sage_fast.agent.trajectory import Trajectory
from sage_fast.jsonl import append_lines, read_lines, write_lines


@dataclass
class SFTRecord:
    """One training turn: what the model read (``messages``) and what it should write (``response``)."""

    id: str  # unique per record: "<episode id>/<stage>-<step>"
    video_path: str
    stage: str  # "stage1" | "stage2"
    step: int
    messages: list[dict[str, Any]]
    response: str
    metadata: dict[str, Any] = field(default_factory=dict)  # question id, source model, judge verdict...

    def to_sample(self) -> TurnSample:
        """The :class:`TurnSample` view ``tokenize_sample`` takes."""
        return TurnSample(stage=self.stage, step=self.step, messages=self.messages, response=self.response,
                          frame_pts=frame_pts(self.messages))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "record") -> SFTRecord:
        """Checks the fields a trainer relies on, naming the record and the field when one is wrong."""
        missing = [k for k in ("id", "video_path", "stage", "step", "messages", "response") if k not in data]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} (an SFT record needs id, video_path, stage, "
                             "step, messages, response)")
        if data["stage"] not in ("stage1", "stage2"):
            raise ValueError(f"{where}: stage must be 'stage1' or 'stage2', got {data['stage']!r}")
        messages = data["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                     for m in messages):
            raise ValueError(f"{where}: messages must be a list of {{'role', 'content'}} mappings")
        if not isinstance(data["response"], str) or not data["response"]:
            raise ValueError(f"{where}: response must be a non-empty string")
        return cls(id=str(data["id"]), video_path=str(data["video_path"]), stage=data["stage"], step=int(data["step"]),
                   messages=messages, response=data["response"], metadata=dict(data.get("metadata") or {}))


def records_from_trajectory(trajectory: Trajectory, episode_id: str | None = None,
                            metadata: dict[str, Any] | None = None) -> list[SFTRecord]:
    """Every turn of ``trajectory`` as a record (a turn with an empty output is skipped: nothing to learn)."""
    base = episode_id or str(trajectory.metadata.get("id") or trajectory.metadata.get("question_id") or "episode")
    extra = dict(metadata or {})
    records = []
    for sample in turn_samples(trajectory):
        if not sample.response.strip():
            continue
        records.append(SFTRecord(id=f"{base}/{sample.stage}-{sample.step}", video_path=trajectory.video_path,
                                 stage=sample.stage, step=sample.step, messages=sample.messages,
                                 response=sample.response, metadata=extra))
    return records


def append_records(path: str | Path, records: Iterable[SFTRecord]) -> None:
    """Appends and fsyncs: a crash loses at most the line being written."""
    append_lines(path, (r.to_dict() for r in records))


def write_records(path: str | Path, records: Iterable[SFTRecord]) -> None:
    """Replaces ``path`` atomically (temporary file, then rename)."""
    write_lines(path, (r.to_dict() for r in records))


def read_records(path: str | Path) -> Iterator[SFTRecord]:
    """Records back from JSONL; a torn last line is skipped, any other bad line names file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such SFT records file (make one with `sage-fast synth`)")
    for number, data in read_lines(path, what="JSON record"):
        yield SFTRecord.from_dict(data, where=f"{path}:{number}")
