"""The rollout scheduler facade: the C++ core when it is built, else the Python fallback, same API.

Both are one deterministic state machine (events in, decisions out; see
csrc/scheduler/scheduler.h). This wrapper picks the implementation, optionally records every
event it forwards (so a run can be replayed through the other implementation, or through the same
one to debug it), and keeps the driver code free of ``_C``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from sage_fast import _ext
from sage_fast.rollout.fallback import PyScheduler
from sage_fast.rollout.types import Event, EventCode, SchedulerConfig

Impl = Literal["auto", "cpp", "python"]
DecisionTuple = tuple[int, int, int, int, float]


def cpp_available() -> bool:
    """True when the compiled core carries the scheduler (an older build may not)."""
    return _ext.available() and hasattr(_ext.load(), "RolloutScheduler")


def resolve_impl(impl: Impl = "auto") -> Literal["cpp", "python"]:
    """``auto`` is ``cpp`` when built, else ``python``; ``SAGE_FAST_SCHEDULER=python`` forces the fallback."""
    if impl == "auto":
        impl = os.environ.get("SAGE_FAST_SCHEDULER", "auto")  # type: ignore[assignment]
    if impl == "auto":
        return "cpp" if cpp_available() else "python"
    if impl == "cpp":
        if not cpp_available():
            _ext.load()  # raises the loader's explanation when the core is missing altogether
            raise ImportError("sage_fast._C was built without the rollout scheduler; rebuild it "
                              "(`pip install -e . --no-build-isolation`) or use impl='python'")
        return "cpp"
    if impl == "python":
        return "python"
    raise ValueError(f"impl must be 'auto', 'cpp' or 'python', got {impl!r}")


class Scheduler:
    """``Scheduler(SchedulerConfig(max_seqs=64), impl="auto")``; every event returns its decisions
    as ``(kind, episode, group, aux, time)`` tuples (``Decision(*t)`` names the fields)."""

    def __init__(self, config: SchedulerConfig | None = None, *, impl: Impl = "auto", record: bool = False) -> None:
        self.config = config or SchedulerConfig()
        self.impl = resolve_impl(impl)
        c = self.config
        args = (c.max_seqs, c.max_tokens, c.max_turns, c.tool_timeout, c.episode_timeout, c.max_active_groups,
                c.group_priority)
        self._core: Any = _ext.load().RolloutScheduler(*args) if self.impl == "cpp" else PyScheduler(*args)
        self.events: list[Event] | None = [] if record else None
        if not record:
            # The per-event hot path goes straight to the core: one call instead of a Python frame
            # around it (both cores take IntEnum members as ints). The C++ core hands out
            # METH_FASTCALL versions of these calls, which skip pybind11's dispatcher too
            # (csrc/scheduler/py_fastcall.h): 0.1-0.4 us a decision instead of ~1 us.
            core = self._core
            fast = core.fast_calls() if hasattr(core, "fast_calls") else (
                core.turn_finished, core.tool_finished, core.advance, core.fail, core.next_deadline)
            (self.turn_finished, self.tool_finished, self.advance, self.fail,  # type: ignore[method-assign]
             self.next_deadline) = fast  # type: ignore[method-assign]
            self.turns = core.turns  # type: ignore[method-assign]
            self.state = core.state  # type: ignore[method-assign]

    def _log(self, code: EventCode, a: int, b: int, c: int, now: float) -> None:
        if self.events is not None:
            self.events.append((int(code), a, b, c, now))

    def add_group(self, size: int, cost: int, now: float, *, prepare: bool = False) -> tuple[int, list[DecisionTuple]]:
        """Adds a GRPO group of ``size`` episodes (first-turn reservation ``cost`` tokens) -> (group
        id, decisions). With ``prepare`` each episode first gets a PREPARE decision and queues its
        first turn only when the driver reports it ready with :meth:`tool_finished`."""
        self._log(EventCode.ADD_GROUP, size, cost, int(prepare), now)
        return self._core.add_group(size, cost, now, prepare)

    def turn_finished(self, episode: int, action: int, next_cost: int, now: float) -> list[DecisionTuple]:
        self._log(EventCode.TURN_FINISHED, episode, int(action), next_cost, now)
        return self._core.turn_finished(episode, int(action), next_cost, now)

    def tool_finished(self, episode: int, next_cost: int, now: float) -> list[DecisionTuple]:
        self._log(EventCode.TOOL_FINISHED, episode, next_cost, 0, now)
        return self._core.tool_finished(episode, next_cost, now)

    def advance(self, now: float) -> list[DecisionTuple]:
        self._log(EventCode.ADVANCE, 0, 0, 0, now)
        return self._core.advance(now)

    def fail(self, episode: int, now: float) -> list[DecisionTuple]:
        self._log(EventCode.FAIL, episode, 0, 0, now)
        return self._core.fail(episode, now)

    def cancel(self, episode: int, now: float) -> list[DecisionTuple]:
        self._log(EventCode.CANCEL, episode, 0, 0, now)
        return self._core.cancel(episode, now)

    def finish(self, episode: int, reason: int, now: float) -> list[DecisionTuple]:
        """Ends an episode from outside with ``reason`` (a FinishReason); stale when it is over already."""
        self._log(EventCode.FINISH, episode, int(reason), 0, now)
        return self._core.finish(episode, int(reason), now)

    def cancel_group(self, group: int, now: float) -> list[DecisionTuple]:
        self._log(EventCode.CANCEL_GROUP, group, 0, 0, now)
        return self._core.cancel_group(group, now)

    def replay(self, events: list[Event]) -> list[DecisionTuple]:
        """Feeds recorded events in one call (the C++ core releases the GIL) -> every decision."""
        if self.events is not None:
            self.events.extend(events)
        return self._core.replay(events)

    def replay_arrays(self, events: Any) -> dict[str, Any]:
        """:meth:`replay` with events and decisions as column arrays: ``events`` is a (n, 5) float64
        array or a dict of ``code, a, b, c, time`` columns; returns ``kind, episode, group, aux,
        time`` arrays. The cheapest way across the boundary (no Python object per decision)."""
        import numpy as np

        if not isinstance(events, dict):
            rows = np.asarray(events, dtype=np.float64).reshape(-1, 5)
            events = {"code": rows[:, 0].astype(np.int32), "a": rows[:, 1].astype(np.int64),
                      "b": rows[:, 2].astype(np.int64), "c": rows[:, 3].astype(np.int64), "time": rows[:, 4]}
        if self.events is not None:
            self.events.extend(zip(*(np.asarray(events[k]).tolist() for k in ("code", "a", "b", "c", "time")), strict=True))
        return self._core.replay_arrays(events["code"], events["a"], events["b"], events["c"], events["time"])

    def next_deadline(self) -> float:
        return self._core.next_deadline()

    def state(self, episode: int) -> int:
        return self._core.state(episode)

    def turns(self, episode: int) -> int:
        return self._core.turns(episode)

    def group_of(self, episode: int) -> int:
        return self._core.group_of(episode)

    def stats(self) -> dict[str, int]:
        return self._core.stats()
