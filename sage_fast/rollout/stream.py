"""A long-lived rollout session: submit GRPO groups at any time, take each one the moment it completes.

Asynchronous RL does not roll out a fixed batch and stop: the trainer submits step k+1's groups
while step k's stragglers still run, and trains on each group as soon as it is whole (the "stream"
figure in bench/RESULTS.md). :class:`RolloutStream` is that session over one engine and one
scheduler core, and the only driver loop in the package (:func:`sage_fast.rollout.driver.run_rollout`
is a fixed batch on a stream; :mod:`sage_fast.rollout.agent_rollout` runs the agent's own loop as
stream episodes). The loop runs as one background asyncio task: it carries out the
scheduler's decisions (admit a turn, start a tool, cut a tool, end an episode, hand over a group)
and feeds back what happened. Everything that completed in one wake-up of the loop, plus the
trailing "time passed", goes to the core in one :meth:`Scheduler.replay` call, in episode order,
which decides exactly as feeding the same events one call at a time would (tests/rollout/test_stream.py).

Failures stay inside their episode: an engine error that survives the engine's retries, or an
episode's own exception, ends that episode as FAILED with its error, and the rest go on. A bug in
the loop itself is raised to whoever awaits the stream (``next_completed``, ``drain``) instead of
leaving them waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from sage_fast.rollout.engines import BusyMeter, Engine
from sage_fast.rollout.episodes import Episode
from sage_fast.rollout.scheduler import DecisionTuple, Impl, Scheduler
from sage_fast.rollout.types import DecisionKind, Event, EventCode, FinishReason, SchedulerConfig, TurnAction


def describe_error(exc: BaseException) -> str:
    """How an episode's error is reported: ``"TypeName: message"``."""
    return f"{type(exc).__name__}: {exc}"


@dataclass
class CompletedGroup:
    """One finished GRPO group: its episodes (their turns recorded) and how each one ended."""

    group: int  # the id submit() returned
    episodes: list[Episode]
    reasons: list[FinishReason]
    errors: list[str | None]  # per episode: "TypeName: message" when it FAILED, else None
    completed_s: float  # on the stream's clock (seconds since it was made)


@dataclass(frozen=True)
class StreamFigures:
    """What the stream has done and cost so far (cumulative since it was made)."""

    seconds: float
    engine_busy_s: float  # time the engine had at least one request in flight
    turns: int  # turns sent to the engine
    tool_calls: int
    tool_timeouts: int
    groups_submitted: int
    groups_completed: int
    episodes: int
    wakeups: int  # driver-loop wake-ups, each one scheduler call for what it found

    @property
    def engine_busy(self) -> float:
        return self.engine_busy_s / self.seconds if self.seconds > 0 else 0.0


class RolloutStream:
    """``stream = RolloutStream(engine, SchedulerConfig(...))``; inside a coroutine,
    ``gid = stream.submit(episodes)`` at any time, ``await stream.next_completed()`` or
    ``async for group in stream.completed()``, ``await stream.drain()``, ``await stream.aclose()``
    (or ``async with``). The engine stays the caller's: closing the stream does not close it."""

    def __init__(self, engine: Engine, config: SchedulerConfig, *, impl: Impl = "auto",
                 clock: Callable[[], float] = time.perf_counter, record: bool = False,
                 close_timeout_s: float = 30.0) -> None:
        if close_timeout_s <= 0:
            raise ValueError(f"close_timeout_s must be > 0 seconds, got {close_timeout_s}")
        self.config = config
        self.close_timeout_s = close_timeout_s  # aclose() waits this long for cut tasks to end
        self.meter = engine if isinstance(engine, BusyMeter) else BusyMeter(engine)
        self._busy0 = self.meter.busy_s
        # record=True keeps every event fed to the core (scheduler.events), to replay a run.
        self.scheduler = Scheduler(config, impl=impl, record=record)
        self.decisions: list[DecisionTuple] = []  # every decision, in the order the core made them
        self._clock = clock
        self._t0 = clock()
        self._episodes: list[Episode] = []
        self._groups: list[tuple[int, int]] = []  # (first episode, size) per group id
        self._reasons: list[FinishReason | None] = []
        self._errors: list[str | None] = []
        self._tasks: dict[asyncio.Task, tuple[str, int]] = {}  # task -> ("generate" | "tool", episode)
        self._running: dict[int, asyncio.Task] = {}  # episode -> its generation or tool task
        self._cut: set[asyncio.Task] = set()  # cancelled, not yet finished: aclose() waits for them
        self._results: dict[int, CompletedGroup] = {}
        self._ready: deque[int] = deque()  # completed groups not yet handed out, in completion order
        self._handed = 0
        self._turns = 0
        self._wakeups = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._waiters: list[asyncio.Future] = []
        self._crash: BaseException | None = None
        self._closed = False

    # -- the caller's side -----------------------------------------------------------------------
    def now(self) -> float:
        """Seconds on the stream's clock (since it was made); every event fed to the core is stamped with it."""
        return self._clock() - self._t0

    def submit(self, group_episodes: Sequence[Episode]) -> int:
        """Adds one GRPO group (its episodes run on this stream's engine) -> its group id (0, 1, ...).
        Call it from a coroutine on the loop that runs the stream, before or while others run."""
        self._check_usable("submit")
        episodes = list(group_episodes)
        if not episodes:
            raise ValueError("submit(): a group needs at least one episode; got an empty sequence")
        prepares = {bool(episode.prepares) for episode in episodes}
        if len(prepares) > 1:
            raise ValueError("submit(): a group's episodes must all prepare or all not (Episode.prepares differs)")
        prepare = prepares.pop()
        self._start_driver()
        cost = 0  # a preparing episode reports its first turn's cost when its set-up ends
        if not prepare:
            try:
                cost = episodes[0].cost()
            except Exception:
                cost = 0  # its first request() will fail the episode, which reports why
        group, decisions = self.scheduler.add_group(len(episodes), cost, self.now(), prepare=prepare)
        if group != len(self._groups):
            raise RuntimeError(f"the scheduler gave group id {group}, the stream expected {len(self._groups)} (bug)")
        self._groups.append((len(self._episodes), len(episodes)))
        self._episodes += episodes
        self._reasons += [None] * len(episodes)
        self._errors += [None] * len(episodes)
        self._act(decisions)
        assert self._wake is not None
        self._wake.set()  # its turns are tasks the sleeping loop does not wait on yet
        return group

    @property
    def outstanding(self) -> int:
        """Groups submitted and not yet handed out (running, waiting, or completed and untaken)."""
        return len(self._groups) - self._handed

    @property
    def running(self) -> int:
        """Groups submitted and not yet complete."""
        return len(self._groups) - len(self._results)

    async def next_completed(self) -> CompletedGroup:
        """The next group to complete (or the oldest completed one not yet taken)."""
        self._check_usable("next_completed")
        while not self._ready:
            if self.outstanding == 0:
                raise RuntimeError("next_completed(): no submitted group is left to hand out; submit() a group "
                                   "first (or iterate `completed()`, which stops when none is left)")
            await self._changed()
            self._check_usable("next_completed")
        self._handed += 1
        return self._results[self._ready.popleft()]

    async def completed(self) -> AsyncIterator[CompletedGroup]:
        """Every group, in completion order, until none is outstanding; groups submitted while
        iterating are waited for too."""
        while self.outstanding:
            yield await self.next_completed()

    async def drain(self) -> None:
        """Waits until every group submitted so far has completed (they stay available to take)."""
        self._check_usable("drain")
        while self.running:
            await self._changed()
            self._check_usable("drain")

    def figures(self) -> StreamFigures:
        stats = self.scheduler.stats()
        return StreamFigures(self.now(), self.meter.busy_s - self._busy0, self._turns, stats["tool_calls"],
                             stats["tool_timeouts"], len(self._groups), len(self._results), len(self._episodes),
                             self._wakeups)

    def group_result(self, group: int) -> CompletedGroup:
        """A completed group by id, whether or not it was handed out (run_rollout's per-input view)."""
        if group not in self._results:
            state = "not submitted" if not 0 <= group < len(self._groups) else "not complete yet"
            raise KeyError(f"group {group} is {state}; await next_completed() or drain() first")
        return self._results[group]

    async def aclose(self) -> list[CompletedGroup]:
        """Cancels every group still running (their tools and turns are cut, their episodes end
        CANCELLED), stops the loop, and returns the groups never handed out, in completion order.
        Any later use of the stream raises; closing twice returns ``[]``."""
        if self._closed:
            return []
        self._closed = True
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a crash was already reported
                await self._driver
        if self._crash is None:
            now = self.now()
            for group in range(len(self._groups)):
                if group not in self._results:
                    self._act(self.scheduler.cancel_group(group, now))  # cancels their tasks too
        for e in list(self._running):
            self._cancel(e)
        if self._cut:
            # Bounded: an engine or tool that ignores cancellation (or a client library that
            # deadlocks while cleaning a cut request up) must not hang the caller's shutdown.
            _, stuck = await asyncio.wait(set(self._cut), timeout=self.close_timeout_s)
            if stuck:
                warnings.warn(f"RolloutStream.aclose(): {len(stuck)} cut task(s) still running after "
                              f"{self.close_timeout_s:g} s (an engine, tool or episode that ignores "
                              "cancellation); left behind", RuntimeWarning, stacklevel=2)
        self._notify()
        left = [self._results[g] for g in self._ready]
        self._handed += len(left)
        self._ready.clear()
        return left

    async def __aenter__(self) -> RolloutStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- checks and waiting ----------------------------------------------------------------------
    def _check_usable(self, what: str) -> None:
        if self._crash is not None:
            raise RuntimeError(f"{what}(): the rollout stream's driver loop failed "
                               f"({describe_error(self._crash)}); its groups are lost, aclose() it and start "
                               "a new RolloutStream") from self._crash
        if self._closed:
            raise RuntimeError(f"{what}(): this RolloutStream is closed (aclose() was called); make a new one")

    def _start_driver(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("submit() must be called from a coroutine (the stream's driver runs on the "
                               "calling event loop); e.g. inside asyncio.run(main())") from None
        if self._driver is None:
            self._loop = loop
            self._wake = asyncio.Event()
            self._driver = loop.create_task(self._drive(), name="RolloutStream driver")
            self._driver.add_done_callback(self._driver_done)
        elif loop is not self._loop:
            raise RuntimeError("submit(): this RolloutStream runs on another event loop; use one stream per loop")

    def _driver_done(self, task: asyncio.Task) -> None:
        if self._closed:
            return  # aclose() stopped it
        if task.cancelled():
            self._crash = RuntimeError("the driver loop was cancelled from outside (is the event loop shutting "
                                       "down?)")
        else:
            self._crash = task.exception() or RuntimeError("the driver loop returned unexpectedly")
        self._notify()

    async def _changed(self) -> None:
        """Waits for the next change: a group completed, the loop failed, or the stream closed."""
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the driver loop -------------------------------------------------------------------------
    async def _drive(self) -> None:
        assert self._wake is not None
        wake: asyncio.Task | None = None
        try:
            while True:
                deadline = self.scheduler.next_deadline()
                timeout = None if deadline == math.inf else max(0.0, deadline - self.now())
                if not self._tasks and timeout is None and self.running:
                    raise RuntimeError(f"rollout stalled: {self.running} group(s) unfinished, nothing running "
                                       "and no time-out pending (scheduler bug)")
                if wake is None or wake.done():
                    self._wake.clear()
                    wake = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait([*self._tasks, wake], timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                done.discard(wake)
                self._wakeups += 1
                self._step(done)
        finally:
            if wake is not None:
                wake.cancel()

    def _step(self, done: set[asyncio.Task]) -> None:
        """One wake-up: every completion found, in episode order, then the advance, in one core call."""
        now = self.now()
        events: list[Event] = []
        settled: set[int] = set()  # episodes whose tool returned in this wake-up
        for task in sorted(done, key=lambda t: self._tasks[t][1]):
            what, e = self._tasks.pop(task)
            self._running.pop(e, None)
            if what == "tool":
                settled.add(e)
            events.append(self._completion(what, e, task, now))
        events.append((int(EventCode.ADVANCE), 0, 0, 0, now))
        self._act(self.scheduler.replay(events), settled)

    def _completion(self, what: str, e: int, task: asyncio.Task, now: float) -> Event:
        """The event a finished generation or tool task reports; a failure becomes a FAIL event."""
        episode = self._episodes[e]
        try:
            result = task.result()  # raises the task's error (CancelledError if the engine dropped it)
            if what == "generate":
                action = episode.on_generation(result)
                cost = episode.cost() if action != TurnAction.ANSWER else 0
                return (int(EventCode.TURN_FINISHED), e, int(action), cost, now)
            if result is not None:  # the episode ended in its tool or set-up step (an agent loop)
                return (int(EventCode.FINISH), e, int(FinishReason(result)), 0, now)
            return (int(EventCode.TOOL_FINISHED), e, episode.cost(), 0, now)
        except (Exception, asyncio.CancelledError) as exc:  # a broken episode or engine call fails alone
            self._errors[e] = describe_error(exc)
            return (int(EventCode.FAIL), e, 0, 0, now)

    def _act(self, decisions: list[DecisionTuple], settled: set[int] | frozenset[int] = frozenset()) -> None:
        pending = deque(decisions)
        while pending:
            decision = pending.popleft()
            kind, e, g, aux, when = decision
            self.decisions.append(decision)
            if kind == DecisionKind.ADMIT:
                try:
                    request = self._episodes[e].request()
                except Exception as exc:  # a broken episode fails alone
                    self._errors[e] = describe_error(exc)
                    pending += self.scheduler.fail(e, self.now())
                    continue
                self._track(asyncio.create_task(self.meter.generate(request)), "generate", e)
                self._turns += 1
            elif kind == DecisionKind.START_TOOL:
                self._track(asyncio.create_task(self._episodes[e].run_tool()), "tool", e)
            elif kind == DecisionKind.PREPARE:  # set-up runs like a tool: its end queues the first turn
                self._track(asyncio.create_task(self._episodes[e].prepare()), "tool", e)
            elif kind == DecisionKind.TOOL_TIMEOUT:
                self._cancel(e)
                # A tool that returned in the same wake-up as its deadline passed already recorded
                # its real result; the next turn sees that rather than a second, made-up error.
                if e not in settled:
                    self._episodes[e].on_tool_timeout(self.config.tool_timeout)
            elif kind == DecisionKind.FINISH:
                self._reasons[e] = FinishReason(aux)
                self._cancel(e)
                try:
                    winding_down = self._episodes[e].close(FinishReason(aux))
                except Exception as exc:  # the episode is over either way; keep its first error
                    self._errors[e] = self._errors[e] or describe_error(exc)
                else:
                    if winding_down is not None:  # aclose() waits for it as for the cut tasks
                        self._cut.add(winding_down)
                        winding_down.add_done_callback(self._cut.discard)
            elif kind == DecisionKind.GROUP_COMPLETE:
                first, size = self._groups[g]
                members = range(first, first + size)
                self._results[g] = CompletedGroup(
                    g, self._episodes[first:first + size],
                    [r if (r := self._reasons[k]) is not None else FinishReason.CANCELLED for k in members],
                    self._errors[first:first + size], when)
                self._ready.append(g)
                self._notify()

    def _track(self, task: asyncio.Task, what: str, e: int) -> None:
        self._tasks[task] = (what, e)
        self._running[e] = task

    def _cancel(self, e: int) -> None:
        task = self._running.pop(e, None)
        if task is not None:
            task.cancel()  # the worker thread of a blocking tool is abandoned, as the registry does
            self._tasks.pop(task, None)
            self._cut.add(task)
            task.add_done_callback(self._cut.discard)
