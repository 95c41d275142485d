"""The scheduler state machine: its rules, and the C++ core and Python fallback deciding identically."""

from __future__ import annotations

import math
import random

import pytest

from sage_fast.rollout import DecisionKind, EpisodeState, FinishReason, Scheduler, SchedulerConfig, TurnAction
from sage_fast.rollout.scheduler import cpp_available
from sage_fast.rollout.sim import EngineModel, WorkloadConfig, make_workload, simulate_async

A, S, T, F, G, P = (int(k) for k in DecisionKind)
IMPLS = [pytest.param("cpp", marks=pytest.mark.skipif(not cpp_available(), reason="compiled core not built")),
         "python"]


def kinds(decisions: list) -> list[tuple[int, int]]:
    return [(d[0], d[1]) for d in decisions]


@pytest.mark.parametrize("impl", IMPLS)
def test_admission_respects_sequences_and_tokens(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=3, max_tokens=100), impl=impl)
    _, d = s.add_group(5, 40, 0.0)
    assert kinds(d) == [(A, 0), (A, 1)]  # a third 40-token turn would exceed 100 tokens
    assert s.stats()["tokens_in_flight"] == 80
    d = s.turn_finished(0, TurnAction.TOOL, 10, 1.0)
    assert kinds(d) == [(S, 0), (A, 2)]
    assert s.state(0) == EpisodeState.IN_TOOL
    d = s.tool_finished(0, 10, 2.0)  # 10 more tokens fit, but three sequences are in flight
    assert d == [] and s.state(0) == EpisodeState.READY


@pytest.mark.parametrize("impl", IMPLS)
def test_oversized_turn_goes_alone_and_order_is_kept(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=4, max_tokens=50), impl=impl)
    _, d = s.add_group(1, 10, 0.0)
    _, d2 = s.add_group(1, 500, 0.0)  # bigger than the whole budget: waits for an empty engine
    _, d3 = s.add_group(1, 10, 0.0)   # head-of-line: waits behind it
    assert kinds(d) == [(A, 0)] and d2 == [] and d3 == []
    d = s.turn_finished(0, TurnAction.ANSWER, 0, 1.0)
    assert kinds(d) == [(F, 0), (G, -1), (A, 1)]
    assert s.stats()["tokens_in_flight"] == 500


@pytest.mark.parametrize("impl", IMPLS)
def test_turn_cap_and_group_completion(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=8, max_turns=2), impl=impl)
    _, d = s.add_group(2, 5, 0.0)
    s.turn_finished(0, TurnAction.CONTINUE, 5, 1.0)  # no tool, no answer: straight back in
    d = s.turn_finished(0, TurnAction.TOOL, 5, 2.0)  # second turn: the cap ends it, no tool starts
    assert d == [(F, 0, 0, int(FinishReason.TURN_CAP), 2.0)]
    d = s.turn_finished(1, TurnAction.ANSWER, 0, 3.0)
    assert d == [(F, 1, 0, int(FinishReason.ANSWERED), 3.0), (G, -1, 0, 0, 3.0)]
    assert s.stats()["groups_done"] == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_tool_timeout_continues_episode_and_late_result_is_ignored(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=1, tool_timeout=5.0), impl=impl)
    s.add_group(2, 5, 0.0)
    s.turn_finished(0, TurnAction.TOOL, 5, 1.0)  # episode 1 takes the free slot
    assert s.next_deadline() == 6.0
    assert s.advance(5.9) == []
    d = s.advance(6.5)
    assert d == [(T, 0, 0, 0, 6.0)]  # fired at its deadline, not at the call
    assert s.state(0) == EpisodeState.READY and s.next_deadline() == math.inf
    assert s.tool_finished(0, 5, 7.0) == []  # the cut tool's late result is stale
    assert s.stats()["tool_timeouts"] == 1
    d = s.turn_finished(1, TurnAction.ANSWER, 0, 8.0)
    assert kinds(d) == [(F, 1), (A, 0)]
    assert s.turns(0) == 2


@pytest.mark.parametrize("impl", IMPLS)
def test_episode_timeout_cancel_and_fail(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=4, episode_timeout=10.0), impl=impl)
    s.add_group(3, 5, 0.0)
    s.turn_finished(0, TurnAction.TOOL, 5, 1.0)
    assert s.fail(1, 2.0) == [(F, 1, 0, int(FinishReason.FAILED), 2.0)]
    assert s.fail(1, 2.5) == []  # already over
    assert s.cancel(2, 3.0) == [(F, 2, 0, int(FinishReason.CANCELLED), 3.0)]
    d = s.advance(20.0)
    assert d == [(F, 0, 0, int(FinishReason.TIMEOUT), 10.0), (G, -1, 0, 0, 10.0)]
    assert s.stats()["seqs_in_flight"] == 0 and s.stats()["tokens_in_flight"] == 0
    assert s.turn_finished(0, TurnAction.TOOL, 5, 21.0) == []  # stale


@pytest.mark.parametrize("impl", IMPLS)
def test_active_group_limit_and_cancel_pending_group(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=8, max_active_groups=1), impl=impl)
    _, d0 = s.add_group(2, 5, 0.0)
    _, d1 = s.add_group(2, 5, 0.0)
    _, d2 = s.add_group(2, 5, 0.0)
    assert kinds(d0) == [(A, 0), (A, 1)] and d1 == [] and d2 == []
    d = s.cancel_group(1, 1.0)  # still waiting: its episodes end without a turn
    assert kinds(d) == [(F, 2), (F, 3), (G, -1)]
    s.turn_finished(0, TurnAction.ANSWER, 0, 2.0)
    d = s.turn_finished(1, TurnAction.ANSWER, 0, 3.0)
    assert kinds(d) == [(F, 1), (G, -1), (A, 4), (A, 5)]  # group 2 starts, group 1 is skipped


@pytest.mark.parametrize("impl", IMPLS)
def test_prepare_groups_and_external_finish(impl: str) -> None:
    s = Scheduler(SchedulerConfig(max_seqs=4, tool_timeout=1.0), impl=impl)
    _, d = s.add_group(2, 5, 0.0, prepare=True)
    assert d == [(P, 0, 0, 0, 0.0), (P, 1, 0, 0, 0.0)]  # set up first; no slot is held meanwhile
    assert s.stats()["seqs_in_flight"] == 0 and s.next_deadline() == math.inf  # no time-out on set-up
    assert kinds(s.tool_finished(1, 5, 2.0)) == [(A, 1)]  # episode 1 is ready first, goes first
    assert s.finish(1, FinishReason.ANSWERED, 3.0) == [(F, 1, 0, int(FinishReason.ANSWERED), 3.0)]
    assert s.finish(1, FinishReason.TURN_CAP, 3.5) == []  # over already
    assert s.finish(0, FinishReason.TURN_CAP, 4.0) == [(F, 0, 0, int(FinishReason.TURN_CAP), 4.0),
                                                       (G, -1, 0, 0, 4.0)]
    assert s.stats()["seqs_in_flight"] == 0 and s.stats()["tokens_in_flight"] == 0
    with pytest.raises(ValueError, match="reason"):
        s.finish(0, 9, 5.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_names_the_argument(impl: str) -> None:
    with pytest.raises(ValueError, match="max_seqs"):
        SchedulerConfig(max_seqs=0)
    s = Scheduler(SchedulerConfig(), impl=impl)
    s.add_group(1, 5, 1.0)
    with pytest.raises(ValueError, match="backwards"):
        s.advance(0.5)
    with pytest.raises(ValueError, match="action"):
        s.turn_finished(0, 7, 5, 2.0)
    with pytest.raises(IndexError, match="unknown episode 9"):
        s.tool_finished(9, 5, 2.0)
    with pytest.raises(ValueError, match="size"):
        s.add_group(0, 5, 2.0)


def fuzz_events(seed: int, config: SchedulerConfig, n: int = 3000) -> list[tuple[int, int, int, int, float]]:
    """Random event traces: mostly events that fit an episode's state (a Python scheduler tells
    which), plus stale and out-of-state ones that both implementations must ignore alike."""
    rng = random.Random(seed)
    guide = Scheduler(config, impl="python")
    events: list[tuple[int, int, int, int, float]] = []
    now, groups = 0.0, 0
    for _ in range(n):
        now += rng.choice([0.0, rng.random(), rng.random() * 20])
        episodes = guide.stats()["episodes"]
        by_state: dict[int, list[int]] = {}
        for e in range(episodes):
            by_state.setdefault(guide.state(e), []).append(e)
        r = rng.random()
        if r < 0.06 or episodes == 0 or len(by_state.get(EpisodeState.DONE, [])) == episodes:
            event = (0, rng.randint(1, 8), rng.randint(0, 300), int(rng.random() < 0.3), now)
            groups += 1
        elif r < 0.5:
            pool = by_state.get(EpisodeState.GENERATING) if rng.random() < 0.9 else None
            e = rng.choice(pool) if pool else rng.randrange(episodes)
            event = (1, e, rng.choice([0, 1, 1, 1, 2]), rng.randint(0, 300), now)
        elif r < 0.85:
            pool = by_state.get(EpisodeState.IN_TOOL) if rng.random() < 0.9 else None
            e = rng.choice(pool) if pool else rng.randrange(episodes)
            event = (2, e, rng.randint(0, 300), 0, now)
        elif r < 0.93:
            event = (3, 0, 0, 0, now)
        elif r < 0.98:
            event = (rng.choice([4, 5, 7]), rng.randrange(episodes), rng.randrange(5), 0, now)
        else:
            event = (6, rng.randrange(groups), 0, 0, now)
        guide.replay([event])
        events.append(event)
    return events


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_traces_decide_identically(seed: int) -> None:
    config = SchedulerConfig(max_seqs=1 + seed * 3, max_tokens=200 + 150 * seed, max_turns=2 + 2 * seed,
                             tool_timeout=[0.0, 3.0][seed % 2], episode_timeout=[0.0, 40.0, 15.0][seed % 3],
                             max_active_groups=seed % 3, group_priority=seed % 2 == 0)
    events = fuzz_events(seed, config)
    cpp, py = Scheduler(config, impl="cpp"), Scheduler(config, impl="python")
    cpp_log, py_log = cpp.replay(events), py.replay(events)
    assert len(cpp_log) > 500
    expected = {A, S, F, G, P} | ({T} if config.tool_timeout > 0 else set())
    assert {d[0] for d in cpp_log} == expected  # every kind of decision was exercised
    assert cpp_log == py_log
    assert cpp.stats() == py.stats()
    assert [cpp.state(e) for e in range(cpp.stats()["episodes"])] == \
        [py.state(e) for e in range(py.stats()["episodes"])]


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
@pytest.mark.parametrize("group_priority", [True, False])
def test_seeded_rollout_decides_identically(group_priority: bool) -> None:
    """The same seeded workload driven live through each implementation: every decision equal,
    and a replay of the recorded events through the other implementation equal too."""
    workload = WorkloadConfig(groups=6, group_size=4, tool_p99_s=40.0)
    scripts = make_workload(workload, seed=3)
    config = SchedulerConfig(max_seqs=6, max_tokens=60_000, tool_timeout=15.0, episode_timeout=60.0,
                             max_active_groups=4, group_priority=group_priority)
    runs = {impl: simulate_async(scripts, workload.group_size, EngineModel(), config, impl=impl, record=True)
            for impl in ("cpp", "python")}
    (cpp_result, cpp_sched), (py_result, py_sched) = runs["cpp"], runs["python"]
    assert cpp_result.decision_log == py_result.decision_log
    assert cpp_result.makespan_s == py_result.makespan_s
    assert cpp_result.tool_timeouts > 0
    reasons = {d[3] for d in cpp_result.decision_log if d[0] == F}
    assert {int(FinishReason.ANSWERED), int(FinishReason.TIMEOUT)} <= reasons
    assert Scheduler(config, impl="python").replay(cpp_sched.events) == cpp_result.decision_log
    assert Scheduler(config, impl="cpp").replay(py_sched.events) == py_result.decision_log


def test_simulated_async_beats_lockstep_on_the_same_work() -> None:
    """Sanity of the simulation used by the benchmark: same turns, same tool calls, less time."""
    from sage_fast.rollout.sim import simulate_lockstep

    workload = WorkloadConfig(groups=4, group_size=4)
    scripts = make_workload(workload, seed=1)
    config = SchedulerConfig(max_seqs=16, tool_timeout=120.0)
    result, _ = simulate_async(scripts, workload.group_size, EngineModel(), config)
    lock = simulate_lockstep(scripts, EngineModel(), config)
    assert result.turns == lock.turns and result.tool_calls == lock.tool_calls
    assert result.makespan_s < lock.makespan_s
    assert result.engine_busy_s > 0 and lock.engine_busy < result.engine_busy


@pytest.mark.parametrize("impl", IMPLS)
def test_replay_arrays_matches_replay(impl: str) -> None:
    import numpy as np

    config = SchedulerConfig(max_seqs=5, max_tokens=800, max_turns=4, tool_timeout=3.0, episode_timeout=30.0)
    events = fuzz_events(11, config, n=600)
    expected = Scheduler(config, impl="python").replay(events)
    out = Scheduler(config, impl=impl).replay_arrays(np.asarray(events, dtype=np.float64))
    got = list(zip(*(out[k].tolist() for k in ("kind", "episode", "group", "aux", "time")), strict=True))
    assert got == expected and len(got) > 100
    with pytest.raises(ValueError, match="same length"):
        Scheduler(config, impl=impl).replay_arrays({"code": np.zeros(2, np.int32), "a": np.zeros(1, np.int64),
                                                    "b": np.zeros(2, np.int64), "c": np.zeros(2, np.int64),
                                                    "time": np.zeros(2)})


def test_fallback_is_chosen_without_the_compiled_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    from sage_fast.rollout import scheduler as facade

    monkeypatch.setattr(facade, "cpp_available", lambda: False)
    assert facade.resolve_impl("auto") == "python"
    assert Scheduler(SchedulerConfig()).impl == "python"
    with pytest.raises(ImportError, match="without the rollout scheduler|failed to load"):
        facade.resolve_impl("cpp")
    monkeypatch.undo()
    monkeypatch.setenv("SAGE_FAST_SCHEDULER", "python")
    assert Scheduler(SchedulerConfig()).impl == "python"
    with pytest.raises(ValueError, match="impl must be"):
        facade.resolve_impl("rust")  # type: ignore[arg-type]


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
@pytest.mark.parametrize("seed", range(3))
def test_fast_calls_decide_like_the_pybind_methods(seed: int) -> None:
    """The METH_FASTCALL per-event calls (what the facade uses when not recording) against the
    core's pybind11 methods, one call per event on fuzzed traces: same decisions, same deadlines."""
    from sage_fast import _ext

    config = SchedulerConfig(max_seqs=2 + seed, max_tokens=400, max_turns=3 + seed, tool_timeout=3.0,
                             episode_timeout=[0.0, 30.0, 12.0][seed])
    events = fuzz_events(100 + seed, config, n=1500)
    fast = Scheduler(config, impl="cpp")
    assert type(fast.turn_finished).__name__ == "builtin_function_or_method"  # not a pybind11 method
    args = (config.max_seqs, config.max_tokens, config.max_turns, config.tool_timeout, config.episode_timeout,
            config.max_active_groups, config.group_priority)
    plain = _ext.load().RolloutScheduler(*args)
    for code, a, b, c, t in events:
        if code == 1:
            got, want = fast.turn_finished(a, b, c, t), plain.turn_finished(a, b, c, t)
        elif code == 2:
            got, want = fast.tool_finished(a, b, t), plain.tool_finished(a, b, t)
        elif code == 3:
            got, want = fast.advance(t), plain.advance(t)
        elif code == 4:
            got, want = fast.fail(a, t), plain.fail(a, t)
        else:  # the rarer events go through the ordinary methods on both
            got, want = fast.replay([(code, a, b, c, t)]), plain.replay([(code, a, b, c, t)])
        assert got == want
        assert fast.next_deadline() == plain.next_deadline()
    assert fast.stats() == plain.stats() and fast.stats()["decisions"] > 300


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
def test_fast_calls_check_their_arguments_and_keep_the_core_alive() -> None:
    import gc

    s = Scheduler(SchedulerConfig(max_seqs=2, tool_timeout=5.0), impl="cpp")
    s.add_group(2, 5, 0.0)
    turn_finished, next_deadline = s.turn_finished, s.next_deadline
    with pytest.raises(TypeError, match=r"takes 4 arguments, got 3"):
        turn_finished(0, 1, 5)
    with pytest.raises(TypeError, match="action must be an int"):
        turn_finished(0, 1.0, 5, 1.0)
    with pytest.raises(OverflowError, match="action"):
        turn_finished(0, 2**40, 5, 1.0)
    with pytest.raises(IndexError, match="unknown episode 7"):
        turn_finished(7, 1, 5, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        s.advance(math.nan)
    with pytest.raises(TypeError):
        s.tool_finished("0", 5, 1.0)
    assert turn_finished(0, TurnAction.TOOL, 5, 1.0) == [(S, 0, 0, 0, 1.0)]  # IntEnum members pass
    del s
    gc.collect()
    assert next_deadline() == 6.0  # the functions hold the core


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
def test_replay_names_a_bad_event_row() -> None:
    s = Scheduler(SchedulerConfig(), impl="cpp")
    with pytest.raises(ValueError, match=r"events\[1\] must be a \(code, a, b, c, time\) tuple"):
        s.replay([(0, 1, 5, 0, 0.0), [2, 0, 5, 0, 1.0]])
    with pytest.raises(TypeError, match="a must be an int"):
        s.replay([(0, 1.5, 5, 0, 0.0)])
    with pytest.raises(TypeError, match="sequence"):
        s.replay(7)
