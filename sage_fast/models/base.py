"""The one interface every orchestrator backend implements, so the loop and the RL scheduler can
drive a local model, a vLLM server or Gemini alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sage_fast.video.types import FrameBatch


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; temperature 0 for evaluation, 0.7 for RL rollouts (DESIGN.md §2)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None
    logprobs: bool = False  # also return each generated token's log-probability (GRPO's old policy)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")


@dataclass(frozen=True)
class Generation:
    """One completion: the text and what it cost."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    visual_tokens: int | None = None  # visual tokens the model read (after pruning); None: unknown
    token_ids: tuple[int, ...] | None = None  # the generated tokens, where the backend exposes them
    logprobs: tuple[float, ...] | None = None  # per generated token, when SamplingConfig.logprobs

    def __post_init__(self) -> None:
        if self.logprobs is not None and self.token_ids is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"Generation: {len(self.logprobs)} logprobs for {len(self.token_ids)} tokens")


class Orchestrator(Protocol):
    """``messages`` are chat messages whose content may hold ``{"type": "frame", "index": i}``
    parts; ``frames`` holds those frames' pixels (None for text-only Stage-2 prompts)."""

    name: str

    def generate(self, messages: list[dict[str, Any]], frames: FrameBatch | None,
                 sampling: SamplingConfig) -> Generation: ...
