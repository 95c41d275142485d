"""SFT records: trajectory -> per-turn records -> JSONL -> back, with torn lines and bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.agent.trajectory import Trajectory, Turn
from sage_fast.data.sft_records import (
    SFTRecord,
    append_records,
    read_records,
    records_from_trajectory,
    write_records,
)


def episode() -> Trajectory:
    frames = [{"type": "frame", "pts": 0.5}, {"type": "frame", "pts": 2.25}, {"type": "text", "text": "Q?"}]
    return Trajectory(video_path="/videos/a.mp4", question="Q?", metadata={"id": "q7"}, turns=[
        Turn(stage="stage1", step=0, messages=[{"role": "system", "content": "S1"}, {"role": "user", "content": frames}],
             raw_output='<json>{"final_answer": null}</json>'),
        Turn(stage="stage2", step=1, messages=[{"role": "user", "content": "step 1"}], raw_output="   "),
        Turn(stage="stage2", step=2, messages=[{"role": "user", "content": "step 2"}], raw_output="<json>{}</json>"),
    ])


def test_records_from_a_trajectory_round_trip(tmp_path: Path) -> None:
    records = records_from_trajectory(episode(), metadata={"verdict": True})
    assert [r.id for r in records] == ["q7/stage1-0", "q7/stage2-2"]  # the empty output teaches nothing
    assert records[0].to_sample().frame_pts == (0.5, 2.25) and records[1].to_sample().frame_pts == ()
    assert records[1].metadata == {"verdict": True} and records[1].video_path == "/videos/a.mp4"
    path = tmp_path / "sft.jsonl"
    write_records(path, records[:1])
    append_records(path, records[1:])
    assert [r.to_dict() for r in read_records(path)] == [r.to_dict() for r in records]
    assert not list(tmp_path.glob(".*partial"))


def test_torn_last_line_is_skipped_and_other_bad_lines_named(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    write_records(path, records_from_trajectory(episode()))
    with open(path, "a") as handle:
        handle.write('{"id": "cut')
    assert len(list(read_records(path))) == 2
    path.write_text('{"id": "x"\n' + json.dumps(records_from_trajectory(episode())[0].to_dict()) + "\n")
    with pytest.raises(ValueError, match=r"sft.jsonl:1: not a JSON record"):
        list(read_records(path))


@pytest.mark.parametrize(("change", "message"), [
    ({"response": ""}, "response must be a non-empty string"),
    ({"stage": "stage3"}, "stage must be 'stage1' or 'stage2'"),
    ({"messages": [{"content": "no role"}]}, "messages must be a list"),
])
def test_bad_records_name_the_field(change: dict, message: str) -> None:
    data = {**records_from_trajectory(episode())[0].to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        SFTRecord.from_dict(data, where="rec 3")
    with pytest.raises(ValueError, match="rec 4: missing messages, response"):
        SFTRecord.from_dict({"id": "a", "video_path": "v", "stage": "stage1", "step": 0}, where="rec 4")
    with pytest.raises(ValueError, match="sage-fast synth"):
        list(read_records(Path("/nonexistent/records.jsonl")))
