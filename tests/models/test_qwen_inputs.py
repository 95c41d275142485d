"""Qwen-VL video inputs equal transformers' layout: checked against its PIL image processor and a
plain loop over patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_fast.models.qwen_inputs import (
    QwenVisionSpec,
    mm_token_type_ids,
    patchify_frames,
    second_per_grid,
    video_prompt_text,
)


def frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, height, width), dtype=np.uint8))


def loop_reference(video: torch.Tensor, spec: QwenVisionSpec) -> np.ndarray:
    """Row by row: group g, merged block (bh, bw), position (mh, mw) in it; row = C x T x P x P."""
    tps, ps, ms = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    x = video.numpy().astype(np.float32) * np.float32(1 / 255)
    x = (x - np.array(spec.image_mean, np.float32)[None, :, None, None]) / np.array(spec.image_std, np.float32)[None, :, None, None]
    if len(x) % tps:
        x = np.concatenate([x, np.repeat(x[-1:], tps - len(x) % tps, axis=0)])
    rows = []
    gh, gw = x.shape[2] // ps, x.shape[3] // ps
    for g in range(len(x) // tps):
        for bh in range(gh // ms):
            for bw in range(gw // ms):
                for mh in range(ms):
                    for mw in range(ms):
                        h, w = (bh * ms + mh) * ps, (bw * ms + mw) * ps
                        rows.append(x[g * tps:(g + 1) * tps, :, h:h + ps, w:w + ps].transpose(1, 0, 2, 3).reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize("spec", [QwenVisionSpec.qwen2_5_vl(), QwenVisionSpec.qwen3_vl()], ids=["qwen2.5", "qwen3"])
@pytest.mark.parametrize(("count", "blocks_h", "blocks_w"), [(2, 2, 3), (4, 4, 2), (3, 2, 2), (1, 1, 1)])
def test_patches_equal_the_loop(spec: QwenVisionSpec, count: int, blocks_h: int, blocks_w: int) -> None:
    height, width = blocks_h * spec.factor, blocks_w * spec.factor
    video = frames(count, height, width)
    inputs = patchify_frames(video, list(range(count)), spec)
    np.testing.assert_allclose(inputs.pixel_values.numpy(), loop_reference(video, spec), rtol=0, atol=1e-6)
    t = (count + 1) // 2
    assert inputs.grid_thw.tolist() == [[t, height // spec.patch_size, width // spec.patch_size]]
    assert inputs.num_tokens == t * (height // spec.patch_size) * (width // spec.patch_size) // 4


def test_two_equal_frames_equal_the_transformers_image_processor() -> None:
    """An image is a video of one group whose frames are the same picture."""
    processors = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    from PIL import Image

    image = frames(1, 112, 168, seed=3)
    processor = processors.Qwen2VLImageProcessorPil()
    expected = processor(images=[Image.fromarray(image[0].permute(1, 2, 0).numpy())], do_resize=False,
                         return_tensors="np")
    ours = patchify_frames(image.expand(2, -1, -1, -1).contiguous(), [0.0, 0.0], QwenVisionSpec.qwen2_5_vl())
    assert ours.grid_thw.tolist() == expected["image_grid_thw"].tolist()
    np.testing.assert_allclose(ours.pixel_values.numpy(), expected["pixel_values"], rtol=0, atol=1e-6)


def test_qwen3_prompt_has_group_times_and_token_counts() -> None:
    spec = QwenVisionSpec.qwen3_vl()
    inputs = patchify_frames(frames(5, 64, 96), [0.5, 1.5, 2.5, 3.5, 4.5], spec)
    assert inputs.group_seconds == [1.0, 3.0, 4.5]  # the padded last group keeps its real frame's time
    text = video_prompt_text(inputs, spec)
    assert text.startswith("<1.0 seconds><|vision_start|>") and text.count("<|vision_start|>") == 3
    assert text.count("<|video_pad|>") == inputs.num_tokens == 3 * (4 * 6 // 4)
    assert "<4.5 seconds>" in text


def test_qwen2_5_prompt_and_seconds_per_group() -> None:
    spec = QwenVisionSpec.qwen2_5_vl()
    inputs = patchify_frames(frames(4, 56, 56), [0.0, 0.5, 1.0, 1.5], spec)
    assert video_prompt_text(inputs, spec) == "<|vision_start|>" + "<|video_pad|>" * 8 + "<|vision_end|>"
    assert second_per_grid(inputs, spec) == pytest.approx(1.0)


def test_mm_token_type_ids() -> None:
    ids = torch.tensor([[5, 9, 9, 7, 8, 8, 1]])
    assert mm_token_type_ids(ids, image_token_id=7, video_token_id=9).tolist() == [[0, 2, 2, 1, 0, 0, 0]]


@pytest.mark.parametrize(("video", "problem"), [
    (torch.zeros((2, 3, 50, 56), dtype=torch.uint8), "multiples of 28"),
    (torch.zeros((2, 3, 56, 56), dtype=torch.float32), "uint8"),
    (torch.zeros((0, 3, 56, 56), dtype=torch.uint8), "non-empty"),
])
def test_bad_frames(video: torch.Tensor, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        patchify_frames(video, [0.0] * len(video), QwenVisionSpec.qwen2_5_vl())


@pytest.mark.gpu
def test_cuda_inputs_stay_on_the_device_and_match_cpu() -> None:
    video = frames(4, 56, 84)
    cpu = patchify_frames(video, [0, 1, 2, 3], QwenVisionSpec.qwen2_5_vl())
    cuda = patchify_frames(video.cuda(), [0, 1, 2, 3], QwenVisionSpec.qwen2_5_vl())
    assert cuda.pixel_values.device.type == "cuda"
    torch.testing.assert_close(cuda.pixel_values.cpu(), cpu.pixel_values)
