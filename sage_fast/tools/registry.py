"""The tools an agent may call: lookup by name, argument validation, time-outs, retries, the
shared result cache, and every failure turned into a result message instead of an exception (the
TRL tool-loop pattern).

Tools run in worker threads: a hung tool is cut at its time-out (the thread is abandoned, the
episode goes on with an error result), and :meth:`ToolRegistry.acall` lets an asyncio driver (the
agent's :meth:`~sage_fast.agent.loop.Agent.arun`, the rollout scheduler) keep generating for other
episodes while one episode's tool runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sage_fast.agent.parsing import ToolCall
from sage_fast.agent.trajectory import ToolCallRecord
from sage_fast.tools.cache import ToolResultCache, content_fingerprint
from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.tools.retry import RetryPolicy, call_with_retries
from sage_fast.tools.schema import function_schema, validate_arguments
from sage_fast.video.timecode import parse_timestamp

DEFAULT_TIMEOUT_S = 300.0


@dataclass
class Tool:
    """A callable ``fn(context, **arguments) -> str`` with the schema the model sees.

    ``cacheable``: whether results may be reused across episodes (False for tools whose result
    names files in the episode's own work folder). ``backend``: what else the result depends on
    (the tool model, the speech model, the search provider), part of the cache key; taken from
    the bound object's ``cache_identity`` when not given.
    """

    fn: Callable[..., str]
    name: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cacheable: bool = True
    backend: str = ""
    schema: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.fn.__name__
        self.schema = self.schema or function_schema(self.fn, name=self.name)
        if not self.backend:
            self.backend = str(getattr(getattr(self.fn, "__self__", None), "cache_identity", ""))
        if getattr(self.fn, "sage_not_cacheable", False):
            self.cacheable = False
        if self.timeout_s <= 0:
            raise ValueError(f"tool {self.name!r}: timeout_s must be positive, got {self.timeout_s}")


def _canonical(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def cache_arguments(context: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments as the cache sees them: content instead of paths, seconds instead of spellings.

    ``video_path`` is dropped (the video's fingerprint is part of the key already); each of
    ``media_paths`` becomes its file's fingerprint (episode work folders differ, contents may
    not); ``timestamp*`` strings become seconds, so "0:01:00" and "00:01:00" share an entry.
    """
    normalized: dict[str, Any] = {}
    for name, value in arguments.items():
        if name == "video_path":
            continue
        if name == "media_paths" and isinstance(value, list):
            normalized[name] = [content_fingerprint(context.check_media_path(str(v))) for v in value]
        elif "timestamp" in name and isinstance(value, str):
            try:
                normalized[name] = round(parse_timestamp(value, name=name), 3)
            except ValueError:
                normalized[name] = value
        else:
            normalized[name] = value
    return normalized


@dataclass
class _Running:
    """A tool call started in a worker thread."""

    tool: Tool
    cache_key: str | None
    future: concurrent.futures.Future
    started: float


class ToolRegistry:
    """Runs tool calls for one agent (or many episodes of one agent at once)."""

    def __init__(self, tools: Iterable[Tool | Callable[..., str]], *, max_workers: int = 8,
                 cache: ToolResultCache | None = None) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            tool = tool if isinstance(tool, Tool) else Tool(tool)
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self.cache = cache
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sage-tool")

    @property
    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema for tool in self.tools.values()]

    def _prepare(self, context: ToolContext, call: ToolCall,
                 history: list[ToolCallRecord]) -> tuple[ToolCallRecord, Tool | None, str | None]:
        """Checks the call; returns the record, the tool to run (None when the record is final)
        and the cache key (None when the result must not be cached)."""
        record = ToolCallRecord(name=call.name, arguments=dict(call.arguments), rationale=call.rationale)
        tool = self.tools.get(call.name)
        if tool is None:
            record.valid, record.error = False, True
            record.result = f"Unknown tool {call.name!r}. Available tools: {', '.join(self.tools)}."
            return record, None, None
        checked = validate_arguments(tool.schema, call.arguments)
        record.validated_arguments = checked.arguments
        record.dropped_arguments = list(checked.dropped)
        key = _canonical(checked.arguments)
        record.repeat = sum(1 for h in history if h.name == call.name and _canonical(h.validated_arguments) == key)
        if not checked.valid:
            record.valid, record.error = False, True
            record.result = checked.error_message(call.name)
            return record, None, None
        cache_key = None
        if self.cache is not None and tool.cacheable:
            try:
                if "video_path" in checked.arguments:
                    context.check_video_path(str(checked.arguments["video_path"]))
                cache_key = self.cache.key(tool.name, tool.backend, content_fingerprint(context.video_path),
                                           cache_arguments(context, checked.arguments))
            except (ToolInputError, OSError):
                cache_key = None  # the tool itself will reject the call with the precise message
            if cache_key is not None and (hit := self.cache.get(cache_key)) is not None:
                record.result, record.cached = hit.result, True
                return record, None, None
        return record, tool, cache_key

    def _execute(self, tool: Tool, context: ToolContext, record: ToolCallRecord) -> str:
        """Runs in a worker thread: the tool with its retry policy, inside the tool's time-out."""
        deadline = time.monotonic() + tool.timeout_s

        def count(_attempt: int, _exc: BaseException) -> None:
            record.attempts += 1

        return str(call_with_retries(lambda: tool.fn(context, **record.validated_arguments), tool.retry,
                                     deadline=deadline, on_retry=count))

    def _start(self, context: ToolContext, call: ToolCall,
               history: list[ToolCallRecord]) -> tuple[ToolCallRecord, _Running | None]:
        """Checks ``call`` and, unless its record is already final (rejected, or a cache hit),
        starts it in a worker thread."""
        record, tool, cache_key = self._prepare(context, call, history)
        if tool is None:
            return record, None
        future = self._pool.submit(self._execute, tool, context, record)
        return record, _Running(tool, cache_key, future, time.perf_counter())

    def _settle(self, record: ToolCallRecord, running: _Running, exc: BaseException | None) -> ToolCallRecord:
        tool = running.tool
        if exc is None:
            record.result = running.future.result()
        elif isinstance(exc, (concurrent.futures.TimeoutError, asyncio.TimeoutError)):
            record.error = True
            record.result = f"{record.name} timed out after {tool.timeout_s:g} s; try a shorter window or another tool."
        elif isinstance(exc, ToolInputError):
            record.valid, record.error = False, True
            record.result = f"Invalid arguments for {record.name}: {exc}"
        else:  # a tool's own failure is a result the model can react to
            record.error = True
            record.result = f"{record.name} failed: {type(exc).__name__}: {exc}"
        record.seconds = time.perf_counter() - running.started
        if running.cache_key is not None and not record.error and self.cache is not None:
            self.cache.put(running.cache_key, record.result, tool_seconds=record.seconds,
                           describe={"tool": record.name, "arguments": record.validated_arguments})
        return record

    def call(self, context: ToolContext, call: ToolCall, history: list[ToolCallRecord]) -> ToolCallRecord:
        """Validates and runs ``call``; ``history`` (earlier calls of the episode) counts repeats."""
        record, running = self._start(context, call, history)
        if running is None:
            return record
        try:
            running.future.result(timeout=running.tool.timeout_s)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the tool's result
            return self._settle(record, running, exc)
        return self._settle(record, running, None)

    async def acall(self, context: ToolContext, call: ToolCall, history: list[ToolCallRecord]) -> ToolCallRecord:
        """:meth:`call` for asyncio drivers: the event loop stays free while the tool runs (and
        while the cache is consulted, which reads files)."""
        record, running = await asyncio.to_thread(self._start, context, call, history)
        if running is None:
            return record
        try:
            await asyncio.wait_for(asyncio.wrap_future(running.future), timeout=running.tool.timeout_s)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the tool's result
            return self._settle(record, running, exc)
        return self._settle(record, running, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
