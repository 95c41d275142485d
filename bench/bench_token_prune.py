"""Frame-token pruning benchmark (issue 5 part 1): the Triton kernel against the PyTorch reference and
a vectorised PyTorch baseline, and how many tokens the rule drops on real scenes.

Case T  Timing at Stage-1 scale: 128 temporal groups x 192 merged tokens x hidden 3584 (Qwen2.5-VL-7B)
        and 4096, bfloat16 (the model's dtype), keep-ratio 0.5 and threshold 0.95. Providers: the
        loop reference (``token_prune_reference``, one frame at a time), the vectorised baseline
        (``token_prune_vectorized``, whole-tensor ops) and the kernel (``token_prune``). Every
        provider's indices, counts and kept rows are checked equal to the reference's BEFORE it is
        timed. The kernel case runs only on a CUDA GPU: under ``TRITON_INTERPRET=1`` it would time
        the Python interpreter of Triton, which says nothing about the kernel, so it is skipped.
Case S  Tokens dropped on the sample video's scenes (``make_sample_video``: static colour bars,
        moving fractals / automata), 32 frames per scene 0.15 s apart (16 temporal groups of 180
        tokens), scored on two kinds of embeddings, both stated in the results: the raw merged
        patches (the 4 x 1176 normalised pixels a merged token covers) and a tiny random-weight
        Qwen2.5-VL vision tower (64-wide merged output). Neither is a trained tower's embedding.

    python -m pytest bench/bench_token_prune.py --benchmark-only --benchmark-json prune.json
    python -m pytest bench/bench_token_prune.py --benchmark-only -k sample_video -s   # the fractions
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import pytest
import torch
from sage_fast.kernels import _dispatch, token_prune
from sage_fast.kernels.reference import token_prune_reference, token_prune_vectorized

FRAMES, TOKENS = 128, 192
HIDDEN = [3584, 4096]
MODES = {"keep_ratio=0.5": {"keep_ratio": 0.5}, "threshold=0.95": {"threshold": 0.95}}
THRESHOLDS = (0.9, 0.95, 0.99)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rounds(default: int) -> int:
    raw = os.environ.get("SAGE_BENCH_ROUNDS", "").strip()
    return int(raw) if raw else default


@cache
def embeddings(hidden: int) -> torch.Tensor:
    """Video-like merged embeddings: every token drifts from the previous group by a random amount
    and about 40 % repeat it exactly (static background), so both modes have work to do."""
    gen = torch.Generator().manual_seed(hidden)
    x = torch.empty(FRAMES, TOKENS, hidden, dtype=torch.bfloat16)
    x[0] = torch.randn(TOKENS, hidden, generator=gen)
    for f in range(1, FRAMES):
        mix = torch.rand(TOKENS, 1, generator=gen)
        x[f] = (mix * x[f - 1].float() + (1 - mix) * torch.randn(TOKENS, hidden, generator=gen)).to(x.dtype)
        static = torch.rand(TOKENS, generator=gen) < 0.4
        x[f, static] = x[f - 1, static]
    return x.to(DEVICE)


@cache
def expected(hidden: int, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return token_prune_reference(embeddings(hidden), **MODES[mode])


def kernel(x: torch.Tensor, **mode: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = token_prune.token_prune(x, **mode)
    return out.indices, out.counts, out.embeddings


PROVIDERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "reference (frame loop)": token_prune_reference,
    "vectorised torch": token_prune_vectorized,
    "triton kernel": kernel,
}


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("hidden", HIDDEN)
def test_prune_timing(benchmark, provider: str, mode: str, hidden: int) -> None:  # noqa: ANN001
    if provider == "triton kernel" and (DEVICE != "cuda" or _dispatch.interpreter_mode()):
        pytest.skip("the kernel is timed on a CUDA GPU only (Triton's CPU interpreter is not the kernel)")
    fn, x = PROVIDERS[provider], embeddings(hidden)
    indices, counts, kept = fn(x, **MODES[mode])  # checked equal before it is timed
    ref_indices, ref_counts, ref_kept = expected(hidden, mode)
    assert torch.equal(indices.cpu(), ref_indices.cpu()) and torch.equal(counts.cpu(), ref_counts.cpu())
    assert torch.equal(kept, ref_kept)

    def run() -> None:
        fn(x, **MODES[mode])
        sync()

    benchmark.group = f"prune {FRAMES}x{TOKENS}x{hidden} bf16 {mode}"
    benchmark.extra_info.update(provider=provider, device=DEVICE, kept=int(counts.sum()),
                                total=FRAMES * TOKENS, dtype="bfloat16")
    benchmark.pedantic(run, rounds=rounds(20 if DEVICE == "cuda" else 5), warmup_rounds=1)


# ---- case S: fraction of tokens dropped on the sample video -------------------------------------


@pytest.fixture(scope="module")
def sample_scenes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(scene title, raw merged patches (F, T, 4704), tiny-tower embeddings (F, T, 64)) per scene."""
    import warnings

    from sage_fast.models.qwen_inputs import QwenVisionSpec, patchify_frames
    from sage_fast.models.tiny import build_tiny_model
    from sage_fast.video import open_video
    from sage_fast.video.qwen_resize import QwenResizeConfig
    from sage_fast.video.synth import SampleVideoConfig, make_sample_video

    config = SampleVideoConfig(duration_s=25.0, speech=False)  # 5 scenes of 5 s
    path = make_sample_video(tmp_path_factory.mktemp("sample") / "sample.mp4", config=config, progress=False)
    spec = QwenVisionSpec.qwen2_5_vl()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", "qwen2_5_vl")
        from transformers import Qwen2_5_VLForConditionalGeneration

        tower = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    size = QwenResizeConfig.from_token_budget(128, 192).output_size(config.height, config.width)
    reader = open_video(path)
    scenes = []
    for scene in config.scenes():
        times = [scene.start_s + 0.1 + 0.15 * k for k in range(32)]
        frames = reader.frames_at(times, size=size)
        inputs = patchify_frames(frames.data, frames.pts_seconds, spec)
        groups = int(inputs.grid_thw[0, 0])
        raw = inputs.pixel_values.view(groups, inputs.tokens_per_group, -1)  # 4 patches per merged token
        with torch.no_grad():
            features = tower.model.get_video_features(inputs.pixel_values, inputs.grid_thw, return_dict=True)
        scenes.append((scene.title, raw, features.pooler_output[0].view(groups, inputs.tokens_per_group, -1)))
    reader.close()
    return scenes


def dropped_fractions(scenes: list[tuple[str, torch.Tensor, torch.Tensor]]) -> list[dict]:
    rows = []
    for title, raw, tower in scenes:
        for kind, x in (("raw merged patches", raw), ("tiny random vision tower", tower)):
            row = {"scene": title, "embeddings": kind, "groups": x.shape[0], "tokens_per_group": x.shape[1]}
            for threshold in THRESHOLDS:
                _, counts, _ = token_prune_reference(x, threshold=threshold)
                row[f"dropped@{threshold}"] = round(1 - int(counts.sum()) / x.shape[0] / x.shape[1], 4)
            rows.append(row)
    return rows


def test_prune_sample_video(benchmark, sample_scenes, say) -> None:  # noqa: ANN001
    rows = dropped_fractions(sample_scenes)
    # The rule itself must separate the scenes: the still test card drops more than any moving scene.
    static = [r for r in rows if "Colour bars" in r["scene"] and r["embeddings"] == "raw merged patches"][0]
    moving = [r for r in rows if "Colour bars" not in r["scene"] and r["embeddings"] == "raw merged patches"]
    assert all(static["dropped@0.99"] >= r["dropped@0.99"] for r in moving)
    header = "| scene | embeddings | " + " | ".join(f"dropped @ cos >= {t}" for t in THRESHOLDS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(THRESHOLDS)]
    lines += [f"| {r['scene']} | {r['embeddings']} | "
              + " | ".join(f"{100 * r[f'dropped@{t}']:.1f} %" for t in THRESHOLDS) + " |" for r in rows]
    say("\n" + "\n".join(lines))
    benchmark.extra_info.update(rows=rows)
    x = sample_scenes[0][1]
    benchmark.group = "prune sample video (reference, one scene, raw patches)"
    benchmark.pedantic(lambda: token_prune_reference(x, threshold=0.95), rounds=3)

