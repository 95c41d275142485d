"""The async driver and the lock-step baseline on real engines and the real tool registry, with faults."""

from __future__ import annotations

import asyncio

import pytest

from sage_fast.rollout import FinishReason, SchedulerConfig, TurnAction
from sage_fast.rollout.driver import run_rollout
from sage_fast.rollout.engines import OpenAIEngine, RetryPolicy, TransformersEngine
from sage_fast.rollout.episodes import ScriptedEpisode, scripted_context, sleep_tool
from sage_fast.rollout.lockstep import run_lockstep
from sage_fast.tools.registry import Tool, ToolRegistry

ANS, TOOL, CONT = int(TurnAction.ANSWER), int(TurnAction.TOOL), int(TurnAction.CONTINUE)


@pytest.fixture
def tools(tmp_path):  # noqa: ANN001, ANN201
    registry = ToolRegistry([Tool(sleep_tool, timeout_s=60.0)], max_workers=32)
    yield registry, scripted_context(tmp_path)
    registry.close()


def episodes(tools, scripts: list[tuple[list[int], list[float]]],  # noqa: ANN001
             extra: dict[int, dict] | None = None) -> list[ScriptedEpisode]:
    registry, context = tools
    return [ScriptedEpisode(index=i, actions=a, tool_seconds=t, registry=registry, context=context,
                            **(extra or {}).get(i, {}))
            for i, (a, t) in enumerate(scripts)]


def test_rollout_survives_hung_tool_failing_episode_and_5xx(faulty_openai, tools) -> None:  # noqa: ANN001
    faulty_openai.faults = ["500", "drop"]  # retried by the engine, invisible to the episodes
    eps = episodes(tools, [
        ([TOOL, TOOL, ANS], [0.05, 0.02, 0]),
        ([TOOL, ANS], [3.0, 0]),  # hangs past the 1 s tool time-out
        ([CONT, TOOL, ANS], [0, 0.01, 0]),
        ([TOOL, TOOL, TOOL], [0.01, 0.01, 0.01]),  # hits the 3-turn cap
        ([TOOL, TOOL, ANS], [0.01, 0.01, 0]),  # raises at its second turn
        ([ANS], [0]),
    ], {4: {"fail_at_turn": 1}})
    engine = OpenAIEngine(faulty_openai.url, "stub", retry=RetryPolicy(base_delay_s=0.01, seed=0))
    handed: list[tuple[int, list[int]]] = []
    config = SchedulerConfig(max_seqs=4, max_tokens=100_000, max_turns=3, tool_timeout=1.0)

    async def main():  # noqa: ANN202
        try:
            return await run_rollout([eps[:3], eps[3:]], engine, config,
                                     on_group=lambda g, members: handed.append((g, [m.index for m in members])))
        finally:
            await engine.aclose()

    result = asyncio.run(main())
    R = FinishReason
    assert result.reasons == [R.ANSWERED, R.ANSWERED, R.ANSWERED, R.TURN_CAP, R.FAILED, R.ANSWERED]
    assert result.errors[4] == "RuntimeError: episode 4: scripted failure at turn 1"
    assert [e for i, e in enumerate(result.errors) if i != 4] == [None] * 5
    assert result.tool_timeouts == 1
    hung = eps[1].tool_calls
    assert len(hung) == 1 and hung[0].error and "timed out" in hung[0].result
    assert len(eps[1].turns) == 2  # it went on with the error result and answered
    assert sorted(handed) == [(0, [0, 1, 2]), (1, [3, 4, 5])]
    assert engine.retries == 2
    assert result.turns == 3 + 2 + 3 + 3 + 2 + 1


def test_engine_failure_fails_one_episode_and_episode_timeout(faulty_openai, tools) -> None:  # noqa: ANN001
    faulty_openai.faults = ["503"]
    eps = episodes(tools, [([TOOL, ANS], [0.01, 0]), ([TOOL, ANS], [0.01, 0]), ([TOOL, ANS], [4.0, 0])])
    engine = OpenAIEngine(faulty_openai.url, "stub", retry=RetryPolicy(attempts=1, seed=0))
    config = SchedulerConfig(max_seqs=1, max_turns=3, episode_timeout=2.0)

    async def main():  # noqa: ANN202
        try:
            return await run_rollout([eps], engine, config)
        finally:
            await engine.aclose()

    result = asyncio.run(main())
    assert result.reasons[0] == FinishReason.FAILED and "EngineError" in result.errors[0]  # max_seqs=1: first
    assert result.reasons[1] == FinishReason.ANSWERED
    assert result.reasons[2] == FinishReason.TIMEOUT  # its 4 s tool outlives the 2 s episode budget


def test_lockstep_does_the_same_work(faulty_openai, tools) -> None:  # noqa: ANN001
    scripts = [([TOOL, TOOL, ANS], [0.02, 0.01, 0]), ([CONT, TOOL, TOOL, ANS], [0, 0.01, 2.0, 0]),
               ([ANS], [0]), ([TOOL, TOOL, TOOL, TOOL], [0.01] * 4)]
    engine = OpenAIEngine(faulty_openai.url, "stub", retry=RetryPolicy(base_delay_s=0.01, seed=0))
    config = SchedulerConfig(max_seqs=8, max_turns=4, tool_timeout=0.8)

    async def main():  # noqa: ANN202
        try:
            a = await run_rollout([episodes(tools, scripts)[:2], episodes(tools, scripts)[2:]], engine, config)
            b = await run_lockstep([episodes(tools, scripts)], engine, config)
            return a, b
        finally:
            await engine.aclose()

    a, b = asyncio.run(main())
    assert a.reasons == b.reasons == [FinishReason.ANSWERED] * 3 + [FinishReason.TURN_CAP]
    assert (a.turns, a.tool_calls, a.tool_timeouts) == (b.turns, b.tool_calls, b.tool_timeouts) == (12, 7, 1)


def test_transformers_engine_rollout_batches_turns(tiny_model_dir, tools) -> None:  # noqa: ANN001
    engine = TransformersEngine(tiny_model_dir, max_batch=8)
    scripts = [([TOOL, ANS], [0.05, 0]), ([TOOL, TOOL, ANS], [0.01, 0.02, 0]), ([ANS], [0]), ([CONT, ANS], [0, 0])]
    eps = episodes(tools, scripts)

    async def main():  # noqa: ANN202
        try:
            return await run_rollout([eps[:2], eps[2:]], engine, SchedulerConfig(max_seqs=8, max_turns=4))
        finally:
            await engine.aclose()

    result = asyncio.run(main())
    assert result.reasons == [FinishReason.ANSWERED] * 4
    assert sum(engine.batches) == result.turns == 2 + 3 + 1 + 2
    assert engine.batches[0] == 4  # the four first turns went as one generate call
    assert all(g.tokens_out >= 1 for ep in eps for g in ep.turns)
