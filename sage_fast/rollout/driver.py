"""The asynchronous rollout driver: runs episodes on an engine as the scheduler decides, on the real clock.

The scheduler core decides (admit a turn, start a tool, cut a tool, end an episode, hand over a
group); this driver carries the decisions out with asyncio tasks and feeds back what happened
(a turn finished, a tool returned, time passed). Failures stay inside their episode: an engine
error that survives the engine's retries, or an episode's own exception, ends that episode as
failed with its error, and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_fast.rollout.engines import BusyMeter, Engine
from sage_fast.rollout.episodes import Episode
from sage_fast.rollout.scheduler import Impl, Scheduler
from sage_fast.rollout.types import DecisionKind, FinishReason, SchedulerConfig, TurnAction


@dataclass
class RolloutResult:
    """How every episode ended, and what the rollout cost."""

    schedule: str
    reasons: list[FinishReason]  # per episode, in input order
    errors: list[str | None]
    seconds: float
    engine_busy_s: float
    turns: int
    tool_calls: int
    tool_timeouts: int
    decisions: list[tuple[int, int, int, int, float]] = field(default_factory=list, repr=False)
    group_order: list[int] = field(default_factory=list)  # groups in the order they completed

    @property
    def episodes(self) -> int:
        return len(self.reasons)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds

    @property
    def engine_busy(self) -> float:
        return self.engine_busy_s / self.seconds


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def run_rollout(groups: Sequence[Sequence[Episode]], engine: Engine, config: SchedulerConfig, *,
                      impl: Impl = "auto", on_group: Callable[[int, Sequence[Episode]], Any] | None = None,
                      clock: Callable[[], float] = time.perf_counter) -> RolloutResult:
    """Runs every episode of ``groups`` (GRPO groups) to its end; ``on_group(group_id, episodes)``
    is called as each group completes (hand it to the trainer there)."""
    if not groups or any(not g for g in groups):
        raise ValueError("groups must be a non-empty list of non-empty episode lists")
    meter = engine if isinstance(engine, BusyMeter) else BusyMeter(engine)
    busy0 = meter.busy_s
    episodes = [ep for g in groups for ep in g]
    sched = Scheduler(config, impl=impl, record=False)
    reasons: list[FinishReason | None] = [None] * len(episodes)
    errors: list[str | None] = [None] * len(episodes)
    tasks: dict[asyncio.Task, tuple[str, int]] = {}
    running: dict[int, asyncio.Task] = {}
    log: list[tuple[int, int, int, int, float]] = []
    completed: list[int] = []
    t0 = clock()
    turns = 0

    def now() -> float:
        return clock() - t0

    def fail(e: int, exc: BaseException) -> list:
        errors[e] = _describe(exc)
        return sched.fail(e, now())

    def act(decisions: list) -> None:
        nonlocal turns
        pending = list(decisions)
        while pending:
            kind, e, g, aux, _ = pending.pop(0)
            log.append((kind, e, g, aux, _))
            if kind == DecisionKind.ADMIT:
                try:
                    request = episodes[e].request()
                except Exception as exc:  # a broken episode fails alone
                    pending += fail(e, exc)
                    continue
                task = asyncio.create_task(meter.generate(request))
                tasks[task], running[e] = ("generate", e), task
                turns += 1
            elif kind == DecisionKind.START_TOOL:
                task = asyncio.create_task(episodes[e].run_tool())
                tasks[task], running[e] = ("tool", e), task
            elif kind == DecisionKind.TOOL_TIMEOUT:
                task = running.pop(e, None)
                if task is not None:
                    task.cancel()  # the worker thread of a blocking tool is abandoned, as the registry does
                    tasks.pop(task, None)
                episodes[e].on_tool_timeout(config.tool_timeout)
            elif kind == DecisionKind.FINISH:
                reasons[e] = FinishReason(aux)
                task = running.pop(e, None)
                if task is not None:
                    task.cancel()
                    tasks.pop(task, None)
            elif kind == DecisionKind.GROUP_COMPLETE:
                completed.append(g)
                if on_group is not None:
                    on_group(g, groups[g])

    for group in groups:
        try:
            cost = group[0].cost()
        except Exception:
            cost = 0  # its first request() will fail the episode
        _, decisions = sched.add_group(len(group), cost, now())
        act(decisions)
    while len(completed) < len(groups):
        deadline = sched.next_deadline()
        timeout = None if deadline == math.inf else max(0.0, deadline - now())
        if not tasks and timeout is None:
            raise RuntimeError("rollout stalled: nothing running and no time-out pending (scheduler bug)")
        done: set[asyncio.Task] = set()
        if tasks:
            done, _ = await asyncio.wait(list(tasks), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout or 0.0)
        # Episode order, so a replay of the same completions gives the same events.
        for task in sorted(done, key=lambda t: tasks[t][1]):
            if task not in tasks:
                continue  # cancelled by an earlier decision in this batch
            what, e = tasks.pop(task)
            running.pop(e, None)
            ep = episodes[e]
            if what == "generate":
                exc = task.exception()
                if exc is not None:
                    act(fail(e, exc))
                    continue
                try:
                    action = ep.on_generation(task.result())
                    cost = ep.cost() if action != TurnAction.ANSWER else 0
                except Exception as err:
                    act(fail(e, err))
                    continue
                act(sched.turn_finished(e, int(action), cost, now()))
            else:
                exc = task.exception()
                if exc is not None:
                    act(fail(e, exc))
                    continue
                try:
                    cost = ep.cost()
                except Exception as err:
                    act(fail(e, err))
                    continue
                act(sched.tool_finished(e, cost, now()))
        act(sched.advance(now()))
    for task in list(tasks):
        task.cancel()
    stats = sched.stats()
    return RolloutResult("async", [r if r is not None else FinishReason.CANCELLED for r in reasons], errors,
                         now(), meter.busy_s - busy0, turns, stats["tool_calls"], stats["tool_timeouts"], log,
                         completed)
