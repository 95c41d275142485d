"""Training samples from trajectories: each turn's prompt and response, tokenized on demand.

DESIGN.md §6: one ``TurnSample`` view feeds SFT records, GRPO training samples and the viewer.
A turn's prompt holds its frames by reference (their times), so a sample re-decodes exactly those
frames from the video (``frames_at`` on the recorded pts returns the same frames the episode saw)
and rebuilds the model inputs with the orchestrator's own prompt code; the labels cover only the
response, which is what both SFT and the policy-gradient loss train on. Samples of very different
lengths then go into packed rows (:func:`sage_fast.models.packed_attention.pack_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sage_fast.agent.trajectory import Trajectory
from sage_fast.video.types import FrameBatch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TurnSample:
    """One model call of an episode as a (prompt, response) pair."""

    stage: str
    step: int
    messages: list[dict[str, Any]]  # the prompt; frame parts carry their "pts"
    response: str  # the raw output, exactly as generated
    frame_pts: tuple[float, ...]  # the Stage-1 frames' times, () for text-only turns

    @property
    def has_frames(self) -> bool:
        return bool(self.frame_pts)


def frame_pts(messages: list[dict[str, Any]]) -> tuple[float, ...]:
    """The times of the frames a prompt refers to (its ``{"type": "frame", "pts": s}`` parts)."""
    return tuple(float(part["pts"]) for message in messages if isinstance(message["content"], list)
                 for part in message["content"] if part.get("type") == "frame")


def turn_samples(trajectory: Trajectory) -> list[TurnSample]:
    """Every turn of ``trajectory`` as a sample, in order."""
    return [TurnSample(stage=turn.stage, step=turn.step, messages=turn.messages, response=turn.raw_output,
                       frame_pts=frame_pts(turn.messages)) for turn in trajectory.turns]


def sample_frames(sample: TurnSample, reader: Any, size: tuple[int, int]) -> FrameBatch | None:
    """The frames the turn saw, re-decoded at their recorded times and resized to ``size``."""
    return reader.frames_at(list(sample.frame_pts), size=size) if sample.has_frames else None


def tokenize_sample(vlm: Any, sample: TurnSample, frames: FrameBatch | None) -> dict[str, torch.Tensor]:
    """Model inputs for one sample on a :class:`~sage_fast.models.transformers_backend.TransformersVLM`:
    ``input_ids`` and ``labels`` (seqlen,) with the prompt masked, ``mm_token_type_ids`` and the
    video tensors when the turn had frames. The response ends with ``<|im_end|>`` so the model
    learns to stop; prompt and response are tokenized separately (as in generation), so the
    prompt tokens are exactly the ones the model read."""
    from sage_fast.models.qwen_inputs import mm_token_type_ids

    if sample.has_frames and frames is None:
        raise ValueError(f"the {sample.stage} turn saw {len(sample.frame_pts)} frames: pass them "
                         "(sample_frames(sample, reader, size))")
    text, vision = vlm.prompt(sample.messages, frames)
    prompt = vlm.tokenizer(text, return_tensors="pt").input_ids[0]
    response = vlm.tokenizer(sample.response + "<|im_end|>", return_tensors="pt").input_ids[0]
    input_ids = torch.cat([prompt, response])
    labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), response])
    out = {"input_ids": input_ids, "labels": labels,
           "mm_token_type_ids": mm_token_type_ids(input_ids.unsqueeze(0), image_token_id=vlm.image_token_id,
                                                  video_token_id=vlm.video_token_id)[0]}
    out.update({key: vision[key] for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
                if key in vision})
    return out
