"""RolloutStream: groups submitted at any time, taken in completion order, limits, failures, close, batching."""

from __future__ import annotations

import asyncio
import random

import pytest

from sage_fast.rollout import (
    DecisionKind,
    EpisodeState,
    EventCode,
    FinishReason,
    RolloutStream,
    Scheduler,
    SchedulerConfig,
    TurnAction,
    cpp_available,
)
from sage_fast.rollout.engines import OpenAIEngine, RetryPolicy, TransformersEngine
from sage_fast.rollout.episodes import ScriptedEpisode, scripted_context, sleep_tool
from sage_fast.tools.registry import Tool, ToolRegistry

ANS, TOOL, CONT = int(TurnAction.ANSWER), int(TurnAction.TOOL), int(TurnAction.CONTINUE)
R = FinishReason


@pytest.fixture
def tools(tmp_path):  # noqa: ANN001, ANN201
    registry = ToolRegistry([Tool(sleep_tool, timeout_s=60.0)], max_workers=32)
    yield registry, scripted_context(tmp_path)
    registry.close()


class Maker:
    """Numbers scripted episodes across every group a test submits."""

    def __init__(self, tools) -> None:  # noqa: ANN001
        self.registry, self.context = tools
        self.count = 0

    def __call__(self, *scripts: tuple[list[int], list[float]], **extra: object) -> list[ScriptedEpisode]:
        out = []
        for actions, seconds in scripts:
            out.append(ScriptedEpisode(index=self.count, actions=actions, tool_seconds=seconds,
                                       registry=self.registry, context=self.context, **extra))
            self.count += 1
        return out


QUICK = ([TOOL, ANS], [0.01, 0])


def stub_engine(server) -> OpenAIEngine:  # noqa: ANN001
    return OpenAIEngine(server.url, "stub", retry=RetryPolicy(base_delay_s=0.01, seed=0))


def run(engine, main):  # noqa: ANN001, ANN201
    """``asyncio.run(main())``, closing the engine on the same loop (its HTTP client lives there)."""
    async def wrapped():  # noqa: ANN202
        try:
            return await main()
        finally:
            await engine.aclose()

    return asyncio.run(wrapped())


def test_groups_submitted_mid_run_complete(faulty_openai, tools) -> None:  # noqa: ANN001
    make = Maker(tools)
    engine = stub_engine(faulty_openai)

    async def main():  # noqa: ANN202
        async with RolloutStream(engine, SchedulerConfig(max_seqs=8)) as stream:
            slow = stream.submit(make(([TOOL, ANS], [1.0, 0])))  # episode 0
            quick = stream.submit(make(QUICK, QUICK))
            first = await stream.next_completed()
            assert first.group == quick and stream.running == 1
            assert stream.scheduler.state(0) == EpisodeState.IN_TOOL  # the slow group is mid-run
            late = stream.submit(make(QUICK))  # the next step's group, while the straggler runs
            taken = [first] + [g async for g in stream.completed()]
            return [g.group for g in taken], taken, (slow, quick, late), stream.figures()

    order, taken, (slow, quick, late), figures = run(engine, main)
    assert order == [quick, late, slow] == [1, 2, 0]
    for group in taken:
        assert group.reasons == [R.ANSWERED] * len(group.episodes) and group.errors == [None] * len(group.episodes)
        assert all(len(ep.turns) == 2 and len(ep.tool_calls) == 1 for ep in group.episodes)
    assert taken[2].episodes[0].tool_calls[0].result == "slept 1.000 s"
    assert (figures.groups_submitted, figures.groups_completed, figures.episodes) == (3, 3, 4)
    assert (figures.turns, figures.tool_calls, figures.tool_timeouts) == (8, 4, 0)
    assert 0 < figures.engine_busy_s <= figures.seconds
    assert figures.wakeups >= 1


def test_completion_order_follows_real_completion(faulty_openai, tools) -> None:  # noqa: ANN001
    make = Maker(tools)
    engine = stub_engine(faulty_openai)

    async def main():  # noqa: ANN202
        # At most 4 requests at once: more new connections than the stub's listen backlog (5) can
        # lose a SYN, and its 1 s retransmit would race the slow tool.
        async with RolloutStream(engine, SchedulerConfig(max_seqs=4)) as stream:
            stream.submit(make(([TOOL, ANS], [1.5, 0]), QUICK))  # group 0 waits on its slow tool
            for _ in range(3):
                stream.submit(make(QUICK, ([CONT, ANS], [0, 0])))
            order = [g.group async for g in stream.completed()]
            return order, stream.decisions

    order, decisions = run(engine, main)
    assert sorted(order[:3]) == [1, 2, 3] and order[3] == 0  # the older group did not hold the later ones back
    assert order == [g for kind, _, g, _, _ in decisions if kind == DecisionKind.GROUP_COMPLETE]


def test_max_active_groups_limits_running_groups(faulty_openai, tools) -> None:  # noqa: ANN001
    make = Maker(tools)
    engine = stub_engine(faulty_openai)

    async def main():  # noqa: ANN202
        async with RolloutStream(engine, SchedulerConfig(max_seqs=16, max_active_groups=2)) as stream:
            for _ in range(4):
                stream.submit(make(QUICK, QUICK))
            await stream.drain()
            assert (stream.running, stream.outstanding) == (0, 4)  # all done, none taken yet
            results = [g async for g in stream.completed()]
            return results, stream.decisions

    results, decisions = run(engine, main)
    assert sorted(g.group for g in results) == [0, 1, 2, 3]
    assert all(g.reasons == [R.ANSWERED] * 2 for g in results)
    started: set[int] = set()
    active: set[int] = set()
    peak = 0
    for kind, _, group, _, _ in decisions:
        if kind == DecisionKind.ADMIT and group not in started:
            started.add(group)
            active.add(group)
        elif kind == DecisionKind.GROUP_COMPLETE:
            active.discard(group)
        peak = max(peak, len(active))
    assert peak == 2  # two run at once (max_seqs would allow all four), never three
    first_done = next(i for i, d in enumerate(decisions) if d[0] == DecisionKind.GROUP_COMPLETE)
    assert all(d[2] in (0, 1) for d in decisions[:first_done] if d[0] == DecisionKind.ADMIT)


def test_failing_episodes_leave_the_others_intact(faulty_openai, tools) -> None:  # noqa: ANN001
    faulty_openai.faults = ["503"]  # the first request fails for good (one attempt)
    make = Maker(tools)
    engine = OpenAIEngine(faulty_openai.url, "stub", retry=RetryPolicy(attempts=1, seed=0))

    async def main():  # noqa: ANN202
        async with RolloutStream(engine, SchedulerConfig(max_seqs=1, max_turns=4)) as stream:
            stream.submit(make(QUICK) + make(([TOOL, TOOL, ANS], [0.01, 0.01, 0]), fail_at_turn=1) + make(QUICK))
            stream.submit(make(([TOOL, TOOL, ANS], [0.01, 0.02, 0])))
            first = [g async for g in stream.completed()]
            stream.submit(make(QUICK))  # the stream goes on after the failures
            return first + [await stream.next_completed()]

    results = {g.group: g for g in run(engine, main)}
    group = results[0]
    assert group.reasons == [R.FAILED, R.FAILED, R.ANSWERED]
    assert "EngineError" in group.errors[0]  # max_seqs=1: episode 0's first turn met the 503
    assert group.errors[1] == "RuntimeError: episode 1: scripted failure at turn 1"
    assert group.errors[2] is None and group.episodes[2].tool_calls[0].result == "slept 0.010 s"
    assert len(group.episodes[1].turns) == 1  # its failing turn was not recorded; nothing ran after
    assert results[1].reasons == [R.ANSWERED] and len(results[1].episodes[0].turns) == 3
    assert results[2].reasons == [R.ANSWERED] and results[2].errors == [None]


def test_aclose_cancels_running_tools(faulty_openai, tools) -> None:  # noqa: ANN001
    make = Maker(tools)
    engine = stub_engine(faulty_openai)

    async def main():  # noqa: ANN202
        stream = RolloutStream(engine, SchedulerConfig(max_seqs=8))
        slow = make(([TOOL, ANS], [3.0, 0]))  # the tool would record its result after 3 s
        stream.submit(slow)
        stream.submit(make(QUICK))
        assert (await stream.next_completed()).group == 1
        assert stream.scheduler.state(0) == EpisodeState.IN_TOOL
        tool_calls = stream.figures().tool_calls
        left = await stream.aclose()
        assert asyncio.all_tasks() == {asyncio.current_task()}  # no turn, tool or loop task left behind
        errors = []
        for call in (lambda: stream.submit(make(QUICK)), stream.next_completed, stream.drain):
            with pytest.raises(RuntimeError, match="closed") as info:
                out = call()
                if asyncio.iscoroutine(out):
                    await out
            errors.append(str(info.value))
        return slow, tool_calls, left, await stream.aclose(), errors

    slow, tool_calls, left, again, errors = run(engine, main)
    assert tool_calls == 2
    assert [g.group for g in left] == [0] and left[0].reasons == [R.CANCELLED]
    assert slow[0].tool_calls == [] and len(slow[0].turns) == 1  # the tool was cut, not waited for
    assert again == []
    assert errors[0].startswith("submit(): this RolloutStream is closed")


def test_a_driver_loop_bug_reaches_the_caller(faulty_openai, tools, monkeypatch) -> None:  # noqa: ANN001
    make = Maker(tools)
    engine = stub_engine(faulty_openai)

    async def main():  # noqa: ANN202
        stream = RolloutStream(engine, SchedulerConfig())

        def broken(events):  # noqa: ANN001, ANN202 - stands in for a scheduler-core bug
            raise IndexError(f"core bug on {len(events)} events")

        monkeypatch.setattr(stream.scheduler, "replay", broken)
        stream.submit(make(QUICK))
        with pytest.raises(RuntimeError, match="driver loop failed .IndexError: core bug") as info:
            await stream.next_completed()
        with pytest.raises(RuntimeError, match="driver loop failed"):
            await stream.drain()
        await stream.aclose()  # still closes cleanly: the running turn is cancelled
        return info.value, stream

    error, stream = run(engine, main)
    assert isinstance(error.__cause__, IndexError)
    assert stream.running == 1  # the group never completed; nothing pretended it did


def test_submit_checks(faulty_openai, tools) -> None:  # noqa: ANN001
    engine = stub_engine(faulty_openai)
    stream = RolloutStream(engine, SchedulerConfig())
    with pytest.raises(RuntimeError, match="from a coroutine"):
        stream.submit(Maker(tools)(QUICK))
    with pytest.raises(ValueError, match="at least one episode"):
        stream.submit([])

    async def nothing_submitted() -> None:
        with pytest.raises(RuntimeError, match="submit\\(\\) a group first"):
            await stream.next_completed()
        assert [g async for g in stream.completed()] == []
        await engine.aclose()

    asyncio.run(nothing_submitted())


def _feed_one_by_one(sched: Scheduler, events: list) -> list:
    """The reference: each recorded event as its own scheduler call."""
    out: list = []
    for code, a, b, c, t in events:
        if code == EventCode.ADD_GROUP:
            out += sched.add_group(a, b, t, prepare=bool(c))[1]
        elif code == EventCode.TURN_FINISHED:
            out += sched.turn_finished(a, b, c, t)
        elif code == EventCode.TOOL_FINISHED:
            out += sched.tool_finished(a, b, t)
        elif code == EventCode.ADVANCE:
            out += sched.advance(t)
        elif code == EventCode.FAIL:
            out += sched.fail(a, t)
        else:
            raise AssertionError(f"the stream fed an unexpected event {code}")
    return out


@pytest.mark.parametrize("impl", ["python", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp_available(), reason="compiled core not built"))])
def test_one_scheduler_call_per_wakeup_decides_as_one_call_per_event(tiny_model_dir, tools, monkeypatch,
                                                                      impl) -> None:  # noqa: ANN001
    rng = random.Random(7)
    make = Maker(tools)
    groups = []
    for _ in range(3):
        scripts = []
        for _ in range(4):
            n = rng.randint(1, 4)
            actions = [rng.choice([TOOL, TOOL, CONT]) for _ in range(n - 1)] + [ANS]
            scripts.append((actions, [round(rng.uniform(0.0, 0.05), 3) if a == TOOL else 0 for a in actions]))
        groups.append(scripts)
    groups[1][2] = ([TOOL, ANS], [1.0, 0])  # cut by the 0.4 s tool time-out
    config = SchedulerConfig(max_seqs=6, max_turns=4, tool_timeout=0.4, max_active_groups=2)
    engine = TransformersEngine(tiny_model_dir, max_batch=8)
    batches: list[list] = []

    async def main():  # noqa: ANN202
        stream = RolloutStream(engine, config, impl=impl, record=True)
        replay = stream.scheduler.replay

        def counted(events):  # noqa: ANN001, ANN202
            batches.append(list(events))
            return replay(events)

        monkeypatch.setattr(stream.scheduler, "replay", counted)
        try:
            stream.submit(make(*groups[0]))
            stream.submit(make(*groups[1]))
            first = await stream.next_completed()
            stream.submit(make(*groups[2][:2]) + make(*groups[2][2:], fail_at_turn=0))  # mid-run, two fail
            rest = [g async for g in stream.completed()]
            return stream, [first] + rest
        finally:
            await stream.aclose()
            await engine.aclose()

    stream, results = asyncio.run(main())
    assert sorted(g.group for g in results) == [0, 1, 2]
    assert stream.group_result(1).reasons[2] == R.ANSWERED and stream.figures().tool_timeouts == 1
    assert stream.group_result(2).reasons[2:] == [R.FAILED, R.FAILED]
    # One scheduler call per wake-up, some of them carrying several completions (a batched generate).
    assert len(batches) == stream.figures().wakeups
    assert all(b[-1][0] == EventCode.ADVANCE and all(e[0] != EventCode.ADVANCE for e in b[:-1]) for b in batches)
    assert max(len(b) - 1 for b in batches) >= 2
    # The same recorded events, one call each, decide exactly what the batched calls decided.
    reference = _feed_one_by_one(Scheduler(config, impl=impl), stream.scheduler.events)
    assert reference == stream.decisions
    assert sum(1 for d in reference if d[0] == DecisionKind.GROUP_COMPLETE) == 3


class _Stubborn(ScriptedEpisode):
    """An episode whose own background work ignores cancellation (a misbehaving engine or tool)."""

    def close(self, reason: FinishReason) -> asyncio.Task:
        async def never_ends() -> None:  # as if it swallowed the cancellation close() sent it
            await asyncio.Event().wait()

        self.stubborn = asyncio.get_running_loop().create_task(never_ends())
        return self.stubborn


def test_aclose_does_not_wait_forever_for_a_task_that_ignores_cancellation(faulty_openai, tools) -> None:  # noqa: ANN001
    registry, context = tools
    engine = stub_engine(faulty_openai)

    async def main():  # noqa: ANN202
        stream = RolloutStream(engine, SchedulerConfig(), close_timeout_s=0.3)
        episode = _Stubborn(index=0, actions=[TOOL, ANS], tool_seconds=[5.0, 0], registry=registry, context=context)
        stream.submit([episode])
        while stream.scheduler.state(0) != EpisodeState.IN_TOOL:
            await asyncio.sleep(0.01)
        with pytest.warns(RuntimeWarning, match=r"1 cut task\(s\) still running after 0.3 s"):
            left = await asyncio.wait_for(stream.aclose(), timeout=10)
        stuck = not episode.stubborn.done()
        episode.stubborn.cancel()
        return left, stuck, episode

    left, stuck, episode = run(engine, main)
    assert stuck and left[0].reasons == [R.CANCELLED]
    with pytest.raises(ValueError, match="close_timeout_s"):
        RolloutStream(engine, SchedulerConfig(), close_timeout_s=0)
