"""Rollout scheduler benchmark (issue 6): asynchronous scheduling against lock-step rollouts.

Part 1 (SIMULATION, virtual clock): the issue's workload, 128 episodes (16 prompts x GRPO groups
of 8) of up to 11 turns, scripted from a seed; tool latency log-normal, median 2 s, p99 60 s,
cut at 120 s. Generation cost is NOT measured on an engine: it comes from a model of a
continuous-batching engine (sage_fast.rollout.sim.EngineModel; defaults model an 8B Qwen-VL on one
H100 under vLLM):
    iteration = 15 ms + 0.3 ms x decoding sequences + prefill chunk / 12 000 tokens/s,
    chunked prefill 8192 tokens per iteration, admission at iteration boundaries;
    run twice: without prefix caching, and with it (vLLM V1's and SGLang's default): a GRPO
    group's 8 Stage-1 prompts are the same text and frames, so the 7 after the first reuse its
    KV; every Stage-2 prompt starts with the same 1 000-token system prompt and tool schemas;
    prompts: Stage-1 11 000 tokens (128 frames), Stage-2 1 500 + 300 per kept tool result;
    outputs log-normal, median 250 tokens (sigma 0.5, 16..1024);
    engine limits for both schedules: 64 sequences, 400 000 reserved tokens (prompt + 1024).
Both schedules run exactly the same scripted turns and tool latencies. Reported: episodes/s and
engine-busy fraction (time with at least one sequence in the engine / makespan), over 5 seeds;
also a stream of 4 steps (512 episodes, at most 16 groups active) where the next step's groups
start while the previous step's tail finishes.

Part 2 (overhead): the scheduler's own cost per decision at 10 000 episodes, C++ core against the
Python fallback: (a) one Python call per event, as a driver makes them (the recorded trace of the
simulated run fed event by event through the facade, plus one next_deadline() per event), net of
the same loop over a scheduler that decides nothing; (b) the trace replayed in one call (pure
decision cost).

Part 3 (REAL, small): a tiny random-weight Qwen2.5-VL (transformers, CPU, batched generate) with
tools that sleep, through the real tool registry; scheduler against lock-step on the same engine.

    python -m pytest bench/bench_scheduler.py --benchmark-only -s
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import pytest

from sage_fast.rollout import Scheduler, SchedulerConfig
from sage_fast.rollout.scheduler import cpp_available
from sage_fast.rollout.sim import (
    EngineModel,
    WorkloadConfig,
    make_workload,
    simulate_async,
    simulate_lockstep,
)

SEEDS = range(5)
ENGINE = EngineModel()
LIMITS = dict(max_seqs=64, max_tokens=400_000, max_turns=11, tool_timeout=120.0)


ENGINES = {"no-prefix-cache": ENGINE, "prefix-cache": EngineModel(prefix_caching=True)}


def _one_batch(seed: int, group_priority: bool, engine: EngineModel) -> tuple:
    workload = WorkloadConfig()
    scripts = make_workload(workload, seed)
    config = SchedulerConfig(**LIMITS, group_priority=group_priority)
    result, _ = simulate_async(scripts, workload.group_size, engine, config)
    return result, simulate_lockstep(scripts, engine, config)


def _stream(seed: int, engine: EngineModel, steps: int = 4) -> tuple:
    workload = WorkloadConfig(groups=16 * steps)
    scripts = make_workload(workload, seed)
    config = SchedulerConfig(**LIMITS, max_active_groups=16)
    result, _ = simulate_async(scripts, workload.group_size, engine, config)
    lock = [simulate_lockstep(scripts[i * 128:(i + 1) * 128], engine, config) for i in range(steps)]
    return result, sum(r.makespan_s for r in lock), sum(r.engine_busy_s for r in lock)


@pytest.mark.parametrize("engine_name", list(ENGINES))
@pytest.mark.parametrize("group_priority", [True, False], ids=["group-priority", "fifo"])
def test_simulated_one_batch(benchmark, say: Callable[[str], None], group_priority: bool,  # noqa: ANN001
                             engine_name: str) -> None:
    engine = ENGINES[engine_name]
    runs = benchmark.pedantic(lambda: [_one_batch(s, group_priority, engine) for s in SEEDS], rounds=1, iterations=1)
    rows = []
    for seed, (a, lock) in zip(SEEDS, runs, strict=True):
        assert a.turns == lock.turns and a.tool_calls == lock.tool_calls  # same work
        rows.append((seed, a.episodes_per_s, lock.episodes_per_s, a.episodes_per_s / lock.episodes_per_s,
                     a.engine_busy, lock.engine_busy, a.makespan_s, lock.makespan_s))
    say(f"\nsimulated, {engine_name}, 128 episodes, {'group priority' if group_priority else 'fifo'} "
        "(seed, eps/s async, eps/s lock-step, speed-up, busy async, busy lock-step, makespans)")
    for r in rows:
        say("  {}  {:.4f}  {:.4f}  {:.2f}x  {:.3f}  {:.3f}  {:.0f} s  {:.0f} s".format(*r))
    speedups, busy = [r[3] for r in rows], [r[4] for r in rows]
    say(f"  mean speed-up {statistics.mean(speedups):.2f}x (min {min(speedups):.2f}), "
        f"mean busy {statistics.mean(busy):.3f} (min {min(busy):.3f})")
    benchmark.extra_info.update(speedup_mean=statistics.mean(speedups), speedup_min=min(speedups),
                                busy_mean=statistics.mean(busy), busy_min=min(busy), rows=rows)


@pytest.mark.parametrize("engine_name", list(ENGINES))
def test_simulated_stream(benchmark, say: Callable[[str], None], engine_name: str) -> None:  # noqa: ANN001
    runs = benchmark.pedantic(lambda: [_stream(s, ENGINES[engine_name]) for s in SEEDS], rounds=1, iterations=1)
    say(f"\nsimulated stream, {engine_name}, 4 steps x 128 episodes, <= 16 groups active (seed, eps/s async, eps/s "
        "lock-step, speed-up, busy async, busy lock-step)")
    speedups, busy = [], []
    for seed, (a, lock_s, lock_busy) in zip(SEEDS, runs, strict=True):
        lock_eps = a.episodes / lock_s
        speedups.append(a.episodes_per_s / lock_eps)
        busy.append(a.engine_busy)
        say(f"  {seed}  {a.episodes_per_s:.4f}  {lock_eps:.4f}  {speedups[-1]:.2f}x  {a.engine_busy:.3f}  "
            f"{lock_busy / lock_s:.3f}")
    say(f"  mean speed-up {statistics.mean(speedups):.2f}x (min {min(speedups):.2f}), "
        f"mean busy {statistics.mean(busy):.3f} (min {min(busy):.3f})")
    benchmark.extra_info.update(speedup_mean=statistics.mean(speedups), busy_mean=statistics.mean(busy))


_TRACE: dict[str, list] = {}


def _trace_10k() -> tuple[SchedulerConfig, list]:
    """The event trace of a simulated 10 000-episode rollout (1250 groups of 8), recorded once."""
    workload = WorkloadConfig(groups=1250)
    config = SchedulerConfig(**LIMITS, episode_timeout=1800.0)
    if "events" not in _TRACE:
        scripts = make_workload(workload, seed=0)
        result, sched = simulate_async(scripts, workload.group_size, ENGINE, config, impl="python", record=True)
        _TRACE.update(events=sched.events, log=result.decision_log)
    return config, _TRACE["events"]


class _NoScheduler:
    """Answers every per-event call at once and decides nothing: the loop's own cost, subtracted."""

    def __init__(self) -> None:
        self.turn_finished = lambda e, action, cost, now: ()
        self.tool_finished = lambda e, cost, now: ()
        self.advance = lambda now: ()
        self.next_deadline = lambda: math.inf
        self.add_group = lambda size, cost, now, prepare=False: (0, ())


def _per_event_calls(sched, events: list) -> int:  # noqa: ANN001
    """Feeds ``events`` one Python call each, as a driver does, and asks for the next time-out
    after each (the driver's wait needs it); returns the decisions taken."""
    turn_finished, tool_finished, advance, next_deadline = (sched.turn_finished, sched.tool_finished,
                                                            sched.advance, sched.next_deadline)
    add_group = sched.add_group
    decided = 0
    for code, a, b, c, t in events:
        if code == 1:
            decided += len(turn_finished(a, b, c, t))
        elif code == 2:
            decided += len(tool_finished(a, b, t))
        elif code == 3:
            decided += len(advance(t))
        else:
            decided += len(add_group(a, b, t, prepare=bool(c))[1])
        next_deadline()
    return decided


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
def test_overhead_per_event_call_10k(benchmark, say: Callable[[str], None]) -> None:  # noqa: ANN001
    """One Python call per event (the facade's per-event path: METH_FASTCALL functions for the
    C++ core, the fallback's methods), over the recorded 10k-episode trace; best of 7 interleaved
    rounds, net of the same loop over a scheduler that decides nothing."""
    import time

    config, events = _trace_10k()
    assert {e[0] for e in events} <= {0, 1, 2, 3}  # what _per_event_calls dispatches
    n_decisions = len(_TRACE["log"])
    ways = {"cpp": lambda: Scheduler(config, impl="cpp"), "python": lambda: Scheduler(config, impl="python"),
            "none": _NoScheduler}
    assert _per_event_calls(ways["cpp"](), events) == n_decisions == _per_event_calls(ways["python"](), events)
    best = {way: math.inf for way in ways}
    for _ in range(7):
        for way, make in ways.items():
            sched = make()
            t0 = time.perf_counter()
            _per_event_calls(sched, events)
            best[way] = min(best[way], time.perf_counter() - t0)
    benchmark.pedantic(lambda: _per_event_calls(ways["cpp"](), events), rounds=3, iterations=1)
    raw = {way: 1e6 * best[way] / n_decisions for way in ("cpp", "python")}
    net = {way: 1e6 * (best[way] - best["none"]) / n_decisions for way in ("cpp", "python")}
    say(f"\none call per event, 10k episodes, {len(events)} events (+ as many next_deadline calls), "
        f"{n_decisions} decisions, best of 7 (us per decision):")
    say(f"  loop alone (no scheduler) {1e6 * best['none'] / n_decisions:.3f}")
    for way in ("cpp", "python"):
        say(f"  {way:7s} raw {raw[way]:.3f}  net of the loop {net[way]:.3f}")
    say(f"  C++ vs Python: {raw['python'] / raw['cpp']:.1f}x lower raw, {net['python'] / net['cpp']:.1f}x net")
    benchmark.extra_info.update(raw_us=raw, net_us=net, ratio_raw=raw["python"] / raw["cpp"],
                                ratio_net=net["python"] / net["cpp"], decisions=n_decisions, events=len(events))


@pytest.mark.skipif(not cpp_available(), reason="compiled core not built")
def test_overhead_core_10k(benchmark, say: Callable[[str], None]) -> None:  # noqa: ANN001
    """Pure decision cost: the recorded 10k-episode trace replayed through each core in one call,
    as a list of tuples and as column arrays; best of 7 each, interleaved (the machine is shared)."""
    import time

    import numpy as np

    config, events = _trace_10k()
    cols = list(zip(*events, strict=True))
    columns = {"code": np.asarray(cols[0], np.int32), "a": np.asarray(cols[1], np.int64),
               "b": np.asarray(cols[2], np.int64), "c": np.asarray(cols[3], np.int64),
               "time": np.asarray(cols[4], np.float64)}
    ways = {("cpp", "tuples"): lambda: Scheduler(config, impl="cpp").replay(events),
            ("python", "tuples"): lambda: Scheduler(config, impl="python").replay(events),
            ("cpp", "arrays"): lambda: Scheduler(config, impl="cpp").replay_arrays(columns),
            ("python", "arrays"): lambda: Scheduler(config, impl="python").replay_arrays(columns)}
    expected = _TRACE["log"]
    assert ways["cpp", "tuples"]() == expected and ways["python", "tuples"]() == expected
    for way in (("cpp", "arrays"), ("python", "arrays")):
        out = ways[way]()
        assert list(zip(*(out[k].tolist() for k in ("kind", "episode", "group", "aux", "time")), strict=True)) == expected
    best = {way: float("inf") for way in ways}
    for _ in range(7):
        for way, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            best[way] = min(best[way], time.perf_counter() - t0)
    per = {way: 1e6 * t / len(expected) for way, t in best.items()}
    benchmark.pedantic(ways["cpp", "arrays"], rounds=3, iterations=1)
    say(f"\ncore replay, 10k episodes, {len(events)} events, {len(expected)} decisions (us per decision, best of 7):")
    for way, us in per.items():
        say(f"  {way[0]:7s} {way[1]:7s} {us:.3f}")
    ratio = min(per["python", "tuples"], per["python", "arrays"]) / min(per["cpp", "tuples"], per["cpp", "arrays"])
    say(f"  best C++ vs best Python: {ratio:.1f}x lower")
    benchmark.extra_info.update({f"{a}_{b}_us": us for (a, b), us in per.items()}, ratio_best=ratio,
                                decisions=len(expected), events=len(events))


def _real_groups(tmp_path, scripts, group_size: int, max_tokens: int):  # noqa: ANN001, ANN202
    from sage_fast.models.base import SamplingConfig
    from sage_fast.rollout.episodes import ScriptedEpisode, scripted_context, sleep_tool
    from sage_fast.tools.registry import Tool, ToolRegistry

    registry = ToolRegistry([Tool(sleep_tool, timeout_s=600.0)], max_workers=len(scripts))
    context = scripted_context(tmp_path)
    sampling = SamplingConfig(max_tokens=max_tokens)
    eps = [ScriptedEpisode(index=i, actions=s.action, tool_seconds=s.tool_s, registry=registry, context=context,
                           sampling=sampling) for i, s in enumerate(scripts)]
    return [eps[i:i + group_size] for i in range(0, len(eps), group_size)], registry


@pytest.mark.parametrize("engine_kind", ["static", "continuous"])
@pytest.mark.parametrize(("tool_median_s", "tool_p99_s"), [(0.1, 3.0), (1.0, 10.0)], ids=["fast-tools", "slow-tools"])
def test_real_tiny_cpu(benchmark, say: Callable[[str], None], tmp_path, tool_median_s: float,  # noqa: ANN001
                       tool_p99_s: float, engine_kind: str) -> None:
    """REAL run, small: tiny random-weight Qwen2.5-VL on CPU (batched transformers generate, up to 32
    new tokens a turn; ``static``: padded batches of the requests waiting, ``continuous``:
    transformers' continuous batching), tools that sleep through the real ToolRegistry; 32 episodes (4 groups of 8),
    tool latency log-normal (median, p99) as parametrized, cut at 2 x p99; same scripted decisions
    for both schedules."""
    import asyncio

    from sage_fast.models.base import SamplingConfig
    from sage_fast.models.tiny import build_tiny_model
    from sage_fast.rollout.driver import run_rollout
    from sage_fast.rollout.engines import ContinuousTransformersEngine, TransformersEngine
    from sage_fast.rollout.lockstep import run_lockstep

    model = build_tiny_model(tmp_path / "tiny", "qwen2_5_vl", seed=0)
    engine = (TransformersEngine(model, max_batch=16) if engine_kind == "static"
              else ContinuousTransformersEngine(model, sampling=SamplingConfig(max_tokens=32)))
    workload = WorkloadConfig(groups=4, group_size=8, tool_median_s=tool_median_s, tool_p99_s=tool_p99_s)
    scripts = make_workload(workload, seed=0)
    config = SchedulerConfig(max_seqs=16, max_tokens=1_000_000, max_turns=11, tool_timeout=2 * tool_p99_s)

    async def both():  # noqa: ANN202
        from sage_fast.rollout.engines import GenerationRequest

        warm = GenerationRequest(messages=[{"role": "user", "content": "warm-up"}], sampling=SamplingConfig(max_tokens=32))
        await asyncio.gather(*(engine.generate(warm) for _ in range(16)))  # neither schedule pays first-call costs
        rounds = []
        # Transformers on CPU pays a large first-time cost per new batch shape (the continuous engine
        # burned 59 s of CPU in a cold round, 2.5 s once warm): rounds 0-1 warm both schedules, the
        # last round is reported, and every round is printed.
        for _ in range(3):
            groups, registry = _real_groups(tmp_path, scripts, 8, 32)
            b = await run_lockstep(groups, engine, config)
            registry.close()
            groups, registry = _real_groups(tmp_path, scripts, 8, 32)
            a = await run_rollout(groups, engine, config)
            registry.close()
            rounds.append((a, b))
        await engine.aclose()
        return rounds

    rounds = benchmark.pedantic(lambda: asyncio.run(both()), rounds=1, iterations=1)
    for k, (a, b) in enumerate(rounds):
        assert a.reasons == b.reasons and a.turns == b.turns and a.tool_calls == b.tool_calls
        say(f"\nREAL tiny CPU round {k}, {engine_kind} engine, tools median {tool_median_s} s p99 {tool_p99_s} s, "
            f"32 episodes, {a.turns} turns, {a.tool_calls} tool calls ({a.tool_timeouts} cut): async "
            f"{a.episodes_per_s:.3f} eps/s (busy {a.engine_busy:.3f}, {a.seconds:.1f} s), lock-step "
            f"{b.episodes_per_s:.3f} eps/s (busy {b.engine_busy:.3f}, {b.seconds:.1f} s): "
            f"{a.episodes_per_s / b.episodes_per_s:.2f}x")
    a, b = rounds[-1]
    benchmark.extra_info.update(async_eps=a.episodes_per_s, lock_eps=b.episodes_per_s, async_busy=a.engine_busy,
                                lock_busy=b.engine_busy)
