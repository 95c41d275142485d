"""ToolRegistry: the shared on-disk result cache, retries on transient failures, async calls."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from sage_fast.agent.parsing import ToolCall
from sage_fast.tools.cache import ToolResultCache, content_fingerprint
from sage_fast.tools.context import ToolContext
from sage_fast.tools.registry import Tool, ToolRegistry, cache_arguments
from sage_fast.tools.retry import RetryPolicy, call_with_retries, is_transient
from sage_fast.tools.video_tools import extract_parts_from_timestamp
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "v.mp4", IndexedVideoSpec(num_frames=60, fps=2.0))


class CountingTool:
    """A grounding-like tool that counts its real executions."""

    cache_identity = "counting-model-v1"

    def __init__(self) -> None:
        self.calls = 0

    def locate(self, context: ToolContext, video_path: str, event: str, timestamp_start: str) -> str:
        """Finds an event.

        Args:
            video_path: The video.
            event: What to find.
            timestamp_start: Where to start, HH:MM:SS.
        """
        context.check_video_path(video_path)
        self.calls += 1
        return f"{event} at {timestamp_start} (call {self.calls})"


def failing_then(failures: list[BaseException], result: str, name: str) -> Tool:
    """A one-argument tool that raises ``failures`` in turn, then returns ``result``."""
    pending = list(failures)

    def tool(context: ToolContext, query: str) -> str:
        """A scripted tool.

        Args:
            query: Anything.
        """
        tool.calls += 1  # type: ignore[attr-defined]
        if pending:
            raise pending.pop(0)
        return result

    tool.calls = 0  # type: ignore[attr-defined]
    return Tool(tool, name=name, retry=FAST_RETRY)


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(name=name, arguments=dict(arguments), rationale="")


def test_hits_are_shared_across_episodes_and_spellings(video: Path, tmp_path: Path) -> None:
    tool = CountingTool()
    cache = ToolResultCache(tmp_path / "cache")
    registry = ToolRegistry([Tool(tool.locate)], cache=cache)
    first = ToolContext(video_path=video, work_dir=tmp_path / "episode1")
    second = ToolContext(video_path=video, work_dir=tmp_path / "episode2")
    miss = registry.call(first, call("locate", video_path=str(video), event="goal", timestamp_start="00:00:05"), [])
    # another episode, the same question written differently: one execution in all
    hit = registry.call(second, call("locate", video_path=str(video), event="goal", timestamp_start="0:00:05"), [])
    assert (miss.cached, hit.cached) == (False, True)
    assert hit.result == miss.result and tool.calls == 1
    other = registry.call(second, call("locate", video_path=str(video), event="kick", timestamp_start="00:00:05"), [])
    assert not other.cached and tool.calls == 2
    assert (cache.hits, cache.misses) == (1, 2)
    # a new registry (another process) over the same folder reads the same entries
    again = ToolRegistry([Tool(tool.locate)], cache=ToolResultCache(tmp_path / "cache"))
    assert again.call(first, call("locate", video_path=str(video), event="goal", timestamp_start="5"), []).cached


def test_the_key_follows_content_backend_and_video(video: Path, tmp_path: Path) -> None:
    tool = CountingTool()
    registry = ToolRegistry([Tool(tool.locate)], cache=ToolResultCache(tmp_path / "cache"))
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(video.read_bytes())
    other = make_indexed_video(tmp_path / "other.mp4", IndexedVideoSpec(num_frames=61, fps=2.0))
    arguments = {"event": "goal", "timestamp_start": "00:00:01"}
    registry.call(ToolContext(video_path=video, work_dir=tmp_path / "a"), call("locate", video_path=str(video), **arguments), [])
    # same bytes under another name: a hit; different video: a miss
    assert registry.call(ToolContext(video_path=copy, work_dir=tmp_path / "b"),
                         call("locate", video_path=str(copy), **arguments), []).cached
    assert not registry.call(ToolContext(video_path=other, work_dir=tmp_path / "c"),
                             call("locate", video_path=str(other), **arguments), []).cached
    # another tool model behind the same tool name: a miss
    other_backend = ToolRegistry([Tool(tool.locate, backend="counting-model-v2")],
                                 cache=ToolResultCache(tmp_path / "cache"))
    assert not other_backend.call(ToolContext(video_path=video, work_dir=tmp_path / "d"),
                                  call("locate", video_path=str(video), **arguments), []).cached
    assert tool.calls == 3


def test_media_paths_key_on_file_content(tmp_path: Path, video: Path) -> None:
    first = ToolContext(video_path=video, work_dir=tmp_path / "one")
    second = ToolContext(video_path=video, work_dir=tmp_path / "two")
    for context, text in ((first, "same"), (second, "same")):
        context.work_dir.mkdir(parents=True, exist_ok=True)
        (context.work_dir / "frame.jpg").write_text(text)
    a = cache_arguments(first, {"query": "q", "media_paths": [str(first.work_dir / "frame.jpg")]})
    b = cache_arguments(second, {"query": "q", "media_paths": [str(second.work_dir / "frame.jpg")]})
    assert a == b and a["media_paths"] == [content_fingerprint(first.work_dir / "frame.jpg")]
    (second.work_dir / "frame.jpg").write_text("different")
    os.utime(second.work_dir / "frame.jpg", ns=(1, 1))  # a new mtime, as any rewrite gets
    assert cache_arguments(second, {"query": "q", "media_paths": [str(second.work_dir / "frame.jpg")]}) != a


def test_errors_and_work_folder_results_are_not_cached(video: Path, tmp_path: Path) -> None:
    cache = ToolResultCache(tmp_path / "cache")
    registry = ToolRegistry([failing_then([ValueError("bad luck")], "ok", "flaky"),
                             Tool(extract_parts_from_timestamp)], cache=cache)
    context = ToolContext(video_path=video, work_dir=tmp_path / "w")
    assert registry.call(context, call("flaky", query="x"), []).error
    assert registry.call(context, call("flaky", query="x"), []).result == "ok"
    extract = call("extract_parts_from_timestamp", video_path=str(video), timestamp_start="00:00:01",
                   timestamp_end="00:00:05")
    registry.call(context, extract, [])
    assert not registry.call(context, extract, []).cached  # its result names this episode's files
    assert not registry.tools["extract_parts_from_timestamp"].cacheable


def test_corrupt_and_stale_entries_are_misses(tmp_path: Path) -> None:
    cache = ToolResultCache(tmp_path / "cache")
    key = cache.key("t", "b", "v", {"a": 1})
    cache.put(key, "result")
    assert cache.get(key).result == "result"
    path = next((tmp_path / "cache").rglob(f"{key}.json"))
    path.write_text('{"result": "trunc')
    assert cache.get(key) is None
    cache.put(key, "fresh")
    assert ToolResultCache(tmp_path / "cache", max_age_s=0.0).get(key) is None
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_transient_failures_are_retried_with_back_off(video: Path, tmp_path: Path) -> None:
    refused = httpx.ConnectError("connection refused")
    registry = ToolRegistry([failing_then([refused, refused], "answer", "network")])
    record = registry.call(ToolContext(video_path=video, work_dir=tmp_path), call("network", query="q"), [])
    assert (record.result, record.attempts, record.error) == ("answer", 3, False)


def test_permanent_failures_are_not_retried() -> None:
    seen = []
    request = httpx.Request("GET", "http://example.com")

    def not_found() -> str:
        seen.append(1)
        raise httpx.HTTPStatusError("404", request=request, response=httpx.Response(404, request=request))

    with pytest.raises(httpx.HTTPStatusError):
        call_with_retries(not_found, FAST_RETRY, sleep=lambda s: None)
    assert len(seen) == 1
    server_error = httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, request=request))
    assert is_transient(server_error) and is_transient(TimeoutError()) and not is_transient(ValueError("x"))
    waits: list[float] = []

    def always_503() -> str:
        raise server_error

    with pytest.raises(httpx.HTTPStatusError):
        call_with_retries(always_503, RetryPolicy(attempts=4, base_delay_s=1.0, jitter=0.0), sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0]
    # no wait may run past the caller's deadline
    with pytest.raises(httpx.HTTPStatusError):
        call_with_retries(always_503, RetryPolicy(attempts=4, base_delay_s=10.0), deadline=time.monotonic() + 1,
                          sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0]


def test_acall_keeps_the_event_loop_free(video: Path, tmp_path: Path) -> None:
    release = threading.Event()

    def slow(context: ToolContext, query: str) -> str:
        """Waits until released.

        Args:
            query: Anything.
        """
        release.wait(5)
        return "done"

    registry = ToolRegistry([Tool(slow), Tool(slow, name="hang", timeout_s=0.2)])
    context = ToolContext(video_path=video, work_dir=tmp_path)

    async def main() -> tuple[str, list[str], str]:
        task = asyncio.create_task(registry.acall(context, call("slow", query="q"), []))
        ticks = []
        for i in range(3):  # the loop keeps running while the tool waits
            await asyncio.sleep(0.01)
            ticks.append(f"tick{i}")
        release.set()
        record = await task
        release.clear()
        hung = await registry.acall(context, call("hang", query="q"), [])
        release.set()
        return record.result, ticks, hung.result

    result, ticks, hung = asyncio.run(main())
    assert result == "done" and ticks == ["tick0", "tick1", "tick2"]
    assert "timed out after 0.2 s" in hung


@pytest.mark.parametrize(("status", "transient"), [(400, False), (401, False), (404, False), (408, True),
                                                   (409, True), (429, True), (500, True), (503, True)])
def test_transient_statuses_are_the_openai_clients(status: int, transient: bool) -> None:
    request = httpx.Request("POST", "http://example.com")
    error = httpx.HTTPStatusError(str(status), request=request, response=httpx.Response(status, request=request))
    assert is_transient(error) is transient


def test_async_retries_follow_the_same_policy() -> None:
    import asyncio
    import random

    from sage_fast.tools.retry import acall_with_retries

    calls, retried = [], []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    policy = RetryPolicy(attempts=3, base_delay_s=0.001, seed=0)
    assert asyncio.run(acall_with_retries(flaky, policy, rng=random.Random(0),
                                          on_retry=lambda k, e: retried.append(k))) == "ok"
    assert len(calls) == 3 and retried == [1, 2]

    async def bad_request() -> str:
        calls.append(1)
        raise ValueError("not transient")

    calls.clear()
    with pytest.raises(ValueError):
        asyncio.run(acall_with_retries(bad_request, policy))
    assert len(calls) == 1
