"""OpenAI-compatible backend: frames as images or as one vLLM frame-list video, over the real client."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sage_fast.models.base import SamplingConfig
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.video import open_video
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video, read_frame_index


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    video = make_indexed_video(tmp_path_factory.mktemp("v") / "o.mp4", IndexedVideoSpec(num_frames=50, fps=5.0))
    return open_video(video).frames_at([1.0, 2.0, 3.0])


def message() -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "Watch:"},
                                         *({"type": "frame", "index": i} for i in range(3)),
                                         {"type": "text", "text": "What changes?"}]}]


def test_frames_as_images(openai_stub, frames) -> None:  # noqa: ANN001
    openai_stub.replies = ["ok"]
    OpenAICompatible(openai_stub.url, "m", max_retries=0).generate(message(), frames, SamplingConfig())
    parts = openai_stub.requests[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", *["text", "image_url"] * 3, "text"]
    assert parts[1]["text"] == "Frame at 00:00:01.000:"


def test_frames_as_one_vllm_video(openai_stub, frames) -> None:  # noqa: ANN001
    openai_stub.replies = ["ok"]
    OpenAICompatible(openai_stub.url, "m", max_retries=0, frames_as="video").generate(message(), frames,
                                                                                       SamplingConfig())
    parts = openai_stub.requests[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "text", "video_url", "text"]
    assert parts[1]["text"] == "A video of 3 frames sampled at 00:00:01.000, 00:00:02.000, 00:00:03.000:"
    url = parts[2]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,")
    # vLLM splits the payload on commas and decodes each piece as a JPEG: do the same
    decoded = [Image.open(io.BytesIO(base64.b64decode(p))).convert("RGB")
               for p in url.removeprefix("data:video/jpeg;base64,").split(",")]
    import numpy as np

    assert [read_frame_index(np.asarray(image)) for image in decoded] == [5, 10, 15]
    with pytest.raises(ValueError, match="frames_as"):
        OpenAICompatible(openai_stub.url, "m", frames_as="gif")


def test_logprobs_when_asked(openai_stub) -> None:  # noqa: ANN001
    openai_stub.replies = ["three words here", "plain"]
    model = OpenAICompatible(openai_stub.url, "m", max_retries=0)
    asked = model.generate([{"role": "user", "content": "q"}], None, SamplingConfig(logprobs=True))
    assert asked.logprobs == (-0.5, -1.0, -1.5) and openai_stub.requests[0]["logprobs"] is True
    plain = model.generate([{"role": "user", "content": "q"}], None, SamplingConfig())
    assert plain.logprobs is None and "logprobs" not in openai_stub.requests[1]
