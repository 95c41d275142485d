"""Frame-token pruning for a transformers Qwen2.5-VL / Qwen3-VL call: fewer video tokens, same positions.

Stage-1 gives the orchestrator 128 frames; consecutive temporal groups repeat most patches. Before
the language model runs, :func:`prune_video_inputs` encodes the video with the model's own
``get_video_features``, scores every merged token against the same position one group earlier
(:func:`sage_fast.kernels.token_prune.token_prune`, Triton on a GPU), and removes the redundant
ones *consistently* from everything the language model sees:

- the ``<|video_pad|>`` placeholders in ``input_ids`` (and ``attention_mask``, ``mm_token_type_ids``);
- the video embeddings, handed over as ``mm_encoder_outputs`` (transformers' own "pre-encoded
  vision" input, which ``generate`` uses for the prefill only), so the model's own placeholder
  scatter runs unchanged;
- Qwen3-VL's deepstack features (added to the hidden states of the first layers at the visual
  positions): the same rows are dropped from every level;
- the M-RoPE position ids: computed once by the model's own ``get_rope_index`` on the *full*
  prompt, then the pruned columns are removed, so every kept token (text included) keeps exactly
  its original (temporal, height, width) position. They go in as explicit ``(4, 1, N')`` position
  ids: row 0 is the plain 0..N'-1 index transformers uses for masks and the cache, rows 1-3 M-RoPE.

Why ``mm_encoder_outputs`` and not ``inputs_embeds``: with ``inputs_embeds`` the model never sees
the placeholders, so Qwen3-VL would skip deepstack (its ``visual_pos_masks`` come from them) and
the call would no longer be the model's own forward; with pruned placeholders plus pruned
pre-encoded features, everything after the vision tower is transformers' unchanged code path.

Decode steps: ``generate`` extends explicit position ids by ``last + 1`` per step, the same rule it
applies without pruning; since text tokens are never pruned, the last prompt position is the same,
so every generated token gets the position it would have had without pruning. ``rope_deltas`` (the
model's fallback for calls without position ids) is set to ``max_position + 1 - N'``, which gives
the same positions for a cache of N' tokens as the unpruned delta gives for N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class TokenPruningConfig:
    """How to prune video tokens that repeat the previous temporal group; exactly one criterion."""

    threshold: float | None = field(default=None, metadata={
        "help": "drop a token when the cosine similarity of its merged vision embedding with the same "
                "position one temporal group earlier is >= threshold (e.g. 0.95); in [-1, 1]"})
    keep_ratio: float | None = field(default=None, metadata={
        "help": "keep round(keep_ratio * tokens_per_group) most changed tokens of every group after the "
                "first (a fixed budget: the token count is known before the video is seen); in [0, 1]"})

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.keep_ratio is None):
            raise ValueError("TokenPruningConfig needs exactly one of threshold (e.g. 0.95) and keep_ratio "
                             f"(e.g. 0.5), got threshold={self.threshold}, keep_ratio={self.keep_ratio}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and -1.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold is a cosine similarity and must be in [-1, 1], got {self.threshold}")
        if self.keep_ratio is not None and not (math.isfinite(self.keep_ratio) and 0.0 <= self.keep_ratio <= 1.0):
            raise ValueError(f"keep_ratio must be in [0, 1] (1.0 keeps everything), got {self.keep_ratio}")


@dataclass
class PrunedVideoInputs:
    """A pruned prompt (batch 1, N' tokens of the original N) ready for ``forward`` or ``generate``.

    ``kept`` is the (1, N) bool mask of the original tokens that remain; ``counts`` the tokens
    kept per temporal group, video after video.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    mm_encoder_outputs: dict[str, Any]
    kept: torch.Tensor
    counts: list[int]
    visual_tokens_before: int
    visual_tokens_after: int

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model(**...)`` or ``model.generate(**..., max_new_tokens=...)``."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "mm_token_type_ids": self.mm_token_type_ids, "position_ids": self.position_ids,
                "mm_encoder_outputs": self.mm_encoder_outputs}


def _rope_index(base: Any, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, video_grid_thw: torch.Tensor,
                attention_mask: torch.Tensor, second_per_grid_ts: torch.Tensor | None) -> torch.Tensor:
    """(3, 1, N) M-RoPE positions of the full prompt, by the model's own ``get_rope_index``."""
    kwargs: dict[str, Any] = {"mm_token_type_ids": mm_token_type_ids, "video_grid_thw": video_grid_thw,
                              "attention_mask": attention_mask}
    if second_per_grid_ts is not None:  # Qwen2.5-VL's temporal spacing; Qwen3-VL has timestamps in text
        kwargs["second_per_grid_ts"] = second_per_grid_ts
    positions, _ = base.get_rope_index(input_ids, **kwargs)
    return positions


@torch.no_grad()
def prune_video_inputs(
    model: Any,
    *,
    input_ids: torch.Tensor,
    pixel_values_videos: torch.Tensor,
    video_grid_thw: torch.Tensor,
    config: TokenPruningConfig,
    attention_mask: torch.Tensor | None = None,
    mm_token_type_ids: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
) -> PrunedVideoInputs:
    """Encodes the videos of a one-prompt batch and prunes their redundant tokens (see module doc).

    model: a ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration``.
    input_ids: (1, N) prompt with one ``<|video_pad|>`` per merged video token.
    pixel_values_videos, video_grid_thw (V, 3), second_per_grid_ts (V,): as for the model's forward.
    Batch size 1 only: pruning leaves each prompt a different length, and the orchestrator sends one
    prompt per call; batching pruned prompts would need left padding with per-row positions.
    Runs without autograd (inference: ``generate``); a training forward that must backpropagate into
    the vision tower should re-apply the returned ``kept`` mask to its own differentiable features.
    """
    from sage_fast.kernels.token_prune import token_prune  # here: importing Triton waits for the first use

    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be (1, N): token pruning handles one prompt per call, got "
                         f"{tuple(input_ids.shape)}; call it once per prompt")
    if video_grid_thw.dim() != 2 or video_grid_thw.shape[1] != 3:
        raise ValueError(f"video_grid_thw must be (num_videos, 3) (t, h, w) patch grids, got {tuple(video_grid_thw.shape)}")
    base = model.model
    video_token_id = model.config.video_token_id
    merge = model.config.vision_config.spatial_merge_size
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if mm_token_type_ids is None:
        mm_token_type_ids = torch.zeros_like(input_ids)
        mm_token_type_ids[input_ids == video_token_id] = 2
    if (mm_token_type_ids == 1).any():
        raise ValueError("token pruning handles video inputs only, and this prompt holds image tokens; "
                         "call the model without token pruning for image prompts")

    slots = torch.nonzero(input_ids[0] == video_token_id).flatten()  # sequence index of every video token
    sizes = [int(t * h * w) // (merge * merge) for t, h, w in video_grid_thw.tolist()]
    if slots.numel() != sum(sizes):
        raise ValueError(f"input_ids hold {slots.numel()} video placeholders but video_grid_thw describes "
                         f"{sum(sizes)} merged tokens; build the prompt text from the same grid")
    video = base.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
    deepstack = getattr(video, "deepstack_features", None)  # Qwen3-VL: one tuple of per-video rows per level
    positions = _rope_index(base, input_ids, mm_token_type_ids, video_grid_thw, attention_mask, second_per_grid_ts)

    kept = torch.ones_like(input_ids[0], dtype=torch.bool)
    kept[slots] = False
    pooled, pooled_deep, counts = [], [[] for _ in deepstack or []], []
    start = 0
    for v, (grid_t, size) in enumerate(zip(video_grid_thw[:, 0].tolist(), sizes, strict=True)):
        embeds = video.pooler_output[v]
        out = token_prune(embeds.view(grid_t, size // grid_t, embeds.shape[-1]),
                          threshold=config.threshold, keep_ratio=config.keep_ratio)
        rows = out.indices.long()
        kept[slots[start:start + size][rows.to(slots.device)]] = True
        pooled.append(out.embeddings)
        for level, features in enumerate(deepstack or []):
            pooled_deep[level].append(features[v].index_select(0, rows.to(features[v].device)))
        counts.extend(out.counts.tolist())
        start += size
    video.pooler_output = tuple(pooled)
    if deepstack is not None:
        video.deepstack_features = [tuple(level) for level in pooled_deep]

    keep = kept.to(input_ids.device)
    pruned_mask = attention_mask[:, keep]
    text_positions = (pruned_mask.long().cumsum(-1) - 1).masked_fill(pruned_mask == 0, 0)
    mrope = positions[:, :, keep]
    position_ids = torch.cat([text_positions[None].to(mrope.device), mrope], dim=0)
    # The model's fallback for position-less calls: same positions for N' cached tokens as before for N.
    base.rope_deltas = (mrope.amax() + 1 - keep.sum()).view(1, 1)
    return PrunedVideoInputs(
        input_ids=input_ids[:, keep], attention_mask=pruned_mask, mm_token_type_ids=mm_token_type_ids[:, keep],
        position_ids=position_ids, mm_encoder_outputs={"video": video}, kept=kept[None], counts=counts,
        visual_tokens_before=int(slots.numel()), visual_tokens_after=sum(counts),
    )
