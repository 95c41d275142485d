"""verbal_transcript: the window's audio reaches the speech backend as 16 kHz WAV and its segments
come back in video time (OpenAI-compatible backend against a local stub server)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import pytest

from sage_fast.tools.context import ToolContext, ToolInputError
from sage_fast.tools.schema import function_schema
from sage_fast.tools.speech import OpenAITranscriber, SpeechTools
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("v")
    return {"tone": make_indexed_video(folder / "tone.mp4", IndexedVideoSpec(num_frames=120, fps=2.0, audio=True)),
            "silent": make_indexed_video(folder / "silent.mp4", IndexedVideoSpec(num_frames=40, fps=2.0))}


@pytest.fixture
def tools(openai_stub) -> SpeechTools:  # noqa: ANN001
    return SpeechTools(OpenAITranscriber(openai_stub.url, max_retries=0))


def test_schema(tools: SpeechTools) -> None:
    params = function_schema(tools.verbal_transcript)["function"]["parameters"]
    assert params["required"] == ["video_path", "timestamp_start", "timestamp_end"]


def test_segments_in_video_time(tools: SpeechTools, videos: dict[str, Path], tmp_path: Path, openai_stub) -> None:  # noqa: ANN001
    openai_stub.transcriptions = [{"text": "hello there. bye", "language": "en", "duration": 20.0, "segments": [
        {"id": 0, "seek": 0, "start": 1.0, "end": 3.5, "text": " hello there.", "tokens": [], "temperature": 0,
         "avg_logprob": 0, "compression_ratio": 1, "no_speech_prob": 0},
        {"id": 1, "seek": 0, "start": 12.0, "end": 25.0, "text": " bye", "tokens": [], "temperature": 0,
         "avg_logprob": 0, "compression_ratio": 1, "no_speech_prob": 0}]}]
    context = ToolContext(videos["tone"], tmp_path / "w")
    result = tools.verbal_transcript(context, str(videos["tone"]), "00:00:30", "00:00:50")
    assert result.splitlines() == ["Speech between 00:00:30 and 00:00:50:", "[00:00:31 - 00:00:33] hello there.",
                                   "[00:00:42 - 00:00:50] bye"]
    body = openai_stub.requests[0]["multipart"]
    wav = body[body.index(b"RIFF"):]
    with wave.open(io.BytesIO(wav)) as audio:
        assert audio.getframerate() == 16000 and audio.getnchannels() == 1
        assert audio.getnframes() == pytest.approx(20 * 16000, abs=400)
    assert b"verbose_json" in body


def test_no_speech_and_no_audio(tools: SpeechTools, videos: dict[str, Path], tmp_path: Path, openai_stub) -> None:  # noqa: ANN001
    openai_stub.transcriptions = [{"text": "", "language": "en", "duration": 5.0, "segments": []}]
    context = ToolContext(videos["tone"], tmp_path / "w")
    assert tools.verbal_transcript(context, str(videos["tone"]), "00:00:00", "00:00:05") == \
        "No speech between 00:00:00 and 00:00:05."
    silent = ToolContext(videos["silent"], tmp_path / "w2")
    assert "no audio track" in tools.verbal_transcript(silent, str(videos["silent"]), "00:00:00", "00:00:05")


def test_window_limit_and_path(tools: SpeechTools, videos: dict[str, Path], tmp_path: Path) -> None:
    context = ToolContext(videos["tone"], tmp_path / "w")
    with pytest.raises(ToolInputError, match="not this episode's video"):
        tools.verbal_transcript(context, "/tmp/other.mp4", "00:00:00", "00:00:05")
    with pytest.raises(ToolInputError, match="after the end of the video"):
        tools.verbal_transcript(context, str(videos["tone"]), "00:20:00", "00:21:00")
