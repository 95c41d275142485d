"""Retries with exponential back-off and jitter for tool calls that fail on the network.

Only transient failures are retried (connection errors, time-outs of one request, HTTP 429 and
5xx): a 404, a bad argument or a tool's own bug fails at once, since retrying cannot help and
only burns the episode's time-out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits ``base_delay_s · 2^k`` (capped, ±``jitter``) between them."""

    attempts: int = field(default=3, metadata={"help": "tries in all, the first included"})
    base_delay_s: float = field(default=1.0, metadata={"help": "wait before the second try"})
    max_delay_s: float = field(default=30.0, metadata={"help": "longest wait between tries"})
    jitter: float = field(default=0.25, metadata={"help": "relative random spread of each wait"})
    seed: int | None = field(default=None, metadata={"help": "seed of the jitter, for repeatable runs (None: random)"})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter in [0, 1]")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the second try)."""
        base = min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


NO_RETRY = RetryPolicy(attempts=1)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (httpx, openai, google-genai), if any."""
    for attribute in ("status_code", "code", "status"):
        value = getattr(exc, attribute, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures a later try may not repeat: the network, a server's 408, 409, 429 or 5xx."""
    status = http_status(exc)
    if status is not None:  # the statuses the openai client itself retries
        return status in (408, 409, 429) or status >= 500
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover - httpx is a dependency
        pass
    try:
        import openai

        if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
            return True
    except ImportError:  # pragma: no cover - openai is a dependency
        pass
    return False


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, *, deadline: float | None = None,
                      sleep: Callable[[float], None] = time.sleep, on_retry: Callable[[int, BaseException], None] | None = None) -> T:
    """Calls ``fn`` until it succeeds, a failure is not transient, the tries run out, or the next
    wait would pass ``deadline`` (a ``time.monotonic()`` value); the last failure is raised."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == policy.attempts or not is_transient(exc):
                raise
            wait = policy.delay(attempt)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


async def acall_with_retries(fn: Callable[[], Awaitable[T]], policy: RetryPolicy, *, rng: random.Random | None = None,
                             on_retry: Callable[[int, BaseException], None] | None = None) -> T:
    """:func:`call_with_retries` for coroutines: the same policy and notion of transient, and the
    wait does not block the event loop. ``rng`` draws the jitter (seed it for repeatable runs)."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return await fn()
        except Exception as exc:
            if attempt == policy.attempts or not is_transient(exc):
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            await asyncio.sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")  # pragma: no cover
