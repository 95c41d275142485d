"""Batched asynchronous rollouts for multi-turn RL: scheduler, engines, lock-step baseline, packing, Ray pool.

The scheduler (C++ core, Python fallback with identical decisions) keeps the generation engine
saturated by queueing an episode's next turn the moment its tool returns, instead of waiting for
the whole batch's turn as lock-step RL loops do (DESIGN.md §3).
"""

from sage_fast.rollout.scheduler import Scheduler, cpp_available, resolve_impl
from sage_fast.rollout.types import (
    Decision,
    DecisionKind,
    EpisodeState,
    EventCode,
    FinishReason,
    SchedulerConfig,
    TurnAction,
)

__all__ = ["CompletedGroup", "Decision", "DecisionKind", "EpisodeState", "EventCode", "FinishReason", "RolloutStream",
           "Scheduler", "SchedulerConfig", "StreamFigures", "TurnAction", "cpp_available", "resolve_impl"]

_STREAM_NAMES = ("CompletedGroup", "RolloutStream", "StreamFigures")


def __getattr__(name: str) -> object:
    """The stream's names load on first use: they pull in the engines (and torch), the core does not."""
    if name in _STREAM_NAMES:
        from sage_fast.rollout import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'sage_fast.rollout' has no attribute {name!r}")
