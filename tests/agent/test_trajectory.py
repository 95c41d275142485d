"""Trajectories round-trip through JSONL exactly, survive torn writes, and answer RL/eval questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.agent.trajectory import (
    Cost,
    ToolCallRecord,
    Trajectory,
    Turn,
    append_jsonl,
    read_jsonl,
    write_jsonl,
)


def episode(question: str = "What is cooked?") -> Trajectory:
    call = ToolCallRecord(name="extract_parts_from_timestamp", arguments={"timestamp_start": "00:01:00", "x": 1},
                          validated_arguments={"timestamp_start": "00:01:00"}, dropped_arguments=["x"],
                          result="frames: a.jpg b.jpg", seconds=0.4, repeat=1)
    return Trajectory(
        video_path="/videos/v.mp4", question=question, duration_seconds=612.5,
        turns=[
            Turn(stage="stage1", step=0, messages=[{"role": "user", "content": [{"type": "frame", "pts": 1.5}]}],
                 raw_output="<json>{}</json>", parsed={"final_answer": None}, repaired=True, tool_call=call,
                 tokens_in=24000, tokens_out=120, frames=128, visual_tokens=20480),
            Turn(stage="stage2", step=1, messages=[{"role": "system", "content": "…"}], raw_output="done",
                 parsed={"final_answer": "soup"}, keys_exact=True),
        ],
        answer="soup", answer_stage="stage2", cost=Cost(frames_decoded=138, model_calls=2, tool_calls=1),
        metadata={"question_id": "q1", "ground_truth": "soup"},
    )


def test_dict_round_trip_is_exact() -> None:
    original = episode()
    again = Trajectory.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original
    assert again.tool_calls[0].dropped_arguments == ["x"] and again.multi_turn


def test_jsonl_write_append_read(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "traj.jsonl"
    write_jsonl(path, [episode("a")])
    append_jsonl(path, [episode("b"), episode("c")])
    assert [t.question for t in read_jsonl(path)] == ["a", "b", "c"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]


def test_torn_last_line_is_skipped_other_bad_lines_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "traj.jsonl"
    write_jsonl(path, [episode("a"), episode("b")])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"video_path": "/v.mp4", "quest')  # a crash mid-write
    assert [t.question for t in read_jsonl(path)] == ["a", "b"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"traj.jsonl:2"):
        list(read_jsonl(path))


def test_newer_fields_are_ignored() -> None:
    data = episode().to_dict()
    data["new_field"] = 1
    data["turns"][0]["new_turn_field"] = 2
    data["turns"][0]["tool_call"]["new_call_field"] = 3
    assert Trajectory.from_dict(data) == episode()
