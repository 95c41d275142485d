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

__all__ = ["Decision", "DecisionKind", "EpisodeState", "EventCode", "FinishReason", "Scheduler",
           "SchedulerConfig", "TurnAction", "cpp_available", "resolve_impl"]
