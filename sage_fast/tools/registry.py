"""The tools an agent may call: lookup by name, argument validation, time-outs, and every
failure turned into a result message instead of an exception (the TRL tool-loop pattern)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sage_fast.agent.parsing import ToolCall
from sage_fast.agent.trajectory import ToolCallRecord
from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.tools.schema import function_schema, validate_arguments

DEFAULT_TIMEOUT_S = 300.0


@dataclass
class Tool:
    """A callable ``fn(context, **arguments) -> str`` with the schema the model sees."""

    fn: Callable[..., str]
    name: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    schema: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or self.fn.__name__
        self.schema = self.schema or function_schema(self.fn, name=self.name)


def _canonical(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False)


class ToolRegistry:
    """Runs tool calls for one agent; tools run in worker threads so a hung tool is cut at its
    time-out (the thread is abandoned, the episode goes on with an error result)."""

    def __init__(self, tools: Iterable[Tool | Callable[..., str]], *, max_workers: int = 8) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            tool = tool if isinstance(tool, Tool) else Tool(tool)
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sage-tool")

    @property
    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema for tool in self.tools.values()]

    def call(self, context: ToolContext, call: ToolCall, history: list[ToolCallRecord]) -> ToolCallRecord:
        """Validates and runs ``call``; ``history`` (earlier calls of the episode) counts repeats."""
        record = ToolCallRecord(name=call.name, arguments=dict(call.arguments), rationale=call.rationale)
        tool = self.tools.get(call.name)
        if tool is None:
            record.valid, record.error = False, True
            record.result = f"Unknown tool {call.name!r}. Available tools: {', '.join(self.tools)}."
            return record
        checked = validate_arguments(tool.schema, call.arguments)
        record.validated_arguments = checked.arguments
        record.dropped_arguments = list(checked.dropped)
        key = _canonical(checked.arguments)
        record.repeat = sum(1 for h in history if h.name == call.name and _canonical(h.validated_arguments) == key)
        if not checked.valid:
            record.valid, record.error = False, True
            record.result = checked.error_message(call.name)
            return record
        started = time.perf_counter()
        future = self._pool.submit(tool.fn, context, **checked.arguments)
        try:
            record.result = str(future.result(timeout=tool.timeout_s))
        except concurrent.futures.TimeoutError:
            record.error = True
            record.result = f"{call.name} timed out after {tool.timeout_s:g} s; try a shorter window or another tool."
        except ToolInputError as exc:
            record.valid, record.error = False, True
            record.result = f"Invalid arguments for {call.name}: {exc}"
        except Exception as exc:  # a tool's own failure is a result the model can react to
            record.error = True
            record.result = f"{call.name} failed: {type(exc).__name__}: {exc}"
        record.seconds = time.perf_counter() - started
        return record

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
