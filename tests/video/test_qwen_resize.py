"""Tests for sage_fast.video.qwen_resize: Qwen's smart_resize rule and batched frame resizing.

References come from transformers (skipped when it is not installed): its own ``smart_resize`` for
the sizes, and ``Qwen2VLImageProcessorPil.resize`` (PIL bicubic, one frame at a time) for pixels.

Measured against PIL on the natural-looking frames built below (10 sizes x 3 seeds, 2 CPU
threads, torch 2.13, Pillow 13), per-pixel |ours - PIL| in grey levels:
  default float path (torchvision's sequence)  mean <= 0.21, 99.9th pct <= 1, max <= 9
  uint8_kernel=True (torch's uint8 CPU kernel) mean <= 0.006, 99.9th pct <= 1, max <= 2
  antialias=False                              mean up to 4.2, max up to 108 (aliasing)
The assertions leave headroom over these numbers. The float path cannot be bit-exact: PIL's
bicubic runs in fixed point and rounds/clips to uint8 between its horizontal and vertical passes,
torch's float kernel carries overshoots to the end (emulating PIL's two passes in float brings the
maximum down to 1, confirming this is the source). Both use the same kernel, a = -0.5, when
antialias is on; torch's non-antialiased bicubic uses a = -0.75.
"""

from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import torch

from sage_fast.video.qwen_resize import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    QwenResizeConfig,
    resize_frames,
    smart_resize,
    visual_tokens_per_frame,
)

# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_qwen():
    """transformers' PIL Qwen2-VL image processing module (the one that needs no torchvision)."""
    # Any ImportError skips: transformers absent, too old for this module, or broken beside this torch.
    return pytest.importorskip(
        "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl", exc_type=ImportError
    )


def natural_frame(height: int, width: int, seed: int) -> np.ndarray:
    """A (3, H, W) uint8 frame with smooth shading, hard-edged blocks and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((3, height, width), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.005, 0.05, 2)
        img[c] = 128 + 90 * np.sin(x * fx + rng.uniform(0, 6)) * np.cos(y * fy)
    for _ in range(6):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(1, max(2, height // 3)), rng.integers(1, max(2, width // 3))
        img[:, y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, (3, 1, 1))
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def random_frames(n: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, height, width), dtype=torch.uint8, generator=gen)


# --- smart_resize ------------------------------------------------------------------------------

BUDGETS = [
    (28, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS),  # SAGE: 128-192 tokens per frame
    (28, 56 * 56, 28 * 28 * 1280),  # transformers' Qwen2-VL image defaults
    (32, 128 * 32 * 32, 192 * 32 * 32),  # Qwen3-VL geometry (patch 16)
    (28, 28 * 28, 28 * 28),  # one token, min == max
    (28, 192 * 28 * 28, 192 * 28 * 28),  # fixed budget
    (28, 4 * 28 * 28, 16 * 28 * 28),  # small
    (14, 14 * 14 * 4, 14 * 14 * 100),  # a different factor
]
SIZES = [
    (1, 1), (1, 2), (2, 3), (13, 13), (14, 14), (15, 15), (27, 28), (28, 28), (29, 29), (42, 42),
    (144, 256), (240, 320), (360, 640), (480, 640), (480, 854), (576, 720), (720, 1280),
    (1080, 1920), (1440, 2560), (2160, 3840), (4320, 7680), (1920, 1080), (1280, 720),
    (10000, 10000), (20000, 30000), (65535, 65535), (123457, 98765),
    (1, 200), (200, 1), (28, 5600), (5600, 28), (10, 2000), (50, 9999), (7, 1400), (100, 20000),
    (1, 201), (28, 5601), (10, 2001), (5, 5000),  # aspect ratio > 200: both must refuse
]  # fmt: skip


def _sweep_sizes() -> list[tuple[int, int]]:
    rng = random.Random(1234)
    sizes = list(SIZES)
    for _ in range(1500):
        sizes.append((rng.randint(1, 5000), rng.randint(1, 5000)))
    for _ in range(300):  # thin frames around the aspect-ratio limit
        short = rng.randint(1, 300)
        sizes.append((short, short * rng.randint(150, 210) + rng.randint(0, 9)))
    return sizes


@pytest.mark.parametrize(("factor", "min_pixels", "max_pixels"), BUDGETS)
def test_smart_resize_matches_transformers(hf_qwen, factor: int, min_pixels: int, max_pixels: int) -> None:
    ref = hf_qwen.smart_resize
    checked = refused = 0
    for height, width in _sweep_sizes():
        for h, w in ((height, width), (width, height)):
            try:
                expected = ref(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
            except ValueError:
                with pytest.raises(ValueError, match="aspect ratio"):
                    smart_resize(h, w, factor, min_pixels, max_pixels)
                refused += 1
                continue
            assert smart_resize(h, w, factor, min_pixels, max_pixels) == expected, (h, w)
            checked += 1
    assert checked > 3000 and refused > 10


def test_smart_resize_defaults_are_sages_budget() -> None:
    h, w = smart_resize(1080, 1920)
    assert (h, w) == (280, 504)
    assert DEFAULT_MIN_PIXELS <= h * w <= DEFAULT_MAX_PIXELS
    assert smart_resize(1080, 1920) == QwenResizeConfig().output_size(1080, 1920)


@pytest.mark.parametrize(
    ("height", "width"),
    [(240, 320), (360, 640), (480, 640), (720, 1280), (1080, 1920), (2160, 3840), (1920, 1080), (480, 480)],
)
def test_sage_budget_gives_128_to_192_tokens(height: int, width: int) -> None:
    config = QwenResizeConfig()
    h, w = config.output_size(height, width)
    assert h % 28 == 0 and w % 28 == 0
    assert 128 <= visual_tokens_per_frame(h, w, config) <= 192
    assert abs(h / w - height / width) < 0.1 * height / width  # aspect ratio kept


def test_smart_resize_accepts_integer_scalars() -> None:
    assert smart_resize(np.int64(480), torch.tensor(640)) == smart_resize(480, 640)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 10), "height"),
        ((10, -1), "width"),
        ((10.0, 10), "height"),
        ((True, 10), "height"),
        ((10, 10, 0), "factor"),
        ((10, 10, 28, 0), "min_pixels"),
        ((10, 10, 28, 1000, 999), "must not exceed"),
        ((1, 201), r"aspect ratio of a 1x201 frame is 201.0"),
        ((10000, 3), "above Qwen-VL's limit of 200"),
    ],
)
def test_smart_resize_rejects(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        smart_resize(*args)


# --- QwenResizeConfig / visual_tokens_per_frame ------------------------------------------------


def test_config_defaults_and_factor() -> None:
    config = QwenResizeConfig()
    assert (config.patch_size, config.merge_size, config.temporal_patch_size) == (14, 2, 2)
    assert (config.min_pixels, config.max_pixels) == (128 * 28 * 28, 192 * 28 * 28)
    assert config.factor == 28
    assert QwenResizeConfig(patch_size=16).factor == 32


def test_config_from_token_budget() -> None:
    assert QwenResizeConfig.from_token_budget() == QwenResizeConfig()
    qwen3 = QwenResizeConfig.from_token_budget(128, 192, patch_size=16)
    assert (qwen3.factor, qwen3.min_pixels, qwen3.max_pixels) == (32, 128 * 32 * 32, 192 * 32 * 32)
    h, w = qwen3.output_size(1080, 1920)
    assert h % 32 == 0 and w % 32 == 0
    assert 128 <= visual_tokens_per_frame(h, w, qwen3) <= 192


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 0}, "patch_size"),
        ({"merge_size": -2}, "merge_size"),
        ({"temporal_patch_size": 1.5}, "temporal_patch_size"),
        ({"patch_size": True}, "patch_size"),
        ({"min_pixels": 200_000}, "must not exceed"),
        ({"min_pixels": 100, "max_pixels": 500}, "below one token's area"),
    ],
)
def test_config_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QwenResizeConfig(**kwargs)


def test_visual_tokens_per_frame() -> None:
    config = QwenResizeConfig()
    assert visual_tokens_per_frame(336, 448, config) == 192  # (24 x 32 patches) / (2 x 2)
    assert visual_tokens_per_frame(28, 28, config) == 1
    assert visual_tokens_per_frame(320, 448, QwenResizeConfig(patch_size=16)) == 140
    with pytest.raises(ValueError, match="multiples of 28"):
        visual_tokens_per_frame(1080, 1920, config)


# --- resize_frames: shapes, layouts, errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width"), [(480, 640), (100, 150), (333, 517), (60, 3000), (720, 405), (14, 14)]
)
def test_resize_frames_output_size(height: int, width: int) -> None:
    config = QwenResizeConfig()
    frames = random_frames(3, height, width)
    out = resize_frames(frames, config)
    assert out.shape == (3, 3, *smart_resize(height, width))
    assert out.dtype == torch.uint8 and out.device == frames.device and out.is_contiguous()


def test_resize_frames_accepts_non_contiguous_views() -> None:
    base = random_frames(6, 360, 640, seed=1)
    expected = resize_frames(base)
    nhwc = base.permute(0, 2, 3, 1).contiguous()  # decoder layout ...
    view = nhwc.permute(0, 3, 1, 2)  # ... seen as NCHW without a copy (channels-last strides)
    assert not view.is_contiguous()
    for kernel in (False, True):
        out = resize_frames(view, uint8_kernel=kernel)
        assert out.is_contiguous()
        assert torch.equal(out, resize_frames(base, uint8_kernel=kernel))
    assert torch.equal(resize_frames(view), expected)

    wide = random_frames(4, 400, 700, seed=2)
    crop = wide[:, :, 20:380, 30:670]  # a crop view: neither NCHW- nor NHWC-contiguous
    assert torch.equal(resize_frames(crop), resize_frames(crop.contiguous()))
    every_other = base[::2]
    assert torch.equal(resize_frames(every_other), expected[::2])


def test_resize_frames_batched_equals_one_by_one() -> None:
    frames = random_frames(5, 240, 320, seed=3)
    batched = resize_frames(frames)
    single = torch.cat([resize_frames(frames[i : i + 1]) for i in range(len(frames))])
    assert torch.equal(batched, single)


def test_resize_frames_empty_batch_grayscale_and_identity() -> None:
    out = resize_frames(random_frames(0, 480, 640))
    assert out.shape == (0, 3, 336, 448)
    gray = resize_frames(random_frames(2, 480, 640, channels=1))
    assert gray.shape == (2, 1, 336, 448)
    already = random_frames(2, 336, 448)  # already the size smart_resize picks
    assert torch.equal(resize_frames(already), already)


def test_resize_frames_uint8_kernel_is_close_to_float_path() -> None:
    frames = torch.from_numpy(np.stack([natural_frame(480, 640, s) for s in range(2)]))
    a = resize_frames(frames).int()
    b = resize_frames(frames, uint8_kernel=True).int()
    diff = (a - b).abs().float()
    assert diff.mean() < 0.35 and diff.max() <= 12


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "bilinear", "bicubic"])
def test_resize_frames_modes(mode: str) -> None:
    frames = random_frames(2, 480, 640)
    out = resize_frames(frames, interpolation=mode)  # antialias=True is ignored for nearest
    assert out.shape == (2, 3, 336, 448)
    if mode.startswith("nearest"):
        assert set(out.unique().tolist()) <= set(frames.unique().tolist())


def test_resize_frames_flat_image_stays_flat() -> None:
    frames = torch.full((2, 3, 480, 640), 200, dtype=torch.uint8)
    for kernel in (False, True):
        assert (resize_frames(frames, uint8_kernel=kernel) == 200).all()
    extremes = torch.zeros((1, 3, 480, 640), dtype=torch.uint8)
    extremes[..., ::2, :] = 255  # bicubic overshoots here: results must be clamped, not wrapped
    out = resize_frames(extremes).int()
    assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize(
    ("frames", "kwargs", "match"),
    [
        (torch.zeros(1, 3, 480, 640), {}, "uint8"),
        (torch.zeros(3, 480, 640, dtype=torch.uint8), {}, r"\(N, C, H, W\)"),
        (np.zeros((1, 3, 480, 640), np.uint8), {}, "torch.Tensor"),
        (torch.zeros(1, 3, 0, 640, dtype=torch.uint8), {}, "empty spatial size"),
        (torch.zeros(1, 3, 480, 640, dtype=torch.uint8), {"interpolation": "area"}, "interpolation"),
        (torch.zeros(1, 3, 2, 640, dtype=torch.uint8), {}, "aspect ratio"),
    ],
)
def test_resize_frames_rejects(frames: object, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resize_frames(frames, **kwargs)  # type: ignore[arg-type]


# --- resize_frames vs PIL (transformers' Qwen2VLImageProcessorPil) ------------------------------


def _pil_reference(hf_qwen, frames: np.ndarray, config: QwenResizeConfig) -> np.ndarray:
    from transformers.image_utils import PILImageResampling

    processor = hf_qwen.Qwen2VLImageProcessorPil(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    return np.stack(
        [
            processor.resize(
                frame, size=processor.size, resample=PILImageResampling.BICUBIC, factor=config.factor
            )
            for frame in frames
        ]
    )


@pytest.mark.parametrize(
    ("height", "width"),
    [(480, 640), (1080, 1920), (360, 640), (100, 150), (333, 517), (1280, 720), (60, 3000)],
)
def test_resize_frames_close_to_pil(hf_qwen, height: int, width: int) -> None:
    config = QwenResizeConfig()
    frames = np.stack([natural_frame(height, width, seed) for seed in range(2)])
    reference = _pil_reference(hf_qwen, frames, config).astype(np.int32)
    assert reference.shape[-2:] == smart_resize(height, width)

    tensor = torch.from_numpy(frames)
    for kernel, mean_tol, max_tol in ((False, 0.35, 12), (True, 0.02, 2)):
        ours = resize_frames(tensor, config, uint8_kernel=kernel).numpy().astype(np.int32)
        assert ours.shape == reference.shape
        diff = np.abs(ours - reference)
        assert diff.mean() < mean_tol, (kernel, diff.mean())
        assert np.percentile(diff, 99.9) <= 2, (kernel, np.percentile(diff, 99.9))
        assert diff.max() <= max_tol, (kernel, diff.max())


@pytest.mark.parametrize(("height", "width"), [(1080, 1920), (480, 640)])
def test_antialias_is_the_closer_option(hf_qwen, height: int, width: int) -> None:
    """Why antialias=True is the default: it is torch's PIL-style bicubic (a = -0.5, full footprint)."""
    config = QwenResizeConfig()
    frames = natural_frame(height, width, 7)[None]
    reference = _pil_reference(hf_qwen, frames, config).astype(np.int32)
    tensor = torch.from_numpy(frames)
    with_aa = np.abs(resize_frames(tensor, config).numpy().astype(np.int32) - reference).mean()
    without = np.abs(
        resize_frames(tensor, config, antialias=False).numpy().astype(np.int32) - reference
    ).mean()
    assert with_aa < 0.35 and without > 1.0 and without > 5 * with_aa


def test_bicubic_kernels_of_torch() -> None:
    """The kernel facts the docstrings rely on, read off an impulse upsampled 4x."""
    impulse = torch.zeros(1, 1, 1, 16)
    impulse[..., 8] = 1.0

    def cubic(x: float, a: float) -> float:  # Keys' cubic convolution kernel, |x| <= 1
        return (a + 2) * x**3 - (a + 3) * x**2 + 1

    for antialias, a in ((True, -0.5), (False, -0.75)):
        up = torch.nn.functional.interpolate(
            impulse, size=(1, 64), mode="bicubic", antialias=antialias, align_corners=False
        )
        # Output pixel 33 sits 0.125 input pixels right of the impulse's centre.
        assert math.isclose(up[0, 0, 0, 33].item(), cubic(0.125, a), abs_tol=1e-4)


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_resize_frames_on_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        if os.environ.get("SAGE_FAST_FAIL_WITHOUT_CUDA") == "1":
            pytest.fail("CUDA is required (SAGE_FAST_FAIL_WITHOUT_CUDA=1) but not available")
        pytest.skip("needs a CUDA GPU")
    frames = torch.from_numpy(np.stack([natural_frame(720, 1280, s) for s in range(4)]))
    cpu = resize_frames(frames)
    gpu = resize_frames(frames.cuda().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8 and gpu.is_contiguous()
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
