"""Scale-out on Ray: a pool of rollout workers across nodes, each driving its own engine endpoint.

Each worker is a Ray actor that runs the asynchronous driver (scheduler core and all) against
one engine (its own vLLM/SGLang server, or a local model), so admission limits hold per engine.
The pool deals GRPO groups to workers (a group never straddles two workers: it completes where it
runs) and yields each worker's groups as soon as that worker finishes. Ray does the distribution;
there is no home-made transport. Needs ``pip install 'sage-fast[rollout]'``.
"""

from __future__ import annotations

import contextlib
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

    group: int  # index in the list given to the pool
    worker: int
    reasons: list[FinishReason]
    errors: list[str | None]
    summaries: list[dict[str, Any]]


class RolloutWorker:
    """The actor body (wrapped with ``ray.remote`` by the pool): one engine, one driver."""

    def __init__(self, index: int, engine: EngineSpec, factory: Callable[[Any], Any], config: SchedulerConfig,
                 impl: str = "auto") -> None:
        self.index = index
        self.engine = engine.build()
        self.factory = factory
        self.config = config
        self.impl = impl

    async def rollout(self, groups: list[tuple[int, list[Any]]]) -> tuple[list[GroupResult], dict[str, float]]:
        """Runs ``[(group index, [episode spec, ...]), ...]``; returns the groups and the run's figures."""
        from sage_fast.rollout.driver import run_rollout

        episodes = [[self.factory(spec) for spec in specs] for _, specs in groups]
        result = await run_rollout(episodes, self.engine, self.config, impl=self.impl)  # type: ignore[arg-type]
        out, k = [], 0
        for (index, _), members in zip(groups, episodes, strict=True):
            n = len(members)
            out.append(GroupResult(index, self.index, result.reasons[k:k + n], result.errors[k:k + n],
                                   [ep.summary() for ep in members]))
            k += n
        return out, {"seconds": result.seconds, "engine_busy_s": result.engine_busy_s, "turns": result.turns}

    async def close(self) -> None:
        await self.engine.aclose()


class RayRolloutPool:
    """``RayRolloutPool([EngineSpec("openai", {...}), ...], factory, config)``; ``run(groups)`` or
    ``iter_results(groups)``. Call :func:`ray.init` first (or pass ``address``) to pick the cluster."""

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
        actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(RolloutWorker)
        self.workers = [actor.remote(i, spec, factory, config, impl) for i, spec in enumerate(engines)]
        self.last_figures: list[dict[str, float]] = []

    def _deal(self, groups: Sequence[Sequence[Any]]) -> list[list[tuple[int, list[Any]]]]:
        """Groups to workers, largest first to the least-loaded (by episode count), ties to the lower index."""
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError("groups must be a non-empty list of non-empty lists of episode specs")
        shares: list[list[tuple[int, list[Any]]]] = [[] for _ in self.workers]
        load = [0] * len(self.workers)
        for index in sorted(range(len(groups)), key=lambda i: -len(groups[i])):
            w = min(range(len(load)), key=lambda k: (load[k], k))
            shares[w].append((index, list(groups[index])))
            load[w] += len(groups[index])
        for share in shares:
            share.sort(key=lambda item: item[0])
        return shares

    def iter_results(self, groups: Sequence[Sequence[Any]], *, chunk: int | None = None) -> Iterator[GroupResult]:
        """Yields every group's result as its worker hands it back. ``chunk=None`` deals all groups
        up front, balanced by episode count (each worker overlaps all of its groups); ``chunk=k``
        hands out ``k`` groups at a time to whichever worker is free, in order, which evens out
        workers whose endpoints or episodes turn out slower than the others."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 group (or None to deal everything up front), got {chunk}")
        self.last_figures = [{} for _ in self.workers]
        if chunk is None:
            queue = [(w, share) for w, share in enumerate(self._deal(groups)) if share]
        else:
            self._deal(groups)  # the same input checks
            queue = [(-1, [(i, list(groups[i])) for i in range(k, min(k + chunk, len(groups)))])
                     for k in range(0, len(groups), chunk)]
        refs: dict[Any, int] = {}
        free = list(range(len(self.workers)))

        def submit() -> None:
            while queue and (free or queue[0][0] >= 0):
                w, share = queue.pop(0)
                if w < 0:
                    w = free.pop(0)
                elif w in free:
                    free.remove(w)
                refs[self.workers[w].rollout.remote(share)] = w

        submit()
        while refs:
            ready, _ = self._ray.wait(list(refs), num_returns=1)
            w = refs.pop(ready[0])
            results, figures = self._ray.get(ready[0])
            self.last_figures[w] = figures
            free.append(w)
            submit()
            yield from results

    def run(self, groups: Sequence[Sequence[Any]], *, chunk: int | None = None) -> list[GroupResult]:
        """Every group's result, in the order of ``groups``."""
        return sorted(self.iter_results(groups, chunk=chunk), key=lambda r: r.group)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):  # a dead worker has nothing left to close
                self._ray.get(worker.close.remote())
            self._ray.kill(worker)
        self.workers = []
