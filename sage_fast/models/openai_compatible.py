"""Orchestrator over any OpenAI-compatible chat server (vLLM, SGLang, hosted APIs).

Frames travel as JPEG data URLs, each after a short text label with its time, so any server
that accepts ``image_url`` parts can serve SAGE-MM (``frames_as="images"``, the default). With
``frames_as="video"`` the frames of a message go as one ``video_url`` part in vLLM's frame-list
form (``data:video/jpeg;base64,<jpeg>,<jpeg>,...``) after one line listing their times: Qwen-VL
then sees one video (temporal patches pair consecutive frames, about half the visual tokens of
separate images). vLLM decodes at most ``num_frames`` of such a list (32 by default): start it
with ``--media-io-kwargs '{"video": {"num_frames": -1}}'`` to keep all 128. Retries with back-off are the openai
client's own (connection errors, 429, 5xx); the API key is read from the environment when not
given and is never written to a trajectory or a log.
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import Any

from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.video.timecode import format_timestamp
from sage_fast.video.types import FrameBatch


def jpeg_bytes(pixels_chw: Any, quality: int = 90) -> bytes:
    """uint8 (3, H, W) tensor -> JPEG file bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels_chw.permute(1, 2, 0).cpu().numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_data_url(pixels_chw: Any, quality: int = 90) -> str:
    """uint8 (3, H, W) tensor -> ``data:image/jpeg;base64,...``."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(pixels_chw, quality)).decode("ascii")


def _video_parts(indices: list[int], frames: FrameBatch, jpeg_quality: int) -> list[dict[str, Any]]:
    times = ", ".join(format_timestamp(float(frames.pts_seconds[i]), millis=True) for i in indices)
    payload = ",".join(base64.b64encode(jpeg_bytes(frames.data[i], jpeg_quality)).decode("ascii") for i in indices)
    return [{"type": "text", "text": f"A video of {len(indices)} frames sampled at {times}:"},
            {"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{payload}"}}]


def openai_content(content: Any, frames: FrameBatch | None, *, jpeg_quality: int = 90,
                   frames_as: str = "images") -> Any:
    """A message's content in the OpenAI chat format: ``{"type": "frame", "index": i}`` parts
    become a time label and a JPEG ``image_url`` each (``frames_as="images"``), or, with
    ``frames_as="video"``, each run of frames becomes one vLLM frame-list ``video_url``."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    video: list[int] = []  # frame indices waiting to become one video part
    for part in [*content, None]:
        if part is not None and part.get("type") == "frame":
            if frames is None:
                raise ValueError("a message refers to a frame but no frames were given")
            i = int(part["index"])
            if frames_as == "video":
                video.append(i)
                continue
            stamp = format_timestamp(float(frames.pts_seconds[i]), millis=True)
            parts.append({"type": "text", "text": f"Frame at {stamp}:"})
            parts.append({"type": "image_url", "image_url": {"url": jpeg_data_url(frames.data[i], jpeg_quality)}})
            continue
        if video:
            parts += _video_parts(video, frames, jpeg_quality)
            video = []
        if part is not None:
            parts.append(part)
    return parts


def choice_logprobs(choice: Any) -> tuple[float, ...] | None:
    """The sampled tokens' log-probabilities of a chat completion choice, when the server sent them."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    return None if content is None else tuple(float(item.logprob) for item in content)


class OpenAICompatible:
    """``OpenAICompatible(base_url="http://localhost:8000/v1", model="allenai/SAGE-MM-Qwen3-VL-8B-SFT_RL")``."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 600.0,
                 max_retries: int = 3, jpeg_quality: int = 90, frames_as: str = "images") -> None:
        from openai import OpenAI

        if frames_as not in ("images", "video"):
            raise ValueError(f"frames_as={frames_as!r}: use 'images' (one image_url per frame) or 'video' "
                             "(one video_url of JPEG frames, vLLM)")
        self.frames_as = frames_as
        # a Qwen-VL server pairs consecutive video frames into one temporal patch; images stand alone
        self.frames_per_visual_group = 2 if frames_as == "video" else 1

        self.name = f"openai:{model}@{base_url}"
        self.model = model
        self.jpeg_quality = jpeg_quality
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers ignore it
        self._client = OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=max_retries)

    def generate(self, messages: list[dict[str, Any]], frames: FrameBatch | None,
                 sampling: SamplingConfig) -> Generation:
        request = [{"role": m["role"], "content": openai_content(m["content"], frames, jpeg_quality=self.jpeg_quality,
                                                                frames_as=self.frames_as)} for m in messages]
        started = time.perf_counter()
        response = self._client.chat.completions.create(
            model=self.model, messages=request, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_tokens, seed=sampling.seed, **({"logprobs": True} if sampling.logprobs else {}),
        )
        usage = response.usage
        choice = response.choices[0]
        logprobs = choice_logprobs(choice) if sampling.logprobs else None
        return Generation(
            text=choice.message.content or "",
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            seconds=time.perf_counter() - started,
            logprobs=logprobs,
        )
