"""Fixed-batch asynchronous rollouts: runs a list of GRPO groups to their end on a RolloutStream.

:func:`run_rollout` is the fixed-batch form: every group submitted at once to a
:class:`~sage_fast.rollout.stream.RolloutStream` (the one driver loop, which carries out the
scheduler core's decisions and feeds back what happened), and the call returns when all are done.
Failures stay inside their episode: an engine error that survives the engine's retries, or an
episode's own exception, ends that episode as failed with its error, and the rest of the batch
goes on. A trainer that submits the next step's groups while stragglers run uses the stream itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_fast.rollout.engines import Engine
from sage_fast.rollout.episodes import Episode
from sage_fast.rollout.scheduler import Impl
from sage_fast.rollout.stream import RolloutStream, describe_error
from sage_fast.rollout.types import FinishReason, SchedulerConfig


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


_describe = describe_error  # the lock-step baseline reports errors the same way


async def run_rollout(groups: Sequence[Sequence[Episode]], engine: Engine, config: SchedulerConfig, *,
                      impl: Impl = "auto", on_group: Callable[[int, Sequence[Episode]], Any] | None = None,
                      clock: Callable[[], float] = time.perf_counter) -> RolloutResult:
    """Runs every episode of ``groups`` (GRPO groups) to its end; ``on_group(group_id, episodes)``
    is called as each group completes (hand it to the trainer there). A fixed batch on a
    :class:`RolloutStream`: every group submitted at once, taken in completion order."""
    if not groups or any(not g for g in groups):
        raise ValueError("groups must be a non-empty list of non-empty episode lists")
    stream = RolloutStream(engine, config, impl=impl, clock=clock)
    try:
        for group in groups:
            stream.submit(group)
        order: list[int] = []
        async for done in stream.completed():
            order.append(done.group)
            if on_group is not None:
                on_group(done.group, groups[done.group])
        figures = stream.figures()
    finally:
        await stream.aclose()
    results = [stream.group_result(g) for g in range(len(groups))]
    return RolloutResult("async", [r for res in results for r in res.reasons],
                         [err for res in results for err in res.errors], figures.seconds, figures.engine_busy_s,
                         figures.turns, figures.tool_calls, figures.tool_timeouts, stream.decisions, order)
