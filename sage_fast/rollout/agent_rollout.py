"""SAGE agent episodes under the scheduler: the agent's own loop, its turns admitted by a RolloutStream.

Each episode is :meth:`sage_fast.agent.loop.Agent.arun` unchanged (its stop rules, prompts, parsing
and tool layer), run on a copy of the agent whose orchestrator hands every turn to the episode's
:class:`AgentEpisode`, a stepped :class:`~sage_fast.rollout.episodes.Episode` of the one driver loop
(:class:`~sage_fast.rollout.stream.RolloutStream`). The steps map onto the agent's coroutine:

- set-up (a PREPARE decision, no engine slot held): start ``arun``; it decodes its frames and
  stops at its Stage-1 request;
- a turn (ADMIT): the stream generates the request the agent is waiting on, and the reply
  resumes the agent;
- "in tool" (every turn reports TOOL): the agent parses, runs its tools (the registry's own
  time-outs) and either asks for its next turn or returns. When it returns, the episode ends
  as answered, or at the turn cap when the agent could not produce an answer; when it raises,
  the episode fails with its error.

Because agent episodes are ordinary stream episodes, an RL trainer can ``submit`` step k+1's
groups while step k's stragglers run (:func:`agent_episodes`), as the stream's benchmark row does.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_fast.agent.trajectory import Trajectory
from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.rollout.engines import Engine, GenerationRequest
from sage_fast.rollout.episodes import Episode
from sage_fast.rollout.scheduler import Impl
from sage_fast.rollout.stream import CompletedGroup, RolloutStream
from sage_fast.rollout.types import FinishReason, SchedulerConfig, TurnAction
from sage_fast.tools.registry import ToolRegistry

_EPISODE: contextvars.ContextVar[AgentEpisode | None] = contextvars.ContextVar("sage_rollout_episode", default=None)


class ScheduledOrchestrator:
    """The orchestrator a rollout's agent copy sees: a turn of a scheduled episode waits for the
    stream to generate it; any other call (none in the agent loop itself) goes straight to the engine."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.name = f"scheduled:{engine.name}"

    @property
    def spec(self) -> Any:
        """The engine's model spec when it holds a local model (the agent sizes frames by its
        patch size); None for a server, where the agent's default (14-px patches) applies."""
        return getattr(getattr(self.engine, "vlm", None), "spec", None)

    async def agenerate(self, messages: list[dict[str, Any]], frames: Any, sampling: SamplingConfig) -> Generation:
        request = GenerationRequest(messages=messages, frames=frames, sampling=sampling)
        episode = _EPISODE.get()
        if episode is None:
            return await self.engine.generate(request)
        return await episode.post(request)

    def generate(self, messages: list[dict[str, Any]], frames: Any, sampling: SamplingConfig) -> Generation:
        """For callers in worker threads: runs on the rollout's event loop."""
        request = GenerationRequest(messages=messages, frames=frames, sampling=sampling)
        return asyncio.run_coroutine_threadsafe(self.engine.generate(request), self.loop).result()


def scheduled_agent(agent: Any, engine: Engine, *, tool_workers: int = 64) -> Any:
    """A copy of ``agent`` whose turns go through a stream: its orchestrator is a
    :class:`ScheduledOrchestrator` on ``engine``, its registry the same tools and cache with
    ``tool_workers`` threads (an agent's own registry is sized for one user's few episodes).
    Call it inside the coroutine that runs the stream; close ``copy.registry`` when done."""
    if tool_workers < 1:
        raise ValueError(f"tool_workers must be >= 1, got {tool_workers}")
    scheduled = copy.copy(agent)  # the caller's agent keeps its own orchestrator and registry
    scheduled.orchestrator = ScheduledOrchestrator(engine, asyncio.get_running_loop())
    scheduled.registry = ToolRegistry(list(agent.registry.tools.values()), max_workers=tool_workers,
                                      cache=agent.registry.cache)
    return scheduled


class AgentEpisode(Episode):
    """One SAGE question (``{"video", "question", "metadata"?}``) run by ``agent.arun`` on a stream.
    ``agent`` must come from :func:`scheduled_agent`. After the episode: ``trajectory`` (None when
    it failed or was stopped before ``arun`` returned; :meth:`result` fills one in)."""

    prepares = True

    def __init__(self, agent: Any, item: dict[str, Any]) -> None:
        if not isinstance(agent.orchestrator, ScheduledOrchestrator):
            raise TypeError("AgentEpisode needs an agent from scheduled_agent(agent, engine), whose turns go "
                            f"through the stream; got an agent with orchestrator {type(agent.orchestrator).__name__}")
        self.agent = agent
        self.item = item
        self.trajectory: Trajectory | None = None
        self._task: asyncio.Task | None = None
        self._request: GenerationRequest | None = None
        self._reply: asyncio.Future | None = None  # the agent's turn, waiting for its generation
        self._posted: asyncio.Future | None = None  # resolved when the agent asks for its next turn

    # -- the agent's side (inside its task) ------------------------------------------------------
    async def post(self, request: GenerationRequest) -> Generation:
        """The agent asks for a turn: the stream admits and generates it, then the agent goes on."""
        assert self._posted is not None, "post() outside the episode's task"
        self._request = request
        self._reply = asyncio.get_running_loop().create_future()
        if not self._posted.done():
            self._posted.set_result(None)
        return await self._reply

    async def _run(self) -> None:
        _EPISODE.set(self)  # this task's own context: the agent's turns know their episode
        item = self.item
        self.trajectory = await self.agent.arun(item["video"], item["question"], metadata=item.get("metadata"))

    async def _until_next_turn(self) -> FinishReason | None:
        """Waits until the agent asks for its next turn (None) or returns (how it ended); its
        exception is raised (the stream fails the episode with it)."""
        assert self._task is not None and self._posted is not None
        await asyncio.wait({self._task, self._posted}, return_when=asyncio.FIRST_COMPLETED)
        if self._posted.done():
            return None
        self._task.result()  # raises the agent's error
        assert self.trajectory is not None
        return FinishReason.TURN_CAP if self.trajectory.could_not_produce else FinishReason.ANSWERED

    # -- the stream's side -------------------------------------------------------------------------
    async def prepare(self) -> FinishReason | None:
        loop = asyncio.get_running_loop()
        self._posted = loop.create_future()
        self._task = loop.create_task(self._run(), name="SAGE agent episode")
        return await self._until_next_turn()

    def request(self) -> GenerationRequest:
        if self._request is None:
            raise RuntimeError("AgentEpisode.request(): the agent has not asked for a turn yet (prepare() first)")
        return self._request

    def on_generation(self, generation: Generation) -> TurnAction:
        assert self._reply is not None
        self._posted = asyncio.get_running_loop().create_future()
        self._reply.set_result(generation)
        # What the turn decided is the agent's to parse; until its next turn (or its end) the
        # episode is the agent's: parsing and tools.
        return TurnAction.TOOL

    async def run_tool(self) -> FinishReason | None:
        return await self._until_next_turn()

    def on_tool_timeout(self, seconds: float) -> None:
        raise RuntimeError("agent episodes cut tools with the registry's time-outs; SchedulerConfig.tool_timeout "
                           "must be 0")

    def close(self, reason: FinishReason) -> asyncio.Task | None:
        if self._task is None or self._task.done():
            return None
        self._task.cancel()  # stopped (time-out, cancel) or failed while the agent waited
        return self._task

    def summary(self) -> dict[str, Any]:
        """What a remote worker sends back: the trajectory as a dict (None when the episode had none)."""
        return {"trajectory": None if self.trajectory is None else self.trajectory.to_dict()}

    def result(self, error: str | None, reason: FinishReason) -> Trajectory:
        """The episode's trajectory, or one that records why there is none."""
        if self.trajectory is not None:
            return self.trajectory
        item = self.item
        why = error or f"EpisodeStopped: {reason.name.lower()}"
        return Trajectory(video_path=str(item["video"]), question=item["question"], error=why,
                          metadata=dict(item.get("metadata") or {}))


@dataclass(frozen=True)
class AgentEpisodeFactory:
    """SAGE agent episodes for a rollout worker (:class:`~sage_fast.rollout.ray_pool.RayRolloutPool`):
    specs are ``{"video", "question", "metadata"?}`` items. The worker calls :meth:`bind` with its
    engine, on its event loop, once: the agent is built there (``config``; tools from
    ``tools(orchestrator)``, a picklable function, default the agent's own default tools with the
    worker's engine as their VLM). Each episode's summary holds its trajectory as a dict."""

    config: Any  # sage_fast.agent.loop.AgentConfig
    tools: Callable[[Any], list[Any]] | None = None
    tool_workers: int = 64

    def bind(self, engine: Engine) -> Callable[[dict[str, Any]], AgentEpisode]:
        from sage_fast.agent.loop import Agent

        orchestrator = ScheduledOrchestrator(engine, asyncio.get_running_loop())
        # enough tool threads for every episode's tool at once (AgentConfig's default is one user's)
        config = dataclasses.replace(self.config, tool_workers=max(self.config.tool_workers, self.tool_workers))
        agent = Agent(orchestrator, tools=None if self.tools is None else self.tools(orchestrator), config=config)
        return lambda item: AgentEpisode(agent, item)


def agent_episodes(agent: Any, group: Sequence[dict[str, Any]]) -> list[AgentEpisode]:
    """One GRPO group's episodes for ``stream.submit`` (``agent`` from :func:`scheduled_agent`)."""
    return [AgentEpisode(agent, item) for item in group]


def group_trajectories(done: CompletedGroup) -> list[Trajectory]:
    """A completed group's trajectories, in submission order; failed or stopped episodes carry their error."""
    return [episode.result(error, reason)  # type: ignore[attr-defined]
            for episode, error, reason in zip(done.episodes, done.errors, done.reasons, strict=True)]


@dataclass
class AgentRolloutResult:
    """Trajectories per group (input order), how each episode ended, and what the rollout cost."""

    trajectories: list[list[Trajectory]]
    reasons: list[list[FinishReason]]
    seconds: float
    engine_busy_s: float
    turns: int
    group_order: list[int] = field(default_factory=list)  # groups in the order they completed

    @property
    def episodes_per_s(self) -> float:
        return sum(len(g) for g in self.trajectories) / self.seconds

    @property
    def engine_busy(self) -> float:
        return self.engine_busy_s / self.seconds


def check_agent_config(agent_config: Any, config: SchedulerConfig) -> SchedulerConfig:
    """The scheduler config agent episodes (``AgentConfig`` ``agent_config``) run under: tools are
    cut by the registry, and the agent's own cap (Stage-1 + max_stage2_steps) ends its episodes,
    after the last turn's tool, as the loop defines; the core's cap is set above it so it never
    cuts that tool short. Pass its result to a RolloutStream or RayRolloutPool of agent episodes."""
    if config.tool_timeout > 0:
        raise ValueError("agent rollouts cut tools with the registry's per-tool time-outs (Tool.timeout_s); "
                         "set SchedulerConfig.tool_timeout=0")
    return dataclasses.replace(config, max_turns=2 + agent_config.max_stage2_steps)


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
    config = check_agent_config(agent.config, config)
    scheduled = scheduled_agent(agent, engine, tool_workers=tool_workers)
    stream = RolloutStream(engine, config, impl=impl)
    order: list[int] = []
    try:
        for group in groups:
            stream.submit(agent_episodes(scheduled, group))
        async for done in stream.completed():
            order.append(done.group)
            if on_group is not None:
                on_group(done.group, group_trajectories(done))
        figures = stream.figures()
    finally:
        await stream.aclose()
        scheduled.registry.close()
    results = [stream.group_result(g) for g in range(len(groups))]
    return AgentRolloutResult([group_trajectories(r) for r in results], [list(r.reasons) for r in results],
                              figures.seconds, figures.engine_busy_s, figures.turns, order)
