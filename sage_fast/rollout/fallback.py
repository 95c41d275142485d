"""Pure-Python rollout scheduler: the same state machine as the C++ core, decision for decision.

Used when the compiled core is missing, and as the readable specification of the core: every
event checks the clock, fires the time-outs due by ``now`` in deadline order, applies itself,
activates waiting groups and admits ready turns, exactly as csrc/scheduler/scheduler.cpp does.
Both return decisions as ``(kind, episode, group, aux, time)`` tuples, so their logs compare with
``==`` (tests/rollout/test_scheduler.py).
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from sage_fast.rollout.types import (
    DecisionKind,
    EpisodeState,
    EventCode,
    FinishReason,
    SchedulerConfig,
    TurnAction,
)

_ADMIT, _START_TOOL, _TOOL_TIMEOUT, _FINISH, _GROUP_COMPLETE, _PREPARE = (int(k) for k in DecisionKind)
_PENDING, _READY, _GENERATING, _IN_TOOL, _DONE = (int(s) for s in EpisodeState)


class PyScheduler:
    """``PyScheduler(max_seqs, max_tokens, max_turns, tool_timeout, episode_timeout,
    max_active_groups, group_priority)``: the C++ ``RolloutScheduler``'s constructor and methods."""

    def __init__(self, max_seqs: int, max_tokens: int, max_turns: int, tool_timeout: float,
                 episode_timeout: float, max_active_groups: int, group_priority: bool) -> None:
        SchedulerConfig(max_seqs, max_tokens, max_turns, tool_timeout, episode_timeout, max_active_groups,
                        group_priority)  # the same argument checks as the core
        self._max_seqs, self._max_tokens, self._max_turns = max_seqs, max_tokens, max_turns
        self._tool_timeout, self._episode_timeout = float(tool_timeout), float(episode_timeout)
        self._max_active_groups, self._group_priority = max_active_groups, bool(group_priority)
        # Episodes as parallel lists: cheaper than objects on the hot path.
        self._group: list[int] = []
        self._state: list[int] = []
        self._turns: list[int] = []
        self._cost: list[int] = []
        self._ready_seq: list[int] = []
        self._tool_epoch: list[int] = []
        self._started: list[bool] = []
        self._groups: list[list] = []  # [first, size, done, active, prepare]
        self._ready: list[tuple[int, int, int]] = []  # (priority, seq, episode)
        self._deadlines: list[tuple[float, int, int, int, int]] = []  # (deadline, seq, episode, kind, epoch)
        self._next_pending_group = 0
        self._active_groups = 0
        self._seq = 0
        self._now = -math.inf
        self._out: list[tuple[int, int, int, int, float]] = []
        self._stats = dict(seqs_in_flight=0, tokens_in_flight=0, episodes=0, groups=0, done=0, groups_done=0,
                           admitted_turns=0, tool_calls=0, tool_timeouts=0, decisions=0)

    # -- internals (names follow scheduler.cpp) ------------------------------------------------
    def _check_time(self, now: float) -> None:
        if math.isnan(now):
            raise ValueError("now is NaN; pass the driver clock's time in seconds")
        if now < self._now:
            raise ValueError(f"now went backwards ({now} < {self._now}); feed events in time order")
        self._now = now

    def _episode(self, episode: int, what: str) -> int:
        if not 0 <= episode < len(self._state):
            raise IndexError(f"{what}: unknown episode {episode} (have {len(self._state)})")
        return episode

    def _emit(self, kind: int, e: int, g: int, aux: int, now: float) -> None:
        self._out.append((kind, e, g, aux, now))
        self._stats["decisions"] += 1

    def _make_ready(self, e: int) -> None:
        self._state[e] = _READY
        seq = self._seq
        self._seq += 1
        self._ready_seq[e] = seq
        heapq.heappush(self._ready, (self._group[e] if self._group_priority else 0, seq, e))

    def _finish(self, e: int, reason: int, now: float) -> None:
        stats = self._stats
        if self._state[e] == _GENERATING:
            stats["seqs_in_flight"] -= 1
            stats["tokens_in_flight"] -= self._cost[e]
        self._state[e] = _DONE
        stats["done"] += 1
        g = self._group[e]
        self._emit(_FINISH, e, g, reason, now)
        group = self._groups[g]
        group[2] += 1
        if group[2] == group[1]:
            stats["groups_done"] += 1
            self._emit(_GROUP_COMPLETE, -1, g, 0, now)
            if group[3]:
                self._active_groups -= 1

    def _live(self, d: tuple[float, int, int, int, int]) -> bool:
        e = d[2]
        if d[3] == 0:
            return self._state[e] == _IN_TOOL and self._tool_epoch[e] == d[4]
        return self._state[e] != _DONE

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            d = heapq.heappop(deadlines)
            if not self._live(d):
                continue
            when, e = d[0], d[2]
            if d[3] == 0:
                self._stats["tool_timeouts"] += 1
                self._emit(_TOOL_TIMEOUT, e, self._group[e], self._turns[e] - 1, when)
                self._make_ready(e)  # the episode goes on with an error result
            else:
                self._finish(e, int(FinishReason.TIMEOUT), when)

    def _activate_groups(self) -> None:
        while self._next_pending_group < len(self._groups) and (
                self._max_active_groups == 0 or self._active_groups < self._max_active_groups):
            group = self._groups[self._next_pending_group]
            self._next_pending_group += 1
            if group[2] == group[1]:
                continue  # cancelled while waiting
            group[3] = True
            self._active_groups += 1
            for e in range(group[0], group[0] + group[1]):
                if self._state[e] != _PENDING:
                    continue
                if group[4]:
                    self._state[e] = _IN_TOOL  # set-up runs like a tool without a time-out
                    self._emit(_PREPARE, e, self._group[e], 0, self._now)
                else:
                    self._make_ready(e)

    def _admit(self, now: float) -> None:
        self._activate_groups()
        ready, stats = self._ready, self._stats
        while ready and stats["seqs_in_flight"] < self._max_seqs:
            _, seq, e = ready[0]
            if self._state[e] != _READY or self._ready_seq[e] != seq:
                heapq.heappop(ready)
                continue
            if stats["seqs_in_flight"] > 0 and stats["tokens_in_flight"] + self._cost[e] > self._max_tokens:
                break  # keep head-of-line order; it goes alone when nothing else generates
            heapq.heappop(ready)
            self._state[e] = _GENERATING
            self._turns[e] += 1
            stats["seqs_in_flight"] += 1
            stats["tokens_in_flight"] += self._cost[e]
            stats["admitted_turns"] += 1
            if not self._started[e]:
                self._started[e] = True
                if self._episode_timeout > 0:
                    heapq.heappush(self._deadlines, (now + self._episode_timeout, self._seq, e, 1, 0))
                    self._seq += 1
            self._emit(_ADMIT, e, self._group[e], self._turns[e] - 1, now)

    def _take(self) -> list[tuple[int, int, int, int, float]]:
        out, self._out = self._out, []
        return out

    # -- events ------------------------------------------------------------------------------
    def add_group(self, size: int, cost: int, now: float,
                  prepare: bool = False) -> tuple[int, list[tuple[int, int, int, int, float]]]:
        if size < 1:
            raise ValueError(f"size must be >= 1 episodes, got {size}")
        if cost < 0:
            raise ValueError(f"cost must be >= 0 tokens, got {cost}")
        self._check_time(now)
        self._expire(now)
        g = len(self._groups)
        first = len(self._state)
        self._groups.append([first, size, 0, False, bool(prepare)])
        self._group += [g] * size
        self._state += [_PENDING] * size
        self._turns += [0] * size
        self._cost += [cost] * size
        self._ready_seq += [-1] * size
        self._tool_epoch += [0] * size
        self._started += [False] * size
        self._stats["groups"] += 1
        self._stats["episodes"] += size
        self._admit(now)
        return g, self._take()

    def turn_finished(self, episode: int, action: int, next_cost: int, now: float) -> list:
        if not 0 <= action <= 2:
            raise ValueError(f"action must be 0 (answer), 1 (tool) or 2 (continue), got {action}")
        if next_cost < 0:
            raise ValueError(f"next_cost must be >= 0 tokens, got {next_cost}")
        e = self._episode(episode, "turn_finished")
        self._check_time(now)
        self._expire(now)
        if self._state[e] == _GENERATING:
            stats = self._stats
            stats["seqs_in_flight"] -= 1
            stats["tokens_in_flight"] -= self._cost[e]
            self._cost[e] = next_cost
            self._state[e] = _PENDING  # off the engine; every branch below sets the next state
            if action == TurnAction.ANSWER:
                self._finish(e, int(FinishReason.ANSWERED), now)
            elif self._turns[e] >= self._max_turns:
                self._finish(e, int(FinishReason.TURN_CAP), now)
            elif action == TurnAction.TOOL:
                self._state[e] = _IN_TOOL
                self._tool_epoch[e] += 1
                stats["tool_calls"] += 1
                self._emit(_START_TOOL, e, self._group[e], self._turns[e] - 1, now)
                if self._tool_timeout > 0:
                    heapq.heappush(self._deadlines, (now + self._tool_timeout, self._seq, e, 0, self._tool_epoch[e]))
                    self._seq += 1
            else:
                self._make_ready(e)
        self._admit(now)
        return self._take()

    def tool_finished(self, episode: int, next_cost: int, now: float) -> list:
        if next_cost < 0:
            raise ValueError(f"next_cost must be >= 0 tokens, got {next_cost}")
        e = self._episode(episode, "tool_finished")
        self._check_time(now)
        self._expire(now)
        if self._state[e] == _IN_TOOL:
            self._cost[e] = next_cost
            self._make_ready(e)
        self._admit(now)
        return self._take()

    def advance(self, now: float) -> list:
        self._check_time(now)
        self._expire(now)
        self._admit(now)
        return self._take()

    def _end(self, episode: int, reason: int, now: float, what: str) -> list:
        e = self._episode(episode, what)
        self._check_time(now)
        self._expire(now)
        if self._state[e] != _DONE:
            self._finish(e, reason, now)
        self._admit(now)
        return self._take()

    def fail(self, episode: int, now: float) -> list:
        return self._end(episode, int(FinishReason.FAILED), now, "fail")

    def cancel(self, episode: int, now: float) -> list:
        return self._end(episode, int(FinishReason.CANCELLED), now, "cancel")

    def finish(self, episode: int, reason: int, now: float) -> list:
        if not 0 <= reason <= 4:
            raise ValueError(f"reason must be 0 (answered) .. 4 (failed), got {reason}")
        return self._end(episode, int(reason), now, "finish")

    def cancel_group(self, group: int, now: float) -> list:
        if not 0 <= group < len(self._groups):
            raise IndexError(f"cancel_group: unknown group {group}")
        self._check_time(now)
        self._expire(now)
        first, size = self._groups[group][0], self._groups[group][1]
        for e in range(first, first + size):
            if self._state[e] != _DONE:
                self._finish(e, int(FinishReason.CANCELLED), now)
        self._admit(now)
        return self._take()

    def replay(self, events: list[tuple[int, int, int, int, float]]) -> list:
        """Feeds recorded ``(code, a, b, c, time)`` events and returns every decision, in order."""
        out: list = []
        for code, a, b, c, t in events:
            if code == EventCode.ADD_GROUP:
                out += self.add_group(a, b, t, c != 0)[1]
            elif code == EventCode.TURN_FINISHED:
                out += self.turn_finished(a, b, c, t)
            elif code == EventCode.TOOL_FINISHED:
                out += self.tool_finished(a, b, t)
            elif code == EventCode.ADVANCE:
                out += self.advance(t)
            elif code == EventCode.FAIL:
                out += self.fail(a, t)
            elif code == EventCode.CANCEL:
                out += self.cancel(a, t)
            elif code == EventCode.CANCEL_GROUP:
                out += self.cancel_group(a, t)
            elif code == EventCode.FINISH:
                out += self.finish(a, b, t)
            else:
                raise ValueError(f"unknown event code {code}")
        return out

    def replay_arrays(self, code: Any, a: Any, b: Any, c: Any, time: Any) -> dict[str, np.ndarray]:
        """:meth:`replay` over column arrays -> ``kind, episode, group, aux, time`` arrays (as the core)."""
        lengths = {len(code), len(a), len(b), len(c), len(time)}
        if len(lengths) != 1:
            raise ValueError("code, a, b, c and time must be 1-D arrays of the same length")
        cols = [np.asarray(x).tolist() for x in (code, a, b, c, time)]
        out = self.replay(list(zip(*cols, strict=True)))
        kind, episode, group, aux, when = zip(*out, strict=True) if out else ((),) * 5
        return {"kind": np.asarray(kind, np.int32), "episode": np.asarray(episode, np.int64),
                "group": np.asarray(group, np.int64), "aux": np.asarray(aux, np.int32),
                "time": np.asarray(when, np.float64)}

    # -- queries -----------------------------------------------------------------------------
    def next_deadline(self) -> float:
        deadlines = self._deadlines
        while deadlines and not self._live(deadlines[0]):
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else math.inf

    def state(self, episode: int) -> int:
        return self._state[self._episode(episode, "state")]

    def turns(self, episode: int) -> int:
        return self._turns[self._episode(episode, "turns")]

    def group_of(self, episode: int) -> int:
        return self._group[self._episode(episode, "group_of")]

    def stats(self) -> dict[str, int]:
        return dict(self._stats)
