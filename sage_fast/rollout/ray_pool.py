"""Scale-out on Ray: a pool of rollout workers across nodes, each driving its own engine endpoint.

Each worker is an async Ray actor holding one long-lived RolloutStream (scheduler core and all)
over one engine (its own vLLM/SGLang server, or a local model), so admission limits hold per
engine. The pool sends each GRPO group to one worker (a group never straddles two workers: it
completes where it runs), to the worker with the fewest episodes in flight, at any time, and hands
back each group the moment it completes there, not when the worker's other groups end: one Ray
call per group, which returns with that group. Ray does the distribution; there is no home-made
transport. Needs ``pip install 'sage-fast[rollout]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sage_fast.rollout.types import FinishReason, SchedulerConfig


@dataclass(frozen=True)
class EngineSpec:
    """How a worker builds its engine: ``kind`` is ``openai`` (``base_url``, ``model``),
    ``transformers`` (``model`` folder or hub id) or ``vllm`` (``model`` and engine arguments)."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("openai", "transformers", "vllm"):
            raise ValueError(f"kind must be 'openai', 'transformers' or 'vllm', got {self.kind!r}")

    def build(self) -> Any:
        from sage_fast.rollout import engines

        if self.kind == "openai":
            return engines.OpenAIEngine(**self.options)
        if self.kind == "transformers":
            return engines.TransformersEngine(**self.options)
        return engines.VLLMEngine(**self.options)


@dataclass
class GroupResult:
    """One finished GRPO group, as a worker reports it."""

    group: int  # the pool's group id (submit's return value; the index in the list given to run/iter_results)
    worker: int
    reasons: list[FinishReason]
    errors: list[str | None]
    summaries: list[dict[str, Any]]


# Ray runs at most this many calls of an async actor at once; each group in flight on a worker is
# one call waiting for its group, so this bounds a worker's groups in flight, not its episodes.
MAX_GROUPS_PER_WORKER = 4096


class RolloutWorker:
    """The actor body (wrapped with ``ray.remote`` by the pool): one engine, one RolloutStream.

    Its methods are coroutines, so Ray makes it an async actor: every :meth:`run_group` call runs
    at once on the actor's event loop, where the stream's driver loop runs in the background."""

    def __init__(self, index: int, engine: EngineSpec, factory: Callable[[Any], Any], config: SchedulerConfig,
                 impl: str = "auto") -> None:
        self.index = index
        self.engine = engine.build()
        self.factory = factory
        self.make_episode: Callable[[Any], Any] = factory
        self.config = config
        self.impl = impl
        self.stream: Any = None  # made on the actor's event loop, at the first group
        self._waiting: dict[int, tuple[int, asyncio.Future]] = {}  # stream group id -> (pool id, its future)
        self._pump: asyncio.Task | None = None

    async def run_group(self, group: int, specs: list[Any]) -> GroupResult:
        """Submits one group (``group`` is the pool's id) and returns its result when it completes."""
        from sage_fast.rollout.stream import RolloutStream

        if self.stream is None:
            self.stream = RolloutStream(self.engine, self.config, impl=self.impl)  # type: ignore[arg-type]
            # A factory with bind(engine) (AgentEpisodeFactory) builds what its episodes share
            # here, once, on this worker's engine and event loop.
            bind = getattr(self.factory, "bind", None)
            self.make_episode = bind(self.engine) if bind is not None else self.factory
        episodes = [self.make_episode(spec) for spec in specs]
        done = asyncio.get_running_loop().create_future()
        self._waiting[self.stream.submit(episodes)] = (group, done)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._hand_out())
        return await done

    async def _hand_out(self) -> None:
        """Resolves each waiting call as its group completes (the stream hands groups out in
        completion order; a call waits for its own group)."""
        try:
            while self._waiting:
                completed = await self.stream.next_completed()
                group, done = self._waiting.pop(completed.group)
                if not done.done():
                    done.set_result(GroupResult(group, self.index, completed.reasons, completed.errors,
                                                [ep.summary() for ep in completed.episodes]))
        except Exception as exc:  # the stream failed: every call still waiting gets its error
            self._fail_waiting(exc)
        except asyncio.CancelledError:
            self._fail_waiting(RuntimeError(f"rollout worker {self.index} was stopped"))
            raise

    def _fail_waiting(self, exc: Exception) -> None:
        for _, done in self._waiting.values():
            if not done.done():
                done.set_exception(exc)
        self._waiting.clear()

    async def figures(self) -> dict[str, float]:
        """The worker's stream figures so far (cumulative): seconds, engine_busy_s, turns, tool calls, ..."""
        if self.stream is None:
            return {}
        return dataclasses.asdict(self.stream.figures())

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
        await self.engine.aclose()


class RayRolloutPool:
    """``RayRolloutPool([EngineSpec("openai", {...}), ...], factory, config)``. Streaming:
    ``pool.submit(group)`` at any time (to the worker with the fewest episodes in flight), then
    ``for result in pool.results(): ...`` (each group as soon as it completes, submitting more
    inside the loop is fine) or ``pool.next_result()``. Batch: ``run(groups)`` or
    ``iter_results(groups)``. Call :func:`ray.init` first to pick the cluster. ``factory(spec)``
    makes one episode inside a worker; a factory with ``bind(engine)`` (SAGE's agent:
    :class:`~sage_fast.rollout.agent_rollout.AgentEpisodeFactory`) is bound there first."""

    def __init__(self, engines: Sequence[EngineSpec], factory: Callable[[Any], Any], config: SchedulerConfig, *,
                 num_cpus: float = 0.5, num_gpus: float = 0.0, impl: str = "auto") -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("RayRolloutPool needs Ray: pip install 'sage-fast[rollout]'") from exc
        if not engines:
            raise ValueError("engines must name at least one engine endpoint (one worker each)")
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True)
        self._ray = ray
        actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=MAX_GROUPS_PER_WORKER)(RolloutWorker)
        self.workers = [actor.remote(i, spec, factory, config, impl) for i, spec in enumerate(engines)]
        self.last_figures: list[dict[str, float]] = []
        self._next_id = 0
        self._refs: dict[Any, tuple[int, int, int]] = {}  # in flight: ref -> (group id, worker, episodes)
        self._episodes = [0] * len(self.workers)  # episodes in flight per worker
        self._groups = [0] * len(self.workers)  # groups in flight per worker

    # -- streaming -------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Groups submitted whose results have not been handed out yet."""
        return len(self._refs)

    def submit(self, group: Sequence[Any], *, worker: int | None = None) -> int:
        """Sends one group of episode specs to ``worker`` (default: the one with the fewest
        episodes in flight, ties to the lower index) -> the group's id (0, 1, ... per pool)."""
        specs = list(group)
        if not specs:
            raise ValueError("submit(): a group needs at least one episode spec; got an empty sequence")
        if not self.workers:
            raise RuntimeError("submit(): this RayRolloutPool is closed; make a new one")
        if worker is None:
            worker = min(range(len(self.workers)), key=lambda w: (self._episodes[w], w))
        elif not 0 <= worker < len(self.workers):
            raise ValueError(f"worker must be in 0..{len(self.workers) - 1}, got {worker}")
        gid = self._next_id
        self._next_id += 1
        self._refs[self.workers[worker].run_group.remote(gid, specs)] = (gid, worker, len(specs))
        self._episodes[worker] += len(specs)
        self._groups[worker] += 1
        return gid

    def next_result(self, timeout: float | None = None) -> GroupResult:
        """The next group to complete on any worker; ``TimeoutError`` after ``timeout`` seconds."""
        if not self._refs:
            raise RuntimeError("next_result(): no group is in flight; submit() one first")
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError(f"next_result(): no group completed within {timeout} s "
                               f"({len(self._refs)} in flight)")
        gid, worker, size = self._refs.pop(ready[0])
        self._episodes[worker] -= size
        self._groups[worker] -= 1
        try:
            return self._ray.get(ready[0])
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the worker's own error
            raise RuntimeError(f"group {gid} failed on worker {worker}: {type(cause).__name__}: {cause}") from exc

    def results(self) -> Iterator[GroupResult]:
        """Every group in flight, each as soon as it completes, until none is left (groups
        submitted while iterating included)."""
        while self._refs:
            yield self.next_result()

    # -- batch -----------------------------------------------------------------------------------
    def _deal(self, groups: Sequence[Sequence[Any]]) -> list[list[int]]:
        """Group indices per worker: largest first to the least-loaded (by episode count), ties to
        the lower index; each worker's share in input order."""
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError("groups must be a non-empty list of non-empty lists of episode specs")
        shares: list[list[int]] = [[] for _ in self.workers]
        load = [0] * len(self.workers)
        for index in sorted(range(len(groups)), key=lambda i: -len(groups[i])):
            w = min(range(len(load)), key=lambda k: (load[k], k))
            shares[w].append(index)
            load[w] += len(groups[index])
        return [sorted(share) for share in shares]

    def iter_results(self, groups: Sequence[Sequence[Any]], *, chunk: int | None = None) -> Iterator[GroupResult]:
        """Yields every group's result as soon as it completes (``group`` = its index in
        ``groups``). ``chunk=None`` deals all groups up front, balanced by episode count (each
        worker overlaps all of its groups); ``chunk=k`` keeps at most ``k`` groups in flight per
        worker and hands the next group, in order, to the least-loaded worker with room as each
        one completes, which evens out workers whose endpoints or episodes turn out slower."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 group (or None to deal everything up front), got {chunk}")
        shares = self._deal(groups)  # the input checks, whatever the mode
        if self._refs:
            raise RuntimeError(f"iter_results(): {len(self._refs)} streamed group(s) are still in flight; take "
                               "them with results() first")
        before = self._ray.get([w.figures.remote() for w in self.workers])
        index: dict[int, int] = {}  # pool group id -> index in groups
        if chunk is None:
            for w, share in enumerate(shares):
                for i in share:
                    index[self.submit(groups[i], worker=w)] = i
            queue: list[int] = []
        else:
            queue = list(range(len(groups)))

        def refill() -> None:
            while queue:
                room = [w for w in range(len(self.workers)) if self._groups[w] < chunk]  # type: ignore[operator]
                if not room:
                    return
                w = min(room, key=lambda k: (self._episodes[k], k))
                i = queue.pop(0)
                index[self.submit(groups[i], worker=w)] = i

        refill()
        while self._refs:
            result = self.next_result()
            result.group = index[result.group]
            refill()
            yield result
        after = self._ray.get([w.figures.remote() for w in self.workers])
        self.last_figures = [{k: v - b.get(k, 0) for k, v in a.items()} for a, b in zip(after, before, strict=True)]

    def run(self, groups: Sequence[Sequence[Any]], *, chunk: int | None = None) -> list[GroupResult]:
        """Every group's result, in the order of ``groups``."""
        return sorted(self.iter_results(groups, chunk=chunk), key=lambda r: r.group)

    def close(self) -> None:
        """Cancels whatever still runs on the workers, closes their engines, and ends the actors."""
        for worker in self.workers:
            with contextlib.suppress(Exception):  # a dead worker has nothing left to close
                self._ray.get(worker.close.remote())
            self._ray.kill(worker)
        self.workers = []
        self._refs.clear()
