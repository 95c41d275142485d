"""Qwen-VL video inputs built in our own code, on the frames' device: patches, grid, prompt text.

transformers' Qwen video processors need torchvision (which cannot install beside the CPU torch
these machines use) and run on the CPU; SAGE's Stage-1 feeds 128 frames per call, so the work
belongs where the frames already are. The layout is exactly transformers': frames in groups of
``temporal_patch_size``, each group cut into ``patch_size`` squares ordered by ``merge_size``
blocks, normalised with the model's mean and std (tested against ``Qwen2VLImageProcessorPil``).
Qwen3-VL prompts put each group's time before its tokens as ``<t seconds>``; Qwen2.5-VL gets
``second_per_grid_ts`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class QwenVisionSpec:
    """The vision encoder's geometry and normalisation."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    timestamps_in_text: bool = False  # Qwen3-VL: "<t seconds>" before each temporal group

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (one merged token covers factor x factor px)."""
        return self.patch_size * self.merge_size

    @classmethod
    def qwen2_5_vl(cls) -> QwenVisionSpec:
        return cls()

    @classmethod
    def qwen3_vl(cls) -> QwenVisionSpec:
        return cls(patch_size=16, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), timestamps_in_text=True)


@dataclass
class VideoInputs:
    """One video's model inputs. ``pixel_values`` is float32 (patches, C*T*P*P) on the frames'
    device; ``grid_thw`` int64 (1, 3); ``group_seconds`` the time of each temporal group."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    group_seconds: list[float]
    tokens_per_group: int

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_group * len(self.group_seconds)


def patchify_frames(frames: torch.Tensor, pts_seconds: list[float] | torch.Tensor, spec: QwenVisionSpec) -> VideoInputs:
    """uint8 (T, 3, H, W) frames, already resized (H, W multiples of ``spec.factor``) -> inputs.

    A frame count that does not fill the last temporal group is padded by repeating the last
    frame, as transformers does; that group's time is the mean of its real frames' times.
    """
    if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (T, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    count, channels, height, width = frames.shape
    if count == 0 or height % spec.factor or width % spec.factor:
        raise ValueError(f"frames of {height}x{width} must be a non-empty batch with sides that are multiples of "
                         f"{spec.factor}; resize them with sage_fast.video.qwen_resize first")
    times = [float(t) for t in (pts_seconds.tolist() if isinstance(pts_seconds, torch.Tensor) else pts_seconds)]
    if len(times) != count:
        raise ValueError(f"{count} frames but {len(times)} timestamps")
    tps, ps, ms = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    pad = (-count) % tps
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    mean = torch.tensor(spec.image_mean, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.image_std, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    # Same arithmetic order as transformers (rescale, then normalise) so values match to the ulp.
    pixels = (frames.to(torch.float32) * (1 / 255) - mean) / std
    grid_t, grid_h, grid_w = (count + pad) // tps, height // ps, width // ps
    patches = pixels.reshape(grid_t, tps, channels, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * tps * ps * ps)
    groups = [times[i:i + tps] for i in range(0, count, tps)]
    return VideoInputs(
        pixel_values=flat,
        grid_thw=torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.int64),
        group_seconds=[sum(g) / len(g) for g in groups],
        tokens_per_group=grid_h * grid_w // (ms * ms),
    )


def video_prompt_text(inputs: VideoInputs, spec: QwenVisionSpec, *, video_token: str = "<|video_pad|>",
                      vision_start: str = "<|vision_start|>", vision_end: str = "<|vision_end|>") -> str:
    """The placeholder text the video's tokens replace: one block for Qwen2.5-VL, one block per
    temporal group with its time (``<12.5 seconds>``) for Qwen3-VL."""
    if not spec.timestamps_in_text:
        return vision_start + video_token * inputs.num_tokens + vision_end
    return "".join(f"<{t:.1f} seconds>{vision_start}{video_token * inputs.tokens_per_group}{vision_end}"
                   for t in inputs.group_seconds)


def second_per_grid(inputs: VideoInputs, spec: QwenVisionSpec) -> float:
    """Qwen2.5-VL's ``second_per_grid_ts``: seconds spanned by one temporal group (for M-RoPE)."""
    if len(inputs.group_seconds) < 2:
        return float(spec.temporal_patch_size)
    return (inputs.group_seconds[-1] - inputs.group_seconds[0]) / (len(inputs.group_seconds) - 1)


def mm_token_type_ids(input_ids: torch.Tensor, *, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """0 for text, 1 for image tokens, 2 for video tokens (transformers' convention), same shape."""
    types = torch.zeros_like(input_ids)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types
