"""Ground-event and analyze tools: clip-time answers map back to video time, media stays contained,
and the real openai client talks to a local stub tool model."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.tools.registry import Tool, ToolRegistry
from sage_fast.tools.schema import function_schema
from sage_fast.tools.video_tools import extract_parts_from_timestamp
from sage_fast.tools.vlm_tools import VLMToolConfig, VLMTools
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "long.mp4",
                              IndexedVideoSpec(num_frames=900, fps=1.0, gop=30, bframes=2))


@pytest.fixture
def tools(openai_stub) -> VLMTools:  # noqa: ANN001
    return VLMTools(OpenAICompatible(openai_stub.url, "tool-vlm", max_retries=0), VLMToolConfig(ground_frames=12))


@pytest.fixture
def context(video: Path, tmp_path: Path) -> ToolContext:
    return ToolContext(video_path=video, work_dir=tmp_path / "work")


def test_schemas_are_the_reference_arguments(tools: VLMTools) -> None:
    ground = function_schema(tools.identify_timestamps_visually)["function"]["parameters"]
    assert list(ground["properties"]) == ["video_path", "event", "timestamp_start", "timestamp_end"]
    analyze = function_schema(tools.perform_reasoning)["function"]["parameters"]
    assert analyze["required"] == ["query"] and analyze["properties"]["media_paths"]["type"] == "array"


def test_grounding_maps_clip_time_to_video_time(tools: VLMTools, context: ToolContext, video: Path,
                                                openai_stub) -> None:  # noqa: ANN001
    openai_stub.replies = ['The goal is at <json>{"start": 20, "end": 35.5}</json>']
    result = tools.identify_timestamps_visually(context, str(video), "a goal", "00:05:00", "00:10:00")
    assert result == "The event 'a goal' happens from 00:05:20 to 00:05:35 (searched between 00:05:00 and 00:10:00)."
    content = openai_stub.requests[0]["messages"][1]["content"]
    labels = [p["text"] for p in content if p["type"] == "text"][:-1]
    assert len(labels) == 12 and labels[0] == "Frame at 00:00:12.000:"  # clip time: 0 at the window start
    assert content[-1]["text"] == "Event: a goal"


@pytest.mark.parametrize("reply", ['{"start": null, "end": null}', "I do not see it."])
def test_not_found(tools: VLMTools, context: ToolContext, video: Path, openai_stub, reply: str) -> None:  # noqa: ANN001
    openai_stub.replies = [reply]
    assert "was not found between 00:00:00 and 00:01:00" in tools.identify_timestamps_visually(
        context, str(video), "a cat", "00:00:00", "00:01:00")


def test_grounding_answers_are_clamped_to_the_window(tools: VLMTools, context: ToolContext, video: Path,
                                                     openai_stub) -> None:  # noqa: ANN001
    openai_stub.replies = ['{"start": 90, "end": -5}']
    result = tools.identify_timestamps_visually(context, str(video), "x", "00:01:00", "00:02:00")
    assert "from 00:01:00 to 00:02:00" in result


def test_grounding_window_limit(tools: VLMTools, context: ToolContext, video: Path) -> None:
    with pytest.raises(ToolInputError, match="limit"):
        tools.identify_timestamps_visually(context, str(video), "x", "00:00:00", "00:10:30")


def test_reasoning_over_extracted_frames_and_clips(tools: VLMTools, context: ToolContext, video: Path,
                                                   openai_stub) -> None:  # noqa: ANN001
    frames = [line.split(": ", 1)[1] for line in
              extract_parts_from_timestamp(context, str(video), "00:01:00", "00:02:00").splitlines()[1:]]
    clip = extract_parts_from_timestamp(context, str(video), "00:03:00", "00:03:20", "subclips").splitlines()[-1]
    openai_stub.replies = ["Frame 75 shows the counter.", "Just text."]
    assert tools.perform_reasoning(context, "What is shown?", frames[:3] + [clip]) == "Frame 75 shows the counter."
    images = [p for p in openai_stub.requests[0]["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(images) == 3 + 16
    assert tools.perform_reasoning(context, "Summarise the notes", []) == "Just text."
    assert all(p["type"] == "text" for p in openai_stub.requests[1]["messages"][1]["content"])


def test_reasoning_refuses_media_outside_the_episode(tools: VLMTools, context: ToolContext, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8")
    registry = ToolRegistry([Tool(tools.perform_reasoning)])
    from sage_fast.agent.parsing import ToolCall

    record = registry.call(context, ToolCall("perform_reasoning", {"query": "q", "media_paths": [str(secret)]}), [])
    assert not record.valid and "outside this episode's work folder" in record.result
