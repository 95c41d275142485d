"""SAGE agent episodes under the scheduler: the agent's own loop, its turns admitted by the scheduler.

Each episode is :meth:`sage_fast.agent.loop.Agent.arun` unchanged (its stop rules, prompts, parsing
and tool layer), run on a copy of the agent whose orchestrator hands every turn to the driver:
the turn waits for the scheduler's admission, runs on the shared engine, and the time until the
episode's next turn (parsing, tool calls, with the registry's own time-outs) counts as "in tool".
Frame decoding before Stage-1 is the episode's set-up (a PREPARE decision), so no engine slot is
held while frames decode. When ``arun`` returns, the episode ends as answered, or at the turn
cap when the agent could not produce an answer; when it raises, the episode fails with its error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_fast.agent.trajectory import Trajectory
from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.rollout.engines import BusyMeter, Engine, GenerationRequest
from sage_fast.rollout.episodes import estimate_tokens
from sage_fast.rollout.scheduler import Impl, Scheduler
from sage_fast.rollout.types import DecisionKind, EpisodeState, FinishReason, SchedulerConfig, TurnAction
from sage_fast.tools.registry import ToolRegistry

_EPISODE: contextvars.ContextVar[int | None] = contextvars.ContextVar("sage_rollout_episode", default=None)


class EpisodeStopped(RuntimeError):
    """The scheduler ended the episode (time-out, cancellation) while it waited for a turn."""


class ScheduledOrchestrator:
    """The orchestrator a rollout's agent copy sees: a turn of a scheduled episode goes through
    the driver; any other call (none in the agent loop itself) goes straight to the engine."""

    def __init__(self, engine: Engine, driver: _AgentDriver) -> None:
        self.engine = engine
        self.driver = driver
        self.name = f"scheduled:{engine.name}"

    async def agenerate(self, messages: list[dict[str, Any]], frames: Any, sampling: SamplingConfig) -> Generation:
        request = GenerationRequest(messages=messages, frames=frames, sampling=sampling)
        episode = _EPISODE.get()
        if episode is None:
            return await self.engine.generate(request)
        return await self.driver.turn(episode, request)

    def generate(self, messages: list[dict[str, Any]], frames: Any, sampling: SamplingConfig) -> Generation:
        """For callers in worker threads: runs on the driver's event loop."""
        request = GenerationRequest(messages=messages, frames=frames, sampling=sampling)
        return asyncio.run_coroutine_threadsafe(self.engine.generate(request), self.driver.loop).result()


@dataclass
class AgentRolloutResult:
    """Trajectories per group (input order), how each episode ended, and what the rollout cost."""

    trajectories: list[list[Trajectory]]
    reasons: list[list[FinishReason]]
    seconds: float
    engine_busy_s: float
    turns: int
    group_order: list[int] = field(default_factory=list)

    @property
    def episodes_per_s(self) -> float:
        return sum(len(g) for g in self.trajectories) / self.seconds

    @property
    def engine_busy(self) -> float:
        return self.engine_busy_s / self.seconds


class _AgentDriver:
    def __init__(self, agent: Any, groups: Sequence[Sequence[dict[str, Any]]], engine: Engine,
                 config: SchedulerConfig, impl: Impl, on_group: Callable[[int, list[Trajectory]], Any] | None,
                 tool_workers: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.meter = engine if isinstance(engine, BusyMeter) else BusyMeter(engine)
        self.config = config
        self.sched = Scheduler(config, impl=impl)
        self.items = [item for group in groups for item in group]
        self.group_of = [g for g, group in enumerate(groups) for _ in group]
        self.sizes = [len(group) for group in groups]
        self.trajectories: list[Trajectory | None] = [None] * len(self.items)
        self.reasons: list[FinishReason | None] = [None] * len(self.items)
        self.tasks: dict[int, asyncio.Task] = {}
        self.admission: dict[int, asyncio.Future] = {}
        self.completed: list[int] = []
        self.on_group = on_group
        self.turns = 0
        self.agent = copy.copy(agent)  # the caller's agent keeps its own orchestrator and registry
        self.agent.orchestrator = ScheduledOrchestrator(self.meter, self)
        # The same tools and cache, with enough worker threads for every episode's tool at once
        # (an agent's registry is sized for one user's few episodes).
        self.registry = ToolRegistry(list(agent.registry.tools.values()), max_workers=tool_workers,
                                     cache=agent.registry.cache)
        self.agent.registry = self.registry
        self.t0 = time.perf_counter()
        self.all_done = asyncio.Event()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def act(self, decisions: list) -> None:
        for kind, e, g, aux, _ in decisions:
            if kind == DecisionKind.PREPARE:
                self.tasks[e] = asyncio.create_task(self._episode(e))
            elif kind == DecisionKind.ADMIT:
                future = self.admission.pop(e, None)
                if future is not None and not future.done():
                    future.set_result(None)
                self.turns += 1
            elif kind == DecisionKind.FINISH:
                self.reasons[e] = FinishReason(aux)
                if aux in (FinishReason.TIMEOUT, FinishReason.CANCELLED):
                    future = self.admission.pop(e, None)
                    if future is not None and not future.done():
                        future.set_exception(EpisodeStopped(f"episode {e}: {FinishReason(aux).name.lower()}"))
                    task = self.tasks.get(e)
                    if task is not None and task is not asyncio.current_task():
                        task.cancel()
                    if self.trajectories[e] is None:
                        self.trajectories[e] = self._error(e, f"EpisodeStopped: {FinishReason(aux).name.lower()}")
            elif kind == DecisionKind.GROUP_COMPLETE:
                self.completed.append(g)
                if self.on_group is not None:
                    first = sum(self.sizes[:g])
                    self.on_group(g, [t for t in self.trajectories[first:first + self.sizes[g]] if t is not None])
                if len(self.completed) == len(self.sizes):
                    self.all_done.set()
            # START_TOOL: the agent runs its own tools; TOOL_TIMEOUT cannot happen (tool_timeout=0).

    def _error(self, e: int, error: str) -> Trajectory:
        item = self.items[e]
        return Trajectory(video_path=str(item["video"]), question=item["question"], error=error,
                          metadata=dict(item.get("metadata") or {}))

    async def turn(self, e: int, request: GenerationRequest) -> Generation:
        admitted = self.loop.create_future()
        self.admission[e] = admitted
        self.act(self.sched.tool_finished(e, estimate_tokens(request), self.now()))
        if not admitted.done() and self.sched.state(e) == EpisodeState.DONE:
            self.admission.pop(e, None)
            raise EpisodeStopped(f"episode {e} is over (turn cap or time-out); no further turns")
        await admitted
        generation = await self.meter.generate(request)
        # Until its next turn (or its end) the episode is the agent's: parsing and tools.
        self.act(self.sched.turn_finished(e, int(TurnAction.TOOL), 0, self.now()))
        return generation

    async def _episode(self, e: int) -> None:
        _EPISODE.set(e)  # this task's own context: the agent's turns know their episode
        item = self.items[e]
        try:
            trajectory = await self.agent.arun(item["video"], item["question"], metadata=item.get("metadata"))
        except asyncio.CancelledError:
            return
        except Exception as exc:  # one broken episode must not sink the batch
            self.trajectories[e] = self._error(e, f"{type(exc).__name__}: {exc}")
            self.act(self.sched.fail(e, self.now()))
            return
        self.trajectories[e] = trajectory
        reason = FinishReason.TURN_CAP if trajectory.could_not_produce else FinishReason.ANSWERED
        self.act(self.sched.finish(e, int(reason), self.now()))

    async def run(self) -> None:
        for size in self.sizes:
            _, decisions = self.sched.add_group(size, 0, self.now(), prepare=True)
            self.act(decisions)
        while not self.all_done.is_set():
            deadline = self.sched.next_deadline()
            timeout = None if deadline == math.inf else max(0.0, deadline - self.now())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_done.wait(), timeout)
            self.act(self.sched.advance(self.now()))
        for task in self.tasks.values():
            if not task.done():
                task.cancel()


async def run_agent_rollout(agent: Any, groups: Sequence[Sequence[dict[str, Any]]], engine: Engine,
                            config: SchedulerConfig, *, impl: Impl = "auto",
                            on_group: Callable[[int, list[Trajectory]], Any] | None = None,
                            tool_workers: int = 64) -> AgentRolloutResult:
    """Runs SAGE episodes (``{"video", "question", "metadata"?}`` items, in GRPO groups) with
    ``agent``'s loop and tools, every turn on ``engine`` as the scheduler admits it.
    ``on_group(group, trajectories)`` sees each group as it completes. The turn cap is the agent's
    (``AgentConfig.max_stage2_steps``); ``config.max_turns`` is not used. Tools run in a registry
    of ``tool_workers`` threads holding the agent's tools and cache."""
    if tool_workers < 1:
        raise ValueError(f"tool_workers must be >= 1, got {tool_workers}")
    if not groups or any(not g for g in groups):
        raise ValueError("groups must be a non-empty list of non-empty lists of {'video', 'question'} items")
    if config.tool_timeout > 0:
        raise ValueError("agent rollouts cut tools with the registry's per-tool time-outs (Tool.timeout_s); "
                         "set SchedulerConfig.tool_timeout=0")
    # The agent's own cap (Stage-1 + max_stage2_steps) ends its episodes, after the last turn's
    # tool, as the loop defines; the core's cap is set above it so it never cuts that tool short.
    config = dataclasses.replace(config, max_turns=2 + agent.config.max_stage2_steps)
    driver = _AgentDriver(agent, groups, engine, config, impl, on_group, tool_workers)
    try:
        await driver.run()
    finally:
        driver.registry.close()
    trajectories, reasons, k = [], [], 0
    for size in driver.sizes:
        trajectories.append([t if t is not None else driver._error(k + i, "not run") for i, t in
                             enumerate(driver.trajectories[k:k + size])])
        reasons.append([r if r is not None else FinishReason.CANCELLED for r in driver.reasons[k:k + size]])
        k += size
    return AgentRolloutResult(trajectories, reasons, driver.now(), driver.meter.busy_s, driver.turns,
                              driver.completed)
