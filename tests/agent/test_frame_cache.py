"""FrameBatchCache: episodes on the same video share one Stage-1 decode."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from sage_fast.agent.frame_cache import FrameBatchCache
from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video
from sage_fast.video.types import FrameBatch


def batch(n: int, side: int = 4) -> FrameBatch:
    return FrameBatch(data=torch.zeros(n, 3, side, side, dtype=torch.uint8), pts_seconds=torch.arange(n, dtype=torch.float64),
                      duration_seconds=torch.ones(n, dtype=torch.float64), indices=torch.arange(n))


def test_lru_by_bytes() -> None:
    cache = FrameBatchCache(max_bytes=2 * 48 * 2)  # two batches of 2 frames of 3x4x4
    decodes: list[str] = []

    def decoder(key: str):  # noqa: ANN202
        return lambda: (decodes.append(key), batch(2))[1]

    first, hit = cache.get_or_decode("a", decoder("a"))
    assert not hit and cache.get_or_decode("a", decoder("a")) == (first, True)
    cache.get_or_decode("b", decoder("b"))
    cache.get_or_decode("a", decoder("a"))  # a is now the most recent
    cache.get_or_decode("c", decoder("c"))  # evicts b
    assert cache.get_or_decode("a", decoder("a"))[1] and not cache.get_or_decode("b", decoder("b"))[1]
    assert decodes == ["a", "b", "c", "b"] and cache.bytes <= cache.max_bytes
    too_big, hit = cache.get_or_decode("big", lambda: batch(100))
    assert not hit and not cache.get_or_decode("big", lambda: batch(100))[1]  # never stored
    off = FrameBatchCache(0)
    assert not off.get_or_decode("a", lambda: batch(1))[1] and not off.get_or_decode("a", lambda: batch(1))[1]
    with pytest.raises(ValueError, match="max_bytes"):
        FrameBatchCache(-1)


def test_single_flight_and_failures() -> None:
    cache = FrameBatchCache(1 << 20)
    calls = []
    gate = threading.Event()

    def slow() -> FrameBatch:
        calls.append(1)
        gate.wait(5)
        return batch(3)

    results: list[tuple[FrameBatch, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_decode("k", slow))) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 4
    assert sorted(hit for _, hit in results) == [False, True, True, True]
    assert all(b is results[0][0] for b, _ in results)

    def broken() -> FrameBatch:
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        cache.get_or_decode("bad", broken)
    assert cache.get_or_decode("bad", lambda: batch(1))[1] is False  # a failure is not remembered


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "f.mp4", IndexedVideoSpec(num_frames=120, fps=2.0))


def test_episodes_on_one_video_decode_once(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    answer = '<json>{"video_context": "c", "query_intent": "i", "final_answer": "a", ' \
             '"recommended_tools": {"needed": false, "why_no_tool": "", "tool_calls": []}}</json>'
    openai_stub.replies = [answer] * 5
    agent = Agent(OpenAICompatible(openai_stub.url, "m", max_retries=0),
                  config=AgentConfig(num_frames=16, work_dir=str(tmp_path / "w")))
    group = agent.run_many([(video, f"question {i}") for i in range(4)], concurrency=4, progress=False)
    assert [t.answer for t in group] == ["a"] * 4
    assert agent.frame_cache.misses == 1 and agent.frame_cache.hits == 3
    assert sorted(t.cost.frames_decoded for t in group) == [0, 0, 0, 16]
    images = [[p["image_url"]["url"] for p in r["messages"][1]["content"] if p["type"] == "image_url"]
              for r in openai_stub.requests]
    assert all(urls == images[0] for urls in images) and len(images[0]) == 16
    # another sampling request is another entry
    fresh = Agent(agent.orchestrator, config=AgentConfig(num_frames=8, work_dir=str(tmp_path / "w"), frame_cache_mb=0))
    assert fresh.run(video, "q").cost.frames_decoded == 8 and fresh.frame_cache.misses == 0
