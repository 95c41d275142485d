"""The evaluation harness end to end: real episodes (tiny model, or the real openai client against the
local stub), the real judge, rows on disk, resuming, failures as rows."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.agent.trajectory import COULD_NOT_PRODUCE, read_jsonl
from sage_fast.eval.datasets import EvalItem
from sage_fast.eval.judge import Judge, JudgeConfig
from sage_fast.eval.runner import EvalConfig, read_rows, run_eval
from sage_fast.models.base import SamplingConfig
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.tools.retry import RetryPolicy

REFERENCE_FIELDS = {"question", "answer", "correct_answer", "full_answer", "is_correct", "evaluation_reasoning",
                    "none_prediction", "could_not_produce", "used_tool_calls", "tool_call_types", "ques_type",
                    "difficulty", "modality", "duration", "video_path"}
OUR_FIELDS = {"id", "gt_answer", "raw_output", "num_tool_calls", "tool_calls", "direct", "turns", "seconds",
              "tokens_in", "tokens_out", "error"}


def judge_for(stub, attempts: int = 3) -> Judge:  # noqa: ANN001
    return Judge(JudgeConfig(stub.url, model="judge", retry=RetryPolicy(attempts=attempts, base_delay_s=0.0)))


def items_for(video: Path, n: int) -> list[EvalItem]:
    # odd items have a ground truth the scripted orchestrator never says
    return [EvalItem(id=f"q{k}", question=f"What does item {k} show?", answer=f"answer {k}" if k % 2 == 0 else "nope",
                     video_path=str(video), difficulty="easy", modality="visual") for k in range(n)]


def server_agent(stub, tmp_path: Path) -> Agent:  # noqa: ANN001
    return Agent(OpenAICompatible(stub.url, "sage-mm", max_retries=0),
                 config=AgentConfig(num_frames=4, work_dir=str(tmp_path / "work")))


def judge_requests(stub) -> list[dict]:  # noqa: ANN001
    return [r for r in stub.requests if r["model"] == "judge"]


@pytest.fixture(scope="module")
def tiny_agent(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Agent:
    from sage_fast.models.transformers_backend import TransformersVLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = TransformersVLM(tiny_cache / "tiny-qwen2_5_vl")
    return Agent(vlm, config=AgentConfig(num_frames=4, max_stage2_steps=1, work_dir=str(tmp_path_factory.mktemp("w")),
                                         sampling=SamplingConfig(max_tokens=12)))


def test_tiny_orchestrator_end_to_end(tiny_agent: Agent, video_root: Path, openai_stub, tmp_path: Path) -> None:  # noqa: ANN001
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    items = [EvalItem(id="short", question="What number is shown?", answer="7", video_path=str(video_root / "vid0.mp4"),
                      difficulty="easy", modality="visual"),
             EvalItem(id="mcq", question="Which colour?", answer="B", video_path=str(video_root / "vid1.mkv"),
                      ques_type="mcq", options=["red", "blue"], duration_seconds=75.0),
             EvalItem(id="broken", question="q", answer="a", video_path=str(broken))]
    openai_stub.reply = "Reasoning: compared.\nVerdict: True"
    out = tmp_path / "results.jsonl"
    rows = run_eval(tiny_agent, items, judge_for(openai_stub), EvalConfig(output=str(out), concurrency=2),
                    progress=False)
    assert [r["id"] for r in rows] == ["short", "mcq", "broken"]
    assert sorted(r["id"] for r in read_rows(out)) == ["broken", "mcq", "short"]  # one row each, on disk
    trajectories = {t.metadata["id"]: t for t in read_jsonl(tmp_path / "results.trajectories.jsonl")}
    assert set(trajectories) == {"short", "mcq", "broken"}
    for row in rows:
        assert set(row) >= REFERENCE_FIELDS | OUR_FIELDS
    short, mcq, bad = rows
    for row in (short, mcq):
        trajectory = trajectories[row["id"]]
        assert row["error"] is None and row["turns"] == len(trajectory.turns) >= 1
        assert row["tokens_in"] == sum(t.tokens_in for t in trajectory.turns) > 4 * 60
        assert row["raw_output"] == trajectory.turns[-1].raw_output and row["answer"] == trajectory.answer
        assert row["num_tool_calls"] == len(row["tool_calls"]) == sum(row["tool_call_types"].values())
        assert row["used_tool_calls"] is (row["num_tool_calls"] > 0)
        if row["could_not_produce"]:  # random weights: almost surely no answer, judged without a request
            assert row["answer"] == COULD_NOT_PRODUCE and row["is_correct"] is False and not row["direct"]
    assert short["duration"] == pytest.approx(10.0, abs=0.3) and short["video_path"] == str(video_root / "vid0.mp4")
    assert (short["difficulty"], short["modality"], short["ques_type"]) == ("easy", "visual", "open_ended")
    assert short["full_answer"] == "7" and short["correct_answer"] is None and short["question"] == "What number is shown?"
    assert mcq["duration"] == 75.0 and mcq["correct_answer"] == "B" and mcq["full_answer"] == "blue"
    assert mcq["question"].endswith("(A) red\n(B) blue") and mcq["gt_answer"] == "B"
    assert bad["error"] and bad["is_correct"] is False and bad["answer"] is None and bad["none_prediction"]
    assert "episode failed" in bad["evaluation_reasoning"] and bad["turns"] == 0
    answered = [r for r in (short, mcq) if not r["could_not_produce"]]
    assert len(judge_requests(openai_stub)) == len(answered)


def test_judged_rows_and_resume_without_duplicates(video_root: Path, openai_stub, scripted,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    openai_stub.reply = scripted
    items = items_for(video_root / "vid0.mp4", 5)
    out = tmp_path / "results.jsonl"
    first = run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub),
                     EvalConfig(output=str(out), concurrency=2, limit=2), progress=False)
    assert [(r["id"], r["is_correct"], r["answer"], r["direct"]) for r in first] == [
        ("q0", True, "answer 0", True), ("q1", False, "answer 1", True)]
    assert first[0]["evaluation_reasoning"] == "compared." and first[1]["full_answer"] == "nope"
    assert len(openai_stub.requests) == 4  # two episodes, two verdicts
    with open(out, "a") as handle:  # a crash in the middle of writing q2's row
        handle.write('{"id": "q2", "question": "What does it')
    openai_stub.requests = []
    rows = run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub),
                    EvalConfig(output=str(out), concurrency=3), progress=False)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert [r["is_correct"] for r in rows] == [True, False, True, False, True]
    assert rows[:2] == first
    on_disk = read_rows(out)
    assert sorted(r["id"] for r in on_disk) == ["q0", "q1", "q2", "q3", "q4"]  # no duplicates, no torn line
    assert all(line.startswith("{") for line in out.read_text().splitlines())
    asked = sorted(re.search(r"item (\d)", json.dumps(r)).group(1) for r in openai_stub.requests)
    assert asked == ["2", "2", "3", "3", "4", "4"]  # finished items: neither run nor judged again
    openai_stub.requests = []
    again = run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub),
                     EvalConfig(output=str(out)), progress=False)
    assert again == rows and openai_stub.requests == []


def test_a_failing_judge_stops_the_run_and_the_rerun_reuses_the_episodes(video_root: Path, openai_stub,  # noqa: ANN001
                                                                         scripted, tmp_path: Path) -> None:
    def judge_down(body: dict) -> str | None:
        if body["model"] == "judge":
            return None  # the stub answers HTTP 500: a transient failure, retried, then given up
        return scripted(body)

    openai_stub.reply = judge_down
    items = items_for(video_root / "vid0.mp4", 2)
    out = tmp_path / "results.jsonl"
    with pytest.raises(RuntimeError, match="could not be judged.*rerun the same command"):
        run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub, attempts=2),
                 EvalConfig(output=str(out), concurrency=1), progress=False)
    assert not out.exists() or read_rows(out) == []
    episodes_before = [r for r in openai_stub.requests if r["model"] != "judge"]
    assert 1 <= len(episodes_before) <= 2  # after the first failure no new episode starts
    openai_stub.reply = scripted
    openai_stub.requests = []
    rows = run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub),
                    EvalConfig(output=str(out)), progress=False)
    assert [r["is_correct"] for r in rows] == [True, False]
    episodes_after = [r for r in openai_stub.requests if r["model"] != "judge"]
    assert len(episodes_before) + len(episodes_after) == 2  # stored episodes were only judged
    assert len(judge_requests(openai_stub)) == 2


def test_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        EvalConfig(output=str(tmp_path / "r.jsonl"), concurrency=0)
    assert EvalConfig(output="runs/r.jsonl").trajectories_path == Path("runs/r.trajectories.jsonl")
    with pytest.raises(ValueError, match="no judge"):
        run_eval(None, [], None, EvalConfig(output=str(tmp_path / "r.jsonl")), progress=False)


def test_failed_episodes_are_rows_and_retry_errors_reruns_them(video_root: Path, openai_stub, scripted,  # noqa: ANN001
                                                               tmp_path: Path) -> None:
    def item1_down(body: dict) -> str | None:
        if body["model"] != "judge" and "item 1" in json.dumps(body["messages"]):
            return None  # HTTP 500 for this episode's model call
        return scripted(body)

    openai_stub.reply = item1_down
    items = items_for(video_root / "vid0.mp4", 3)
    out = tmp_path / "results.jsonl"
    rows = run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub), EvalConfig(output=str(out)),
                    progress=False)
    assert [bool(r["error"]) for r in rows] == [False, True, False] and "500" in rows[1]["error"]
    assert rows[1]["is_correct"] is False and rows[1]["answer"] is None
    assert len(judge_requests(openai_stub)) == 2  # the failed episode is not judged
    openai_stub.reply = scripted
    openai_stub.requests = []
    assert run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub), EvalConfig(output=str(out)),
                    progress=False) == rows and openai_stub.requests == []  # a plain resume keeps the error row
    again = run_eval(server_agent(openai_stub, tmp_path), items, judge_for(openai_stub),
                     EvalConfig(output=str(out), retry_errors=True), progress=False)
    assert again[1]["error"] is None and again[1]["answer"] == "answer 1" and again[0] == rows[0]
    assert sorted(r["id"] for r in read_rows(out)) == ["q0", "q1", "q2"]  # replaced, not duplicated
    assert len(openai_stub.requests) == 2  # one episode, one verdict
