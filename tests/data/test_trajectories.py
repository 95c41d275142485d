"""SFT records from correct trajectories: a scripted orchestrator and a judge, both behind the real openai client."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.agent.trajectory import read_jsonl
from sage_fast.data.questions import SynthQuestion
from sage_fast.data.sft_records import read_records
from sage_fast.data.trajectories import make_sft_records
from sage_fast.eval.judge import Judge, JudgeConfig
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.testing import OpenAIStub
from sage_fast.tools.retry import RetryPolicy
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "counter.mp4",
                              IndexedVideoSpec(num_frames=120, fps=1.0, gop=30))


def block(data: dict) -> str:
    return f"<json>{json.dumps(data)}</json>"


def scripted_orchestrator(video: Path):  # noqa: ANN201
    """Questions starting 'direct' are answered by Stage-1; the others extract frames first, then
    Stage-2 answers 12 ('wrong': 7; 'never': keeps asking for tools until the cap)."""

    def reply(body: dict) -> str:
        user = body["messages"][1]["content"]
        text = " ".join(p.get("text", "") for p in user) if isinstance(user, list) else user
        call = {"rationale": "look", "name": "extract_parts_from_timestamp",
                "arguments": {"video_path": str(video), "timestamp_start": "00:00:10", "timestamp_end": "00:00:40"}}
        if isinstance(user, list):  # Stage-1: the request with frames
            direct = "direct" in text
            return block({"video_context": "a counter", "query_intent": "read it", "final_answer": "12" if direct else None,
                          "recommended_tools": {"needed": not direct, "why_no_tool": "seen" if direct else "",
                                                "tool_calls": [] if direct else [call]}})
        if "never" in text:
            return block({"answerable": {"verdict": False, "reasoning": "-"}, "final_answer": None,
                          "recommended_tools": {"needed": True, "why_no_tool": "", "tool_calls": [call]}})
        return block({"answerable": {"verdict": True, "reasoning": "seen"}, "final_answer": "7" if "wrong" in text else "12",
                      "recommended_tools": {"needed": False, "why_no_tool": "seen", "tool_calls": []}})

    return reply


def strict_judge(body: dict) -> str:
    """Accepts a prediction only when it equals the ground truth."""
    prompt = body["messages"][1]["content"]
    truth = re.search(r"^Ground truth: (.*)$", prompt, re.M).group(1).strip()
    prediction = re.search(r"^Prediction: (.*)$", prompt, re.M).group(1).strip()
    return f"Reasoning: compared.\nVerdict: {truth.lower() == prediction.lower()}"


def question(qid: str, text: str, video: Path, answer: str = "12") -> SynthQuestion:
    return SynthQuestion(id=qid, video_path=str(video), duration_seconds=120.0, source_model="gemini-test",
                         question=text, ques_type="open_ended", answer=answer, difficulty="easy", modality="visual",
                         requires_web_search=False, start_seconds=0.0, end_seconds=120.0, start_timestamp="00:00:00",
                         end_timestamp="00:02:00", percent_video_parsed=100.0)


@pytest.fixture
def judge_stub():  # noqa: ANN201
    stub = OpenAIStub()
    stub.reply = strict_judge
    yield stub
    stub.close()


def setup(openai_stub: OpenAIStub, judge_stub: OpenAIStub, video: Path, tmp_path: Path):  # noqa: ANN201
    openai_stub.reply = scripted_orchestrator(video)
    agent = Agent(OpenAICompatible(openai_stub.url, "strong", max_retries=0),
                  config=AgentConfig(work_dir=str(tmp_path / "work"), num_frames=8, max_stage2_steps=2))
    judge = Judge(JudgeConfig(base_url=judge_stub.url, model="judge-test", retry=RetryPolicy(attempts=1)))
    questions = [question("q-direct", "direct: which number is shown?", video),
                 question("q-tool", "Which number is shown at 00:00:12?", video),
                 question("q-wrong", "wrong: which number comes first?", video),
                 question("q-never", "never: which number is hidden?", video),
                 question("q-missing", "Which number?", tmp_path / "gone.mp4")]
    return agent, judge, questions


def test_only_correct_episodes_become_records_one_per_turn(openai_stub, judge_stub, video, tmp_path) -> None:  # noqa: ANN001
    agent, judge, questions = setup(openai_stub, judge_stub, video, tmp_path)
    records_path, trajectories_path = tmp_path / "sft.jsonl", tmp_path / "traj.jsonl"
    counts = make_sft_records(agent, questions, judge, records_path, trajectories_path, concurrency=3,
                              progress=False)
    assert (counts.run, counts.judged, counts.correct, counts.records, counts.errors, counts.skipped) == (5, 5, 2, 3, 1, 0)
    assert len(openai_stub.requests) == 1 + 2 + 2 + 3  # direct, tool, wrong, never (cap 2); missing: none
    assert len(judge_stub.requests) == 3  # no request for the give-up answer or the failed episode
    records = list(read_records(records_path))
    by_question: dict[str, list] = {}
    for record in records:
        by_question.setdefault(record.metadata["question_id"], []).append(record)
    trajectories = {t.metadata["id"]: t for t in read_jsonl(trajectories_path)}
    assert sorted(by_question) == ["q-direct", "q-tool"]
    for qid, kept in by_question.items():
        assert len(kept) == len(trajectories[qid].turns)  # one record per turn
    assert [r.id for r in by_question["q-tool"]] == ["q-tool/stage1-0", "q-tool/stage2-1"]
    tool_records = by_question["q-tool"]
    assert tool_records[0].stage == "stage1" and tool_records[0].response == trajectories["q-tool"].turns[0].raw_output
    assert any(p.get("type") == "frame" for m in tool_records[0].messages if isinstance(m["content"], list)
               for p in m["content"])  # frames by reference
    meta = tool_records[1].metadata
    assert meta["orchestrator"] == agent.orchestrator.name and meta["verdict"]["correct"] is True
    assert meta["judge_model"] == "judge-test" and meta["gt_answer"] == "12"
    assert tool_records[1].video_path == str(video)
    # every trajectory is kept, with its verdict
    assert set(trajectories) == {q.id for q in questions}
    assert trajectories["q-wrong"].metadata["verdict"]["correct"] is False and trajectories["q-wrong"].answer == "7"
    assert trajectories["q-never"].could_not_produce and not trajectories["q-never"].metadata["verdict"]["correct"]
    assert "gone.mp4" in trajectories["q-missing"].error

    # resume: nothing asked again but the failed episode (which fails before any model call)
    orchestrator_calls, judge_calls = len(openai_stub.requests), len(judge_stub.requests)
    counts = make_sft_records(agent, questions, judge, records_path, trajectories_path, progress=False)
    assert (counts.skipped, counts.run, counts.records, counts.errors) == (4, 1, 0, 1)
    assert (len(openai_stub.requests), len(judge_stub.requests)) == (orchestrator_calls, judge_calls)
    assert len(list(read_records(records_path))) == 3

    # records lost after their trajectory was written (a crash between the two): rebuilt, no request
    kept_lines = [line for line in records_path.read_text().splitlines() if '"q-tool"' not in line]
    records_path.write_text("\n".join(kept_lines) + "\n")
    counts = make_sft_records(agent, questions[:4], judge, records_path, trajectories_path, progress=False)
    assert (counts.skipped, counts.run, counts.records) == (4, 0, 2)
    assert (len(openai_stub.requests), len(judge_stub.requests)) == (orchestrator_calls, judge_calls)
    assert sorted(r.id for r in read_records(records_path)) == ["q-direct/stage1-0", "q-tool/stage1-0",
                                                                 "q-tool/stage2-1"]


def test_a_failing_judge_stops_the_run_and_the_rerun_only_judges(openai_stub, judge_stub, video, tmp_path) -> None:  # noqa: ANN001
    agent, judge, questions = setup(openai_stub, judge_stub, video, tmp_path)
    questions = questions[:3]
    judge_stub.faults = ["400"] * 3  # a refused request is not retried
    records_path, trajectories_path = tmp_path / "sft.jsonl", tmp_path / "traj.jsonl"
    with pytest.raises(RuntimeError, match=r"could not be judged.*rerun the same command"):
        make_sft_records(agent, questions, judge, records_path, trajectories_path, concurrency=3, progress=False)
    stored = list(read_jsonl(trajectories_path))
    assert len(stored) == 3 and all("verdict" not in t.metadata for t in stored)
    assert not records_path.exists()
    calls = len(openai_stub.requests)
    counts = make_sft_records(agent, questions, judge, records_path, trajectories_path, progress=False)
    assert len(openai_stub.requests) == calls  # the stored episodes are judged, not run again
    assert (counts.run, counts.judged, counts.correct, counts.records) == (0, 3, 2, 3)


def test_a_torn_last_line_is_cut_before_appending(openai_stub, judge_stub, video, tmp_path) -> None:  # noqa: ANN001
    agent, judge, questions = setup(openai_stub, judge_stub, video, tmp_path)
    records_path, trajectories_path = tmp_path / "sft.jsonl", tmp_path / "traj.jsonl"
    make_sft_records(agent, questions[:1], judge, records_path, trajectories_path, progress=False)
    with open(trajectories_path, "a") as handle:
        handle.write('{"video_path": "torn')  # a crash mid-write
    counts = make_sft_records(agent, questions[:2], judge, records_path, trajectories_path, progress=False)
    assert (counts.skipped, counts.run, counts.correct) == (1, 1, 1)
    assert [t.metadata["id"] for t in read_jsonl(trajectories_path)] == ["q-direct", "q-tool"]
    assert len(list(read_records(records_path))) == 3
    with pytest.raises(ValueError, match="appears twice"):
        make_sft_records(agent, [questions[0], questions[0]], judge, records_path, trajectories_path, progress=False)
