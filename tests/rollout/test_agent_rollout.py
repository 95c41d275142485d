"""SAGE's own agent loop under the scheduler: real video, real tools, the real openai client on a stub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.rollout import FinishReason, SchedulerConfig
from sage_fast.rollout.agent_rollout import run_agent_rollout
from sage_fast.rollout.engines import OpenAIEngine, RetryPolicy
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "episode.mp4",
                              IndexedVideoSpec(num_frames=120, fps=1.0, gop=30, bframes=2))


def block(data: dict) -> str:
    return f"<json>{json.dumps(data)}</json>"


def scripted_model(video: Path):  # noqa: ANN201
    """Stage-1 (the request with images) asks for extract; Stage-2 answers, except for questions
    containing 'never' (they keep asking until the cap) and 'boom' (a malformed path, still answered)."""

    def reply(body: dict) -> str:
        messages = body["messages"]
        user = messages[1]["content"]
        question = " ".join(p.get("text", "") for p in user) if isinstance(user, list) else user
        call = {"rationale": "look", "name": "extract_parts_from_timestamp",
                "arguments": {"video_path": str(video), "timestamp_start": "00:00:10", "timestamp_end": "00:00:40"}}
        if isinstance(user, list):  # Stage-1
            return block({"video_context": "counter", "query_intent": "read", "final_answer": None,
                          "recommended_tools": {"needed": True, "why_no_tool": "", "tool_calls": [call]}})
        if "never" in question:
            return block({"answerable": {"verdict": False, "reasoning": "-"}, "final_answer": None,
                          "recommended_tools": {"needed": True, "why_no_tool": "", "tool_calls": [call]}})
        return block({"answerable": {"verdict": True, "reasoning": "-"}, "final_answer": "12",
                      "recommended_tools": {"needed": False, "why_no_tool": "seen", "tool_calls": []}})

    return reply


def test_agent_episodes_run_under_the_scheduler(faulty_openai, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    faulty_openai.reply = scripted_model(video)
    faulty_openai.faults = ["502"]
    agent = Agent(OpenAICompatible(faulty_openai.url, "stub", max_retries=0),
                  config=AgentConfig(work_dir=str(tmp_path / "work"), num_frames=8, max_stage2_steps=2))
    engine = OpenAIEngine(faulty_openai.url, "stub", retry=RetryPolicy(base_delay_s=0.01, seed=0))
    groups = [[{"video": video, "question": "What number?"}, {"video": video, "question": "never mind"}],
              [{"video": video, "question": "Which number?"}, {"video": tmp_path / "missing.mp4", "question": "x"}]]
    handed: list[int] = []

    async def main():  # noqa: ANN202
        try:
            return await run_agent_rollout(agent, groups, engine, SchedulerConfig(max_seqs=2),
                                           on_group=lambda g, trajectories: handed.append(g))
        finally:
            await engine.aclose()

    result = asyncio.run(main())
    R = FinishReason
    assert result.reasons == [[R.ANSWERED, R.TURN_CAP], [R.ANSWERED, R.FAILED]]
    answered = result.trajectories[0][0]
    assert answered.answer == "12" and answered.answer_stage == "stage2" and len(answered.turns) == 2
    assert answered.tool_calls[0].result.startswith("Extracted 10 frames")
    capped = result.trajectories[0][1]
    assert capped.could_not_produce and len(capped.turns) == 3, capped.error
    broken = result.trajectories[1][1]
    assert broken.error is not None and "missing.mp4" in broken.error
    assert sorted(handed) == [0, 1]
    assert result.turns == 2 + 3 + 2  # every turn was admitted by the scheduler
    stage1 = [r for r in faulty_openai.requests if isinstance(r["messages"][1]["content"], list)]
    assert len(stage1) == 3 + 1  # three Stage-1 turns, one of them retried after the 502
    assert agent.orchestrator.name.startswith("openai:")  # the caller's agent is untouched
    assert agent.registry.tools.keys() == {"extract_parts_from_timestamp", "identify_timestamps_visually",
                                           "perform_reasoning"}


def test_agent_rollout_checks_its_config(faulty_openai, tmp_path: Path) -> None:  # noqa: ANN001
    agent = Agent(OpenAICompatible(faulty_openai.url, "stub"), config=AgentConfig(max_stage2_steps=10))
    engine = OpenAIEngine(faulty_openai.url, "stub")
    groups = [[{"video": tmp_path / "v.mp4", "question": "q"}]]
    with pytest.raises(ValueError, match="tool_timeout=0"):
        asyncio.run(run_agent_rollout(agent, groups, engine, SchedulerConfig(tool_timeout=5.0)))
    with pytest.raises(ValueError, match="groups"):
        asyncio.run(run_agent_rollout(agent, [], engine, SchedulerConfig()))
