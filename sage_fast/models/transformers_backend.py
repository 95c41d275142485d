"""Orchestrator on a local transformers Qwen-VL model (Qwen2.5-VL or Qwen3-VL, e.g. SAGE-MM).

The model and tokenizer load with transformers' own ``from_pretrained``; the video inputs are
ours (:mod:`sage_fast.models.qwen_inputs`, on the frames' device), and the chat text is Qwen's
ChatML written directly, so neither torchvision nor a chat template in the tokenizer is needed.
All Stage-1 frames form one video: Qwen-VL's temporal patches pair consecutive frames, and its
M-RoPE positions carry their times.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from sage_fast.models.base import Generation, SamplingConfig
from sage_fast.models.qwen_inputs import (
    CLIP_MEAN,
    CLIP_STD,
    QwenVisionSpec,
    mm_token_type_ids,
    patchify_frames,
    second_per_grid,
    video_prompt_text,
)
from sage_fast.models.token_pruning import PrunedVideoInputs, TokenPruningConfig, prune_video_inputs
from sage_fast.video.types import FrameBatch

FAMILIES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def _vision_spec(path: Path, config: Any) -> QwenVisionSpec:
    vision = config.vision_config
    qwen3 = config.model_type == "qwen3_vl"
    mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if qwen3 else (CLIP_MEAN, CLIP_STD)
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():  # a real checkpoint states its normalisation
            pre = json.loads((path / name).read_text())
            mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
            break
    return QwenVisionSpec(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                          temporal_patch_size=vision.temporal_patch_size, image_mean=mean, image_std=std,
                          timestamps_in_text=qwen3)


def generate_settings(sampling: SamplingConfig, pad_token_id: int | None) -> dict[str, Any]:
    """``generate()`` keyword arguments for ``sampling`` (seeds torch when a seed is set); with
    ``sampling.logprobs`` the output also carries each step's raw logits."""
    settings: dict[str, Any] = dict(max_new_tokens=sampling.max_tokens, do_sample=sampling.temperature > 0,
                                    pad_token_id=pad_token_id)
    if sampling.temperature > 0:
        settings.update(temperature=sampling.temperature, top_p=sampling.top_p)
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    if sampling.logprobs:
        settings.update(return_dict_in_generate=True, output_logits=True)
    return settings


def split_generate_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sequences, per-step log-probabilities (batch, new, vocab) or None) of a ``generate()`` result.

    The log-probabilities are the model's own distribution (raw logits, temperature 1), which is
    what a GRPO trainer recomputes for the old policy, whatever the sampling temperature was.
    """
    if isinstance(output, torch.Tensor):
        return output, None
    return output.sequences, torch.stack(output.logits, dim=1).float().log_softmax(-1)


def chosen_logprobs(steps: torch.Tensor, tokens: torch.Tensor | list[int]) -> tuple[float, ...]:
    """Each generated token's log-probability from one row's (new, vocab) step log-probabilities."""
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=steps.device)
    return tuple(steps[torch.arange(len(tokens), device=steps.device), tokens].tolist())


class TransformersVLM:
    """``TransformersVLM("allenai/SAGE-MM-Qwen3-VL-8B-SFT_RL", device="cuda")`` or a local folder.

    ``token_pruning``: drop the video tokens that repeat the previous temporal group before the
    language model runs (:mod:`sage_fast.models.token_pruning`); the kept tokens keep their M-RoPE
    positions. ``last_pruning`` then holds the last call's pruned inputs (counts, kept mask).
    """

    def __init__(self, model: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
                 token_pruning: TokenPruningConfig | None = None) -> None:
        if token_pruning is not None and not isinstance(token_pruning, TokenPruningConfig):
            raise TypeError(f"token_pruning must be a TokenPruningConfig (or None), got {type(token_pruning).__name__}; "
                            "e.g. TokenPruningConfig(keep_ratio=0.5)")
        self.token_pruning = token_pruning
        self.last_pruning: PrunedVideoInputs | None = None
        # Qwen-VL keeps per-call state on the model (rope_deltas during generate), so two calls at
        # once (run_many's episodes, a tool sharing the orchestrator) would corrupt each other's
        # positions: one call at a time per loaded model (code calling model.generate directly holds
        # this lock too). Batching is the rollout engines' job.
        self.generate_lock = threading.Lock()
        import transformers
        from huggingface_hub import snapshot_download
        from transformers import AutoConfig, AutoTokenizer

        path = Path(model)
        if not path.is_dir():  # a hub id: transformers' own download (needs the hub)
            try:
                path = Path(snapshot_download(str(model)))
            except Exception as exc:  # offline, unknown id, gated: one message that says what to do
                raise OSError(f"{model}: not a local folder, and the Hugging Face hub could not provide it "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                              "Give a local model folder, or download it first "
                              f"(`huggingface-cli download {model}`) on a machine with network access") from exc
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in FAMILIES:
            raise ValueError(f"{model}: model type {config.model_type!r} is not a supported orchestrator; "
                             f"use a Qwen2.5-VL or Qwen3-VL checkpoint ({', '.join(FAMILIES)})")
        if (path / "sage_fast_tiny.json").is_file():
            warnings.warn(f"{model}: {json.loads((path / 'sage_fast_tiny.json').read_text())['note']}", stacklevel=2)
        self.name = f"transformers:{model}"
        self.device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        model_class = getattr(transformers, FAMILIES[config.model_type])
        self.model = model_class.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.family = config.model_type
        self.spec = _vision_spec(path, config)
        self.video_token_id = config.video_token_id
        self.image_token_id = config.image_token_id

    def prompt(self, messages: list[dict[str, Any]], frames: FrameBatch | None) -> tuple[str, dict[str, Any]]:
        """Qwen ChatML text and the vision tensors for it."""
        vision: dict[str, Any] = {}
        chunks = []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                body = content
            else:
                parts, video_done = [], False
                for part in content:
                    if part.get("type") == "frame":
                        if frames is None:
                            raise ValueError("a message refers to frames but none were given")
                        if not video_done:  # all frames form one video, placed at the first frame
                            inputs = patchify_frames(frames.data.to(self.device), frames.pts_seconds, self.spec)
                            vision["pixel_values_videos"] = inputs.pixel_values.to(self.model.dtype)
                            vision["video_grid_thw"] = inputs.grid_thw.to(self.device)
                            if self.family == "qwen2_5_vl":
                                vision["second_per_grid_ts"] = torch.tensor([second_per_grid(inputs, self.spec)])
                            parts.append(video_prompt_text(inputs, self.spec))
                            video_done = True
                    elif part.get("type") == "text":
                        parts.append(part["text"])
                body = "".join(parts)
            chunks.append(f"<|im_start|>{message['role']}\n{body}<|im_end|>\n")
        chunks.append("<|im_start|>assistant\n")
        return "".join(chunks), vision

    def generate(self, messages: list[dict[str, Any]], frames: FrameBatch | None,
                 sampling: SamplingConfig) -> Generation:
        """One completion; calls from several threads run one after another (see ``__init__``)."""
        with self.generate_lock, torch.inference_mode():
            return self._generate(messages, frames, sampling)

    def _generate(self, messages: list[dict[str, Any]], frames: FrameBatch | None,
                  sampling: SamplingConfig) -> Generation:
        started = time.perf_counter()
        text, vision = self.prompt(messages, frames)
        input_ids = self.tokenizer(text, return_tensors="pt").input_ids.to(self.device)
        types = mm_token_type_ids(input_ids, image_token_id=self.image_token_id, video_token_id=self.video_token_id)
        self.last_pruning = None
        if self.token_pruning is not None and "pixel_values_videos" in vision:
            # Placeholders, embeddings (deepstack too), mask and M-RoPE positions pruned together.
            self.last_pruning = prune_video_inputs(
                self.model, input_ids=input_ids, pixel_values_videos=vision["pixel_values_videos"],
                video_grid_thw=vision["video_grid_thw"], second_per_grid_ts=vision.get("second_per_grid_ts"),
                attention_mask=torch.ones_like(input_ids), mm_token_type_ids=types, config=self.token_pruning)
            model_inputs = self.last_pruning.model_kwargs()
        else:
            model_inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                mm_token_type_ids=types, **vision)
        prompt_length = model_inputs["input_ids"].shape[1]  # what the language model reads
        output, steps = split_generate_output(self.model.generate(
            **model_inputs, **generate_settings(sampling, self.tokenizer.pad_token_id)))
        new = output[0, prompt_length:]
        logprobs = chosen_logprobs(steps[0], new) if steps is not None else None
        visual = int((model_inputs["input_ids"] == self.video_token_id).sum())
        return Generation(text=self.tokenizer.decode(new, skip_special_tokens=True), tokens_in=int(prompt_length),
                          tokens_out=int(new.shape[0]), seconds=time.perf_counter() - started,
                          visual_tokens=visual, token_ids=tuple(new.tolist()), logprobs=logprobs)
