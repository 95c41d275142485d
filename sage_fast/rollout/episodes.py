"""Episode logic stepped by a rollout driver: what to generate next, what a turn decided, which tool to run.

The agent loop (:class:`sage_fast.agent.loop.Agent`) runs an episode start to finish in one call,
which is right for answering a question and wrong for RL rollouts, where the driver must
interleave many episodes' turns. An :class:`Episode` exposes the same steps one at a time and
never waits inside except in :meth:`Episode.run_tool`, which the driver runs as a task it can cut.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_fast.agent.parsing import ToolCall
from sage_fast.agent.trajectory import ToolCallRecord
from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.rollout.engines import GenerationRequest
from sage_fast.rollout.types import FinishReason, TurnAction
from sage_fast.tools.context import ToolContext
from sage_fast.tools.registry import ToolRegistry


def estimate_tokens(request: GenerationRequest, *, tokens_per_frame: int = 160) -> int:
    """Tokens to reserve for a turn: its prompt (about 4 characters a token, plus visual tokens)
    and its whole output budget. Only admission uses it, so a rough figure is enough."""
    chars = 0
    for message in request.messages:
        content = message["content"]
        if isinstance(content, str):
            chars += len(content)
        else:
            chars += sum(len(part.get("text", "")) for part in content)
    frames = len(request.frames) if request.frames is not None else 0
    return math.ceil(chars / 4) + frames * tokens_per_frame + request.sampling.max_tokens


class Episode(ABC):
    """One episode, stepped: ``request()`` -> engine -> ``on_generation`` -> maybe ``run_tool`` -> ...

    An episode with ``prepares = True`` first runs :meth:`prepare` (decoding its frames, say) as
    a set-up step that holds no engine slot; its first ``request()`` is asked for after it."""

    error: str | None = None
    prepares: bool = False

    @abstractmethod
    def request(self) -> GenerationRequest:
        """The turn to generate now."""

    def cost(self) -> int:
        """Tokens the next turn reserves in the engine."""
        return estimate_tokens(self.request())

    @abstractmethod
    def on_generation(self, generation: Generation) -> TurnAction:
        """Records the turn; says whether it answered, asked for a tool, or goes on without one."""

    @abstractmethod
    async def run_tool(self) -> FinishReason | None:
        """Runs the tool the last turn asked for (the driver cuts it at the tool time-out).
        Returns None when the next turn follows, or how the episode ended, for an episode that
        decides that only after its tool (an agent loop that parses its own turns)."""

    @abstractmethod
    def on_tool_timeout(self, seconds: float) -> None:
        """Records an error result for a tool the driver cut, so the next turn sees it."""

    async def prepare(self) -> FinishReason | None:
        """The set-up step of an episode with ``prepares = True``; returns as :meth:`run_tool`."""
        return None

    def close(self, reason: FinishReason) -> asyncio.Task | None:
        """The episode is over (``reason``): cancel whatever it still runs on its own and return
        that task, which the driver's ``aclose()`` waits for. Called once."""
        return None  # a stepped episode holds nothing between steps; the driver cuts its task

    def summary(self) -> dict[str, Any]:
        """What a remote worker sends back for this episode (plain data; it crosses processes)."""
        return {}


@dataclass
class ScriptedEpisode(Episode):
    """Real generation and real tool calls, scripted decisions: turn k's action is ``actions[k]``
    whatever the model wrote. Tiny random-weight models cannot decide anything, yet the engine and
    the tool layer must be exercised end to end; the script stands in for the model's choice only.
    Each tool turn calls ``tool_name`` through the registry with ``{"seconds": tool_seconds[k]}``."""

    index: int
    actions: list[int]
    tool_seconds: list[float]
    registry: ToolRegistry
    context: ToolContext
    tool_name: str = "sleep_tool"
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_tokens=16))
    fail_at_turn: int | None = None  # raise in on_generation at this turn (tests the failure path)
    turns: list[Generation] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.actions or len(self.tool_seconds) != len(self.actions):
            raise ValueError("actions must be non-empty and tool_seconds as long as actions")

    def request(self) -> GenerationRequest:
        k = len(self.turns)
        history = " ".join(f"[{r.name}: {r.result[:40]}]" for r in self.tool_calls[-3:])
        text = f"Episode {self.index}, turn {k}. Results so far: {history or 'none'}. What next?"
        return GenerationRequest(messages=[{"role": "user", "content": text}], sampling=self.sampling)

    def on_generation(self, generation: Generation) -> TurnAction:
        if self.fail_at_turn is not None and len(self.turns) == self.fail_at_turn:
            raise RuntimeError(f"episode {self.index}: scripted failure at turn {self.fail_at_turn}")
        self.turns.append(generation)
        k = len(self.turns) - 1
        return TurnAction(self.actions[min(k, len(self.actions) - 1)])

    async def run_tool(self) -> None:
        k = len(self.turns) - 1
        call = ToolCall(name=self.tool_name, arguments={"seconds": self.tool_seconds[k]})
        record = await self.registry.acall(self.context, call, self.tool_calls)  # the agent's tool layer
        self.tool_calls.append(record)
        return None

    def summary(self) -> dict[str, Any]:
        return {"index": self.index, "texts": [g.text for g in self.turns],
                "tokens_out": [g.tokens_out for g in self.turns],
                "tool_results": [r.result for r in self.tool_calls], "tool_errors": [r.error for r in self.tool_calls]}

    def on_tool_timeout(self, seconds: float) -> None:
        self.tool_calls.append(ToolCallRecord(name=self.tool_name, arguments={}, error=True, seconds=seconds,
                                              result=f"{self.tool_name} timed out after {seconds:g} s"))


def sleep_tool(context: ToolContext, seconds: float) -> str:
    """Waits ``seconds`` and reports it: a stand-in for a slow tool (speech, grounding, web).

    Args:
        seconds: how long to wait.
    """
    import time

    time.sleep(float(seconds))
    return f"slept {float(seconds):.3f} s"


def scripted_context(work_dir: str | Path) -> ToolContext:
    """A tool context for scripted episodes (their tools never open the video)."""
    return ToolContext(video_path=Path(work_dir) / "no-video.mp4", work_dir=Path(work_dir))


@dataclass(frozen=True)
class ScriptedEpisodeFactory:
    """Builds scripted episodes from ``(index, actions, tool_seconds)`` specs inside whatever
    process runs them (a Ray worker): the tool registry and work folder are made there, once."""

    work_dir: str
    tool_timeout_s: float = 600.0
    max_tokens: int = 16
    max_workers: int = 64

    def __call__(self, spec: tuple[int, list[int], list[float]]) -> ScriptedEpisode:
        from sage_fast.tools.registry import Tool, ToolRegistry

        key = (self.work_dir, self.tool_timeout_s, self.max_workers)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = ToolRegistry([Tool(sleep_tool, timeout_s=self.tool_timeout_s)],
                                            max_workers=self.max_workers)
        index, actions, tool_seconds = spec
        return ScriptedEpisode(index=index, actions=list(actions), tool_seconds=list(tool_seconds),
                               registry=_REGISTRIES[key], context=scripted_context(self.work_dir),
                               sampling=SamplingConfig(max_tokens=self.max_tokens))


_REGISTRIES: dict[tuple, ToolRegistry] = {}
