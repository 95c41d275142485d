"""Shared, built-once inputs of the evaluation tests: the tiny random-weight model and short videos."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sage_fast.testing import OpenAIStub
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="session")
def _shared_stub():  # noqa: ANN202
    stub = OpenAIStub()
    yield stub
    stub.close()


@pytest.fixture
def openai_stub(_shared_stub: OpenAIStub) -> OpenAIStub:
    """The project's stub server, started once for these tests (closing one costs half a second)
    and emptied before each test."""
    stub = _shared_stub
    with stub.lock:
        stub.replies, stub.faults, stub.requests, stub.headers = [], [], [], []
        stub.reply, stub.latency_s = None, 0.0
    return stub


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAGE_FAST_CACHE folder holding the tiny model where `--orchestrator tiny` looks for it."""
    from sage_fast.models.tiny import build_tiny_model

    cache = tmp_path_factory.mktemp("cache")
    build_tiny_model(cache / "tiny-qwen2_5_vl", "qwen2_5_vl")
    return cache


@pytest.fixture(scope="session")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vid0.mp4 (10 s) and vid1.mkv (75 s): two duration buckets, two extensions."""
    root = tmp_path_factory.mktemp("videos")
    make_indexed_video(root / "vid0.mp4", IndexedVideoSpec(num_frames=40, fps=4.0))
    make_indexed_video(root / "vid1.mkv", IndexedVideoSpec(num_frames=75, fps=1.0, gop=10))
    return root


def _stage1_answer(answer: str) -> str:
    return "<json>" + json.dumps({"video_context": "a counter", "query_intent": "read it", "final_answer": answer,
                                  "recommended_tools": {"needed": False, "why_no_tool": "seen", "tool_calls": []}}) \
        + "</json>"


def _scripted(body: dict) -> str:
    """The server's two roles: the orchestrator answers "answer N" to "item N"; the judge compares
    the ground truth and prediction lines of its prompt literally."""
    if body["model"] == "judge":
        text = body["messages"][-1]["content"]
        truth = re.search(r"Ground truth: (.*)", text).group(1)
        prediction = re.search(r"Prediction: (.*)", text).group(1)
        return f"Reasoning: compared.\nVerdict: {truth == prediction}"
    number = re.search(r"item (\d+)", json.dumps(body["messages"])).group(1)
    return _stage1_answer(f"answer {number}")


@pytest.fixture
def scripted() -> Callable[[dict], str]:
    """A stub ``reply`` that plays both the orchestrator and the judge (see ``_scripted``)."""
    return _scripted
