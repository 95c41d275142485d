"""Gemini backend: google-genai's real client against a local stub of the Gemini API."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from PIL import Image

from sage_fast.agent.loop import Agent, AgentConfig, default_tools
from sage_fast.models.base import SamplingConfig
from sage_fast.models.gemini import GeminiVLM
from sage_fast.video import open_video
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

KEY = "gm-secret-test-key"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "g.mp4", IndexedVideoSpec(num_frames=240, fps=1.0))


def reply(data: dict) -> str:
    return f"<json>{json.dumps(data)}</json>"


def gemini(stub, **options) -> GeminiVLM:  # noqa: ANN001
    return GeminiVLM("gemini-test", api_key=KEY, base_url=stub.url, retry_delay_s=0.01, **options)


def test_frames_system_and_sampling_reach_the_api(gemini_stub, video: Path) -> None:  # noqa: ANN001
    gemini_stub.replies = ["a red square"]
    frames = open_video(video).frames_at([3.0, 7.0])
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "frame", "index": 0}, {"type": "frame", "index": 1},
                                             {"type": "text", "text": "What is shown?"}]}]
    generation = gemini(gemini_stub).generate(messages, frames, SamplingConfig(temperature=0.0, max_tokens=77, seed=5))
    assert (generation.text, generation.tokens_in, generation.tokens_out) == ("a red square", 1234, 3)
    assert gemini_stub.paths[0].split("?")[0].endswith("/models/gemini-test:generateContent")
    assert gemini_stub.headers[0]["x-goog-api-key"] == KEY
    body = gemini_stub.requests[0]
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert body["generationConfig"]["maxOutputTokens"] == 77 and body["generationConfig"]["seed"] == 5
    (content,) = body["contents"]
    parts = content["parts"]
    assert content["role"] == "user"
    assert [p.get("text") for p in parts] == ["Frame at 00:00:03.000:", None, "Frame at 00:00:07.000:", None,
                                              "What is shown?"]
    images = [p["inlineData"] for p in parts if "inlineData" in p]
    assert [i.get("mimeType", i.get("mime_type")) for i in images] == ["image/jpeg", "image/jpeg"]
    import io

    decoded = Image.open(io.BytesIO(base64.urlsafe_b64decode(images[0]["data"])))
    assert decoded.size == (frames.data.shape[3], frames.data.shape[2])
    assert parts[-1] == {"text": "What is shown?"}


def test_server_errors_are_retried_by_the_client(gemini_stub, video: Path) -> None:  # noqa: ANN001
    gemini_stub.replies = [503, 500, "fine"]
    generation = gemini(gemini_stub).generate([{"role": "user", "content": "hi"}], None, SamplingConfig())
    assert generation.text == "fine" and len(gemini_stub.requests) == 3
    gemini_stub.replies = [400]
    with pytest.raises(Exception, match="400"):  # a client error is not retried
        gemini(gemini_stub).generate([{"role": "user", "content": "hi"}], None, SamplingConfig())
    assert len(gemini_stub.requests) == 4


def test_a_missing_key_names_the_variable(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        GeminiVLM("gemini-test")


def test_gemini_as_orchestrator_and_tool_model_in_an_episode(gemini_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    ground = {"rationale": "when", "name": "identify_timestamps_visually",
              "arguments": {"video_path": str(video), "event": "counter at 100", "timestamp_start": "00:01:00",
                            "timestamp_end": "00:03:00"}}
    gemini_stub.replies = [
        reply({"video_context": "a counter", "query_intent": "when", "final_answer": None,
               "recommended_tools": {"needed": True, "why_no_tool": "", "tool_calls": [ground]}}),
        '{"start": 40, "end": 41}',
        reply({"answerable": {"verdict": True, "reasoning": "grounded"}, "final_answer": "00:01:40",
               "recommended_tools": {"needed": False, "why_no_tool": "", "tool_calls": []}}),
    ]
    model = gemini(gemini_stub)
    agent = Agent(model, tools=default_tools(model), config=AgentConfig(num_frames=16, work_dir=str(tmp_path / "w")))
    trajectory = agent.run(video, "When does the counter show 100?")
    assert trajectory.answer == "00:01:40" and trajectory.answer_stage == "stage2"
    (call,) = trajectory.tool_calls
    assert call.result.startswith("The event 'counter at 100' happens from 00:01:40 to 00:01:41")
    stage1, grounding, _ = gemini_stub.requests
    assert sum("inlineData" in p for p in stage1["contents"][0]["parts"]) == 16
    assert sum("inlineData" in p for p in grounding["contents"][0]["parts"]) > 1
    assert KEY not in json.dumps(trajectory.to_dict())


def test_ask_with_gemini_from_the_cli(gemini_stub, video: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    from sage_fast.cli.main import main

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini_stub.url)
    gemini_stub.replies = [reply({"video_context": "c", "query_intent": "i", "final_answer": "seven",
                                  "recommended_tools": {"needed": False, "why_no_tool": "easy", "tool_calls": []}})]
    html = tmp_path / "t.html"
    assert main(["ask", str(video), "How many?", "--orchestrator", "gemini:gemini-test", "--num-frames", "8",
                 "--html", str(html)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "seven" and "[Stage-1]" in captured.err
    assert html.is_file() and "How many?" in html.read_text() and KEY not in html.read_text()
