"""SAGE's own agent loop under the scheduler: real video, real tools, the real openai client on a stub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.rollout import FinishReason, SchedulerConfig
from sage_fast.rollout.agent_rollout import check_agent_config, run_agent_rollout
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


def _agent(server, tmp_path: Path, stage2: int = 2) -> Agent:  # noqa: ANN001
    return Agent(OpenAICompatible(server.url, "stub", max_retries=0),
                 config=AgentConfig(work_dir=str(tmp_path / "work"), num_frames=8, max_stage2_steps=stage2))


def _stage2_requests(server) -> int:  # noqa: ANN001
    return sum(not isinstance(r["messages"][1]["content"], list) for r in server.requests)


def test_agent_groups_stream_in_while_others_run(faulty_openai, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Agent episodes are ordinary stream episodes: a group submitted while another runs is rolled
    out beside it, and each group is handed over with its own trajectories as it completes."""
    from sage_fast.rollout.agent_rollout import agent_episodes, group_trajectories, scheduled_agent
    from sage_fast.rollout.stream import RolloutStream

    faulty_openai.reply = scripted_model(video)
    faulty_openai.latency_s = lambda body: 0.15 if "never" in json.dumps(body["messages"][1]["content"]) else 0.0
    agent = _agent(faulty_openai, tmp_path, stage2=5)
    engine = OpenAIEngine(faulty_openai.url, "stub")

    async def main():  # noqa: ANN202
        scheduled = scheduled_agent(agent, engine, tool_workers=8)
        stream = RolloutStream(engine, check_agent_config(agent.config, SchedulerConfig(max_seqs=4)))
        try:
            first = stream.submit(agent_episodes(scheduled, [{"video": video, "question": "never mind"}] * 2))
            await asyncio.sleep(0.3)  # the first group is mid-episode (6 turns of >= 0.15 s each)
            assert stream.running == 1
            second = stream.submit(agent_episodes(scheduled, [{"video": video, "question": "What number?"}] * 2))
            done = [(group.group, group.reasons, group_trajectories(group)) async for group in stream.completed()]
            return first, second, done, stream.figures()
        finally:
            await stream.aclose()
            scheduled.registry.close()
            await engine.aclose()

    first, second, done, figures = asyncio.run(main())
    assert (first, second) == (0, 1)
    by_group = {g: (reasons, trajectories) for g, reasons, trajectories in done}
    assert by_group[0][0] == [FinishReason.TURN_CAP] * 2 and all(t.could_not_produce for t in by_group[0][1])
    assert by_group[1][0] == [FinishReason.ANSWERED] * 2 and [t.answer for t in by_group[1][1]] == ["12", "12"]
    assert [g for g, _, _ in done] == [1, 0]  # the short second group overtook the capped first one
    assert figures.turns == 2 * 6 + 2 * 2 and figures.groups_completed == 2


def test_agent_episode_timeout_stops_the_agent(faulty_openai, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """An episode past its time-out ends TIMEOUT with an error trajectory, its agent is cancelled
    (no further requests, no task left behind), and the other episodes finish."""
    faulty_openai.reply = scripted_model(video)
    faulty_openai.latency_s = lambda body: 0.15 if "never" in json.dumps(body["messages"][1]["content"]) else 0.0
    agent = _agent(faulty_openai, tmp_path, stage2=50)
    engine = OpenAIEngine(faulty_openai.url, "stub")
    groups = [[{"video": video, "question": "never mind"}, {"video": video, "question": "What number?"}]]

    async def main():  # noqa: ANN202
        try:
            result = await run_agent_rollout(agent, groups, engine, SchedulerConfig(max_seqs=4, episode_timeout=1.0))
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
            # A request already on the wire when its turn was cut may still land: let it, then count.
            await asyncio.sleep(0.4)
            sent = len(faulty_openai.requests)
            await asyncio.sleep(0.5)
            return result, left, sent, len(faulty_openai.requests)
        finally:
            await engine.aclose()

    result, left, sent, later = asyncio.run(main())
    assert result.reasons == [[FinishReason.TIMEOUT, FinishReason.ANSWERED]]
    stopped = result.trajectories[0][0]
    assert stopped.error == "EpisodeStopped: timeout"
    assert result.trajectories[0][1].answer == "12"
    assert 2 < result.turns < 2 + 50  # the capped-at-50 episode was cut long before its cap
    assert not left, left
    assert later == sent  # the cancelled agent asks for nothing more


def test_agent_engine_failure_fails_the_episode_only(faulty_openai, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """An engine error that outlives the engine's retries fails that episode with the error; the
    others (its group mate, the other group) finish and every group is handed over."""
    faulty_openai.reply = scripted_model(video)
    faulty_openai.faults = ["500", "500"]  # the first Stage-1 request and its one retry
    agent = _agent(faulty_openai, tmp_path)
    engine = OpenAIEngine(faulty_openai.url, "stub", retry=RetryPolicy(attempts=2, base_delay_s=0.01, seed=0))
    groups = [[{"video": video, "question": "What number?"}] * 2, [{"video": video, "question": "Which number?"}]]
    handed: dict[int, list] = {}

    async def main():  # noqa: ANN202
        try:
            return await run_agent_rollout(agent, groups, engine, SchedulerConfig(max_seqs=1),
                                           on_group=lambda g, trajectories: handed.setdefault(g, trajectories))
        finally:
            await engine.aclose()

    result = asyncio.run(main())
    reasons = [r for group in result.reasons for r in group]
    assert sorted(reasons) == [FinishReason.ANSWERED, FinishReason.ANSWERED, FinishReason.FAILED]
    failed = next(t for group in result.trajectories for t in group if t.error)
    assert "500" in failed.error and failed.answer is None
    assert sorted(handed) == [0, 1] and [len(handed[0]), len(handed[1])] == [2, 1]
    assert handed[0] == result.trajectories[0]  # on_group sees the same trajectories, errors included


def test_closing_an_agent_stream_cancels_its_episodes(faulty_openai, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from sage_fast.rollout.agent_rollout import agent_episodes, group_trajectories, scheduled_agent
    from sage_fast.rollout.stream import RolloutStream

    faulty_openai.reply = scripted_model(video)
    faulty_openai.latency_s = 0.1
    agent = _agent(faulty_openai, tmp_path, stage2=50)
    engine = OpenAIEngine(faulty_openai.url, "stub")

    async def main():  # noqa: ANN202
        scheduled = scheduled_agent(agent, engine)
        stream = RolloutStream(engine, check_agent_config(agent.config, SchedulerConfig()))
        episodes = agent_episodes(scheduled, [{"video": video, "question": "never mind"}] * 2)
        stream.submit(episodes)
        await asyncio.sleep(0.6)
        left = await stream.aclose()
        assert all(episode._task is not None and episode._task.cancelled() for episode in episodes)  # waited for
        scheduled.registry.close()
        await asyncio.sleep(0.3)  # a request already on the wire when its turn was cut may still land
        stage2 = _stage2_requests(faulty_openai)
        await asyncio.sleep(0.5)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        await engine.aclose()
        return left, stage2, _stage2_requests(faulty_openai), tasks

    left, stage2, later, tasks = asyncio.run(main())
    assert len(left) == 1 and left[0].reasons == [FinishReason.CANCELLED] * 2
    assert [t.error for t in group_trajectories(left[0])] == ["EpisodeStopped: cancelled"] * 2
    assert stage2 >= 1 and later == stage2 and not tasks


def test_agent_episodes_need_a_scheduled_agent_and_one_kind_per_group(faulty_openai, video: Path,
                                                                      tmp_path: Path) -> None:  # noqa: ANN001
    from sage_fast.rollout.agent_rollout import AgentEpisode, agent_episodes, scheduled_agent
    from sage_fast.rollout.episodes import ScriptedEpisode, scripted_context
    from sage_fast.rollout.stream import RolloutStream
    from sage_fast.tools.registry import ToolRegistry

    agent = _agent(faulty_openai, tmp_path)
    engine = OpenAIEngine(faulty_openai.url, "stub")
    with pytest.raises(TypeError, match="scheduled_agent"):
        AgentEpisode(agent, {"video": video, "question": "q"})

    async def main() -> None:
        scheduled = scheduled_agent(agent, engine)
        scripted = ScriptedEpisode(index=0, actions=[0], tool_seconds=[0.0], registry=ToolRegistry([]),
                                   context=scripted_context(tmp_path))
        stream = RolloutStream(engine, SchedulerConfig())
        try:
            with pytest.raises(ValueError, match="all prepare or all not"):
                stream.submit([*agent_episodes(scheduled, [{"video": video, "question": "q"}]), scripted])
            assert stream.outstanding == 0
        finally:
            await stream.aclose()
            scheduled.registry.close()
            await engine.aclose()

    asyncio.run(main())
    with pytest.raises(ValueError, match="tool_workers"):
        asyncio.run(run_agent_rollout(agent, [[{"video": video, "question": "q"}]], engine, SchedulerConfig(),
                                      tool_workers=0))
