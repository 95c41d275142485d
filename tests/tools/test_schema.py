"""Tool schemas come from hints and docstrings; model arguments are checked, coerced, never trusted."""

from __future__ import annotations

from typing import Literal

import pytest

from sage_fast.tools.schema import function_schema, validate_arguments


def extract_parts_from_timestamp(video_path: str, timestamp_start: str, timestamp_end: str,
                                 extract_type: Literal["frames", "subclips"] = "frames") -> str:
    """Extracts evenly spaced frames or one subclip from a window of the video.

    Longer explanation that the model does not need.

    Args:
        video_path: Path of the episode's video.
        timestamp_start: Window start as HH:MM:SS.
        timestamp_end: Window end as HH:MM:SS; the window must be shorter
            than five minutes.
        extract_type: "frames" (10 JPEGs) or "subclips" (one MP4).

    Returns:
        The paths written.
    """
    return ""


def perform_reasoning(query: str, media_paths: list[str] | None = None, num_results: int = 3,
                      strict: bool = False, scale: float = 1.0) -> str:
    """Answers a question about the given media."""
    return ""


def test_schema_matches_the_openai_function_format() -> None:
    schema = function_schema(extract_parts_from_timestamp)
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "extract_parts_from_timestamp"
    assert function["description"] == "Extracts evenly spaced frames or one subclip from a window of the video."
    params = function["parameters"]
    assert params["required"] == ["video_path", "timestamp_start", "timestamp_end"]
    assert params["properties"]["extract_type"] == {
        "type": "string", "enum": ["frames", "subclips"], "description": '"frames" (10 JPEGs) or "subclips" (one MP4).',
        "default": "frames"}
    assert params["properties"]["timestamp_end"]["description"].endswith("shorter than five minutes.")


def test_schema_types() -> None:
    props = function_schema(perform_reasoning)["function"]["parameters"]["properties"]
    assert props["media_paths"] == {"type": "array", "items": {"type": "string"}}
    assert props["num_results"] == {"type": "integer", "default": 3}
    assert props["strict"]["type"] == "boolean" and props["scale"]["type"] == "number"


def test_untyped_parameters_are_rejected() -> None:
    def tool(x):  # noqa: ANN001, ANN202
        """A tool."""

    with pytest.raises(TypeError, match="type hint"):
        function_schema(tool)


def test_valid_arguments_pass_and_unknown_ones_are_dropped() -> None:
    schema = function_schema(extract_parts_from_timestamp)
    result = validate_arguments(schema, {"video_path": "v.mp4", "timestamp_start": "00:00:10",
                                         "timestamp_end": "00:01:00", "fps": 4, "rm -rf": "/"})
    assert result.valid and result.dropped == ("fps", "rm -rf")
    assert result.arguments == {"video_path": "v.mp4", "timestamp_start": "00:00:10", "timestamp_end": "00:01:00"}


def test_unambiguous_coercions() -> None:
    schema = function_schema(perform_reasoning)
    result = validate_arguments(schema, {"query": 42, "media_paths": "a.jpg", "num_results": "5",
                                         "strict": "TRUE", "scale": "0.5"})
    assert result.valid
    assert result.arguments == {"query": "42", "media_paths": ["a.jpg"], "num_results": 5, "strict": True,
                                "scale": 0.5}


@pytest.mark.parametrize(("arguments", "problem"), [
    ({"video_path": "v.mp4", "timestamp_start": "0"}, "timestamp_end is required"),
    ({"video_path": "v.mp4", "timestamp_start": "0", "timestamp_end": "1", "extract_type": "gifs"}, "one of"),
    ({"video_path": ["v.mp4"], "timestamp_start": "0", "timestamp_end": "1"}, "must be a string"),
    ("video_path=v.mp4", "JSON object"),
])
def test_invalid_arguments_become_messages(arguments, problem: str) -> None:  # noqa: ANN001
    result = validate_arguments(function_schema(extract_parts_from_timestamp), arguments)
    assert not result.valid
    message = result.error_message("extract_parts_from_timestamp")
    assert problem in message and message.startswith("Invalid arguments for extract_parts_from_timestamp")


@pytest.mark.parametrize("value", ["5.5", "five", True, [1]])
def test_integers_are_not_guessed(value) -> None:  # noqa: ANN001
    result = validate_arguments(function_schema(perform_reasoning), {"query": "q", "num_results": value})
    assert not result.valid and "integer" in result.errors[0]
