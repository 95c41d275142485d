"""Orchestrator or tool model on Gemini through Google's own client (google-genai).

Gemini serves as the tool VLM (grounding, analysis) when quality matters more than cost, as an
orchestrator baseline, and it is what the paper used to synthesize training data. Frames travel as
inline JPEG parts, each after a text label with its time (the same layout as the OpenAI-compatible
backend, so prompts read the same everywhere). The API key comes from ``GEMINI_API_KEY`` /
``GOOGLE_API_KEY`` when not given and never reaches a trajectory or log; retries on 429/5xx are
the client's own (``HttpRetryOptions``); ``base_url`` points the real client at a proxy or, in
tests, at a local stub server.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.models.openai_compatible import jpeg_bytes
from sage_fast.video.timecode import format_timestamp
from sage_fast.video.types import FrameBatch

ROLES = {"user": "user", "assistant": "model", "model": "model"}


class GeminiVLM:
    """``GeminiVLM("gemini-2.5-flash")``; ``base_url`` for a proxy or a local stub server."""

    def __init__(self, model: str = "gemini-2.5-flash", *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 600.0, attempts: int = 4, retry_delay_s: float = 1.0,
                 jpeg_quality: int = 90) -> None:
        from google import genai
        from google.genai import types

        key = api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not key:
            raise ValueError(f"gemini:{model} needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) "
                             "in the environment, or pass api_key=")
        self.name = f"gemini:{model}" + (f"@{base_url}" if base_url else "")
        self.model = model
        self.jpeg_quality = jpeg_quality
        self._types = types
        options = types.HttpOptions(
            base_url=base_url, timeout=int(timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=attempts, initial_delay=retry_delay_s, max_delay=30.0,
                                                 http_status_codes=[408, 429, 500, 502, 503, 504]))
        self._client = genai.Client(api_key=key, http_options=options)

    def _parts(self, content: Any, frames: FrameBatch | None) -> list[Any]:
        types = self._types
        if isinstance(content, str):
            return [types.Part.from_text(text=content)]
        parts = []
        for part in content:
            if part.get("type") == "frame":
                if frames is None:
                    raise ValueError("a message refers to a frame but no frames were given")
                i = int(part["index"])
                stamp = format_timestamp(float(frames.pts_seconds[i]), millis=True)
                parts.append(types.Part.from_text(text=f"Frame at {stamp}:"))
                parts.append(types.Part.from_bytes(data=jpeg_bytes(frames.data[i], self.jpeg_quality),
                                                   mime_type="image/jpeg"))
            elif part.get("type") == "text":
                parts.append(types.Part.from_text(text=part["text"]))
            else:
                raise ValueError(f"message part of type {part.get('type')!r} is not supported by Gemini")
        return parts

    def request(self, messages: list[dict[str, Any]], frames: FrameBatch | None,
                sampling: SamplingConfig) -> tuple[list[Any], Any]:
        """The google-genai ``contents`` and ``config`` for one call (system text goes to
        ``system_instruction``, assistant turns become ``model`` turns)."""
        types = self._types
        system: list[str] = []
        contents = []
        for message in messages:
            if message["role"] == "system":
                content = message["content"]
                system.append(content if isinstance(content, str) else
                              "".join(p.get("text", "") for p in content))
                continue
            role = ROLES.get(message["role"])
            if role is None:
                raise ValueError(f"message role {message['role']!r} is not supported by Gemini")
            contents.append(types.Content(role=role, parts=self._parts(message["content"], frames)))
        config = types.GenerateContentConfig(
            system_instruction="\n\n".join(system) or None, temperature=sampling.temperature, top_p=sampling.top_p,
            max_output_tokens=sampling.max_tokens, seed=sampling.seed)
        return contents, config

    def generate(self, messages: list[dict[str, Any]], frames: FrameBatch | None,
                 sampling: SamplingConfig) -> Generation:
        contents, config = self.request(messages, frames, sampling)
        started = time.perf_counter()
        response = self._client.models.generate_content(model=self.model, contents=contents, config=config)
        usage = response.usage_metadata
        return Generation(text=response.text or "",
                          tokens_in=int(getattr(usage, "prompt_token_count", 0) or 0),
                          tokens_out=int(getattr(usage, "candidates_token_count", 0) or 0),
                          seconds=time.perf_counter() - started)
