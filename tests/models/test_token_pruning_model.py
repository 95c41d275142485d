"""Token pruning inside tiny random-weight Qwen2.5-VL / Qwen3-VL models: the pruned call against an
unpruned call (keep-ratio 1.0) and against a language-model run with the same tokens removed by hand."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from sage_fast.kernels.reference import token_prune_reference  # noqa: E402

from sage_fast.models.base import SamplingConfig  # noqa: E402
from sage_fast.models.qwen_inputs import (  # noqa: E402
    mm_token_type_ids,
    patchify_frames,
    second_per_grid,
    video_prompt_text,
)
from sage_fast.models.tiny import build_tiny_model  # noqa: E402
from sage_fast.models.token_pruning import TokenPruningConfig, prune_video_inputs  # noqa: E402
from sage_fast.models.transformers_backend import TransformersVLM  # noqa: E402
from sage_fast.video.types import FrameBatch  # noqa: E402

NUM_FRAMES = 8  # 4 temporal groups of 6 merged tokens


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / request.param, request.param)


def load(folder: Path, pruning: TokenPruningConfig | None = None) -> TransformersVLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformersVLM(folder, token_pruning=pruning)


@pytest.fixture(scope="module")
def model(folder: Path) -> TransformersVLM:
    return load(folder)


def frames_for(model: TransformersVLM) -> FrameBatch:
    """Random frames; group 2 repeats group 0's pixels (some tokens then repeat exactly) and group 1
    repeats group 0 (a temporal group that threshold pruning removes entirely)."""
    gen = torch.Generator().manual_seed(0)
    side = model.spec.factor
    data = torch.randint(0, 256, (NUM_FRAMES, 3, 2 * side, 3 * side), dtype=torch.uint8, generator=gen)
    data[2:4] = data[0:2]
    data[4:6, :, :side] = data[0:2, :, :side]
    return FrameBatch(data=data, pts_seconds=torch.arange(NUM_FRAMES) * 0.5,
                      duration_seconds=torch.full((NUM_FRAMES,), 0.5), indices=torch.arange(NUM_FRAMES))


def messages() -> list[dict[str, Any]]:
    return [{"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "frame", "index": i} for i in range(NUM_FRAMES)]
             + [{"type": "text", "text": "What happens?"}]}]


def full_inputs(model: TransformersVLM) -> dict[str, Any]:
    text, vision = model.prompt(messages(), frames_for(model))
    input_ids = model.tokenizer(text, return_tensors="pt").input_ids
    types = mm_token_type_ids(input_ids, image_token_id=model.image_token_id, video_token_id=model.video_token_id)
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), mm_token_type_ids=types, **vision)


def prune(model: TransformersVLM, inputs: dict[str, Any], config: TokenPruningConfig):  # noqa: ANN201
    return prune_video_inputs(model.model, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              mm_token_type_ids=inputs["mm_token_type_ids"],
                              pixel_values_videos=inputs["pixel_values_videos"],
                              video_grid_thw=inputs["video_grid_thw"],
                              second_per_grid_ts=inputs.get("second_per_grid_ts"), config=config)


@torch.no_grad()
def hand_pruned_logits(model: TransformersVLM, inputs: dict[str, Any], config: TokenPruningConfig) -> torch.Tensor:
    """The reference: the model's full embeddings and M-RoPE positions, the reference selection,
    the same sequence positions deleted by hand, then the language model and the LM head."""
    base, input_ids = model.model.model, inputs["input_ids"]
    video = base.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True)
    features = torch.cat(video.pooler_output)
    chosen, start = [], 0
    for (t, h, w), part in zip(inputs["video_grid_thw"].tolist(), video.pooler_output, strict=True):
        indices, _, _ = token_prune_reference(part.view(t, h * w // 4, -1), threshold=config.threshold,
                                              keep_ratio=config.keep_ratio)
        chosen.append(indices.long() + start)
        start += part.shape[0]
    indices = torch.cat(chosen)  # into all videos' tokens, in prompt order
    is_video = input_ids[0] == model.video_token_id
    slots = torch.nonzero(is_video).flatten()
    keep = ~is_video
    keep[slots[indices]] = True
    embeds = base.get_input_embeddings()(input_ids)
    embeds[0, is_video] = features.to(embeds.dtype)
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    positions, _ = base.get_rope_index(input_ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                       video_grid_thw=inputs["video_grid_thw"], **extra)
    lm_kwargs: dict[str, Any] = {}
    if model.family == "qwen3_vl":  # deepstack rows follow the kept video tokens
        lm_kwargs = {"visual_pos_masks": is_video[keep][None],
                     "deepstack_visual_embeds": [torch.cat(level)[indices] for level in video.deepstack_features]}
    hidden = base.language_model(inputs_embeds=embeds[:, keep], position_ids=positions[:, :, keep],
                                 **lm_kwargs).last_hidden_state
    return model.model.lm_head(hidden)


@torch.no_grad()
def test_keep_ratio_one_gives_identical_logits(model: TransformersVLM) -> None:
    inputs = full_inputs(model)
    pruned = prune(model, inputs, TokenPruningConfig(keep_ratio=1.0))
    assert pruned.visual_tokens_after == pruned.visual_tokens_before == 24
    assert torch.equal(pruned.input_ids, inputs["input_ids"])
    assert torch.equal(model.model(**pruned.model_kwargs()).logits, model.model(**inputs).logits)


@pytest.mark.parametrize("config", [TokenPruningConfig(keep_ratio=0.5), TokenPruningConfig(threshold=0.99)],
                         ids=["keep_ratio=0.5", "threshold=0.99"])
@torch.no_grad()
def test_pruned_logits_equal_hand_pruned_reference(model: TransformersVLM, config: TokenPruningConfig) -> None:
    inputs = full_inputs(model)
    pruned = prune(model, inputs, config)
    if config.keep_ratio is not None:
        assert pruned.counts == [6, 3, 3, 3]
    else:  # group 1 repeats group 0 pixel for pixel: every token of it goes
        assert pruned.counts[:2] == [6, 0] and pruned.visual_tokens_after < 24
    removed = 24 - pruned.visual_tokens_after
    assert pruned.input_ids.shape[1] == inputs["input_ids"].shape[1] - removed
    assert (pruned.input_ids == model.video_token_id).sum() == pruned.visual_tokens_after
    logits = model.model(**pruned.model_kwargs()).logits
    torch.testing.assert_close(logits, hand_pruned_logits(model, inputs, config))
    # Not vacuous: removing tokens changes what the model predicts.
    assert not torch.allclose(logits[0, -1], model.model(**inputs).logits[0, -1])


@torch.no_grad()
def test_two_videos_in_one_prompt(model: TransformersVLM) -> None:
    """Each video is pruned on its own (its first group kept whole), in prompt order. (Qwen3-VL
    ignores ``second_per_grid_ts``: its times are in the prompt text.)"""
    frames = frames_for(model)
    first = patchify_frames(frames.data, frames.pts_seconds, model.spec)
    second = patchify_frames(frames.data[:4].flip(0), frames.pts_seconds[:4], model.spec)  # 2 groups
    text = ("<|im_start|>user\n" + video_prompt_text(first, model.spec) + " and "
            + video_prompt_text(second, model.spec) + " differ?<|im_end|>\n<|im_start|>assistant\n")
    input_ids = model.tokenizer(text, return_tensors="pt").input_ids
    inputs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                  mm_token_type_ids=mm_token_type_ids(input_ids, image_token_id=model.image_token_id,
                                                      video_token_id=model.video_token_id),
                  pixel_values_videos=torch.cat([first.pixel_values, second.pixel_values]),
                  video_grid_thw=torch.cat([first.grid_thw, second.grid_thw]),
                  second_per_grid_ts=torch.tensor([second_per_grid(first, model.spec),
                                                   second_per_grid(second, model.spec)]))
    config = TokenPruningConfig(keep_ratio=0.5)
    pruned = prune(model, inputs, config)
    assert pruned.counts == [6, 3, 3, 3, 6, 3]
    torch.testing.assert_close(model.model(**pruned.model_kwargs()).logits, hand_pruned_logits(model, inputs, config))


@torch.no_grad()
def test_kept_tokens_keep_their_mrope_positions(model: TransformersVLM) -> None:
    inputs = full_inputs(model)
    pruned = prune(model, inputs, TokenPruningConfig(keep_ratio=0.5))
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    full, _ = model.model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                               video_grid_thw=inputs["video_grid_thw"], **extra)
    length = pruned.input_ids.shape[1]
    assert pruned.position_ids.shape == (4, 1, length)
    assert pruned.position_ids[0, 0].tolist() == list(range(length))  # cache/mask index
    assert torch.equal(pruned.position_ids[1:], full[:, :, pruned.kept[0]])


def record_positions(model: TransformersVLM) -> tuple[list[torch.Tensor], Any]:
    seen: list[torch.Tensor] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs["position_ids"].clone())

    return seen, model.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def test_generated_tokens_get_unpruned_positions(model: TransformersVLM) -> None:
    """Each decode step must see the M-RoPE position it would have had without pruning."""
    inputs = full_inputs(model)
    steps = 4
    seen, handle = record_positions(model)
    try:
        plain = model.model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        plain_positions = [p[-3:] for p in seen[1:]]  # decode steps, M-RoPE rows
        seen.clear()
        pruned = prune(model, inputs, TokenPruningConfig(keep_ratio=0.5))
        model.model.generate(**pruned.model_kwargs(), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        pruned_positions = [p[-3:] for p in seen[1:]]
        seen.clear()
        same = prune(model, inputs, TokenPruningConfig(keep_ratio=1.0))
        unpruned_again = model.model.generate(**same.model_kwargs(), max_new_tokens=steps, min_new_tokens=steps,
                                              do_sample=False)
    finally:
        handle.remove()
    assert len(plain_positions) == len(pruned_positions) == steps - 1
    for a, b in zip(plain_positions, pruned_positions, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(unpruned_again, plain)  # keep-ratio 1.0: the very same tokens


def test_backend_generate_with_pruning(folder: Path) -> None:
    config = TokenPruningConfig(keep_ratio=0.5)
    vlm = load(folder, config)
    generation = vlm.generate(messages(), frames_for(vlm), SamplingConfig(max_tokens=4))
    text, _ = vlm.prompt(messages(), frames_for(vlm))
    full_length = len(vlm.tokenizer(text).input_ids)
    assert vlm.last_pruning is not None and vlm.last_pruning.counts == [6, 3, 3, 3]
    assert generation.tokens_in == full_length - 9 and 1 <= generation.tokens_out <= 4
    text_only = vlm.generate([{"role": "user", "content": "hello"}], None, SamplingConfig(max_tokens=3))
    assert vlm.last_pruning is None and text_only.tokens_out >= 1


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="exactly one of threshold"):
        TokenPruningConfig()
    with pytest.raises(ValueError, match="exactly one of threshold"):
        TokenPruningConfig(threshold=0.9, keep_ratio=0.5)
    with pytest.raises(ValueError, match=r"threshold is a cosine similarity and must be in \[-1, 1\]"):
        TokenPruningConfig(threshold=1.5)
    with pytest.raises(ValueError, match=r"keep_ratio must be in \[0, 1\]"):
        TokenPruningConfig(keep_ratio=float("nan"))
    assert TokenPruningConfig(keep_ratio=0.0).keep_ratio == 0.0


def test_input_errors(model: TransformersVLM, folder: Path) -> None:
    inputs = full_inputs(model)
    two = {**inputs, "input_ids": inputs["input_ids"].repeat(2, 1)}
    with pytest.raises(ValueError, match=r"input_ids must be \(1, N\)"):
        prune(model, two, TokenPruningConfig(keep_ratio=0.5))
    ids = inputs["input_ids"].clone()
    ids[0, (ids[0] == model.video_token_id).nonzero()[0]] = 0  # one placeholder fewer than the grid says
    short = {**inputs, "input_ids": ids}
    with pytest.raises(ValueError, match="video placeholders"):
        prune(model, short, TokenPruningConfig(keep_ratio=0.5))
    with pytest.raises(TypeError, match="TokenPruningConfig"):
        TransformersVLM(folder, token_pruning={"keep_ratio": 0.5})  # type: ignore[arg-type]
