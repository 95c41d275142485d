"""One GRPO micro-batch, forward + backward, with and without shared-prefix packing.

SAGE's GRPO groups are 8 episodes of one question on one video, so the group's Stage-1
turn-samples repeat one prompt (system prompt, question, 128 frames: ~11 000 tokens, most of
them vision tokens) before 8 different ~250-token responses. ``unshared`` packs every sample whole
(:func:`sage_fast.models.packed_attention.pack_samples`, the update before shared prefixes);
``shared`` packs each group's Stage-1 samples as ``[prompt once][r1]...[r8]``
(:func:`sage_fast.rl.shared_prefix.pack_families`), the prompt's pixels through the vision tower
once. Both give the same log-probabilities and gradient (checked here before timing).

THIS IS A CPU, TINY-MODEL MEASUREMENT, scaled down from SAGE's shapes: a random-weight Qwen2.5-VL
built in code (text: hidden 256, 2 layers, 4 heads / 2 KV heads, vocab 4 096; vision: hidden 64,
depth 2, Qwen2.5-VL's real patching: 14 px patches, 2 x 2 merge, 2-frame temporal patches), fp32,
the per-segment SDPA attention path (the Triton kernel runs on CUDA only). The micro-batch: 2
groups x 8 Stage-1 samples, each a ~1 800-token prompt (32 frames of 280 x 280 px = 1 600 video
tokens, plus text) and a 100-300-token response, plus 6 Stage-2 samples (500-700-token text prompt,
150-250-token response). Sharing removes 14 prompts from the row and 14 videos from the vision
tower. How a real 8B model's ratio compares (per-token layers, attention and vision tower weigh
differently there) is not measured here.

Measured per mode: tokens in the row, wall time of forward + backward of the on-policy GRPO loss
(pytest-benchmark, 3 rounds), the time to find the families and pack the row, and peak memory
(VmHWM) of one forward + backward in a fresh process, since a process's peak only grows.

    python -m pytest bench/bench_grpo_update.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.rss_probe import peak_mb

MODES = ("shared", "unshared")
GROUPS, GROUP_SIZE = 2, 8
FRAMES, SIDE = 32, 280  # 16 temporal groups x (20 x 20 patches / 4) = 1 600 video tokens per Stage-1 prompt
STAGE2, VOCAB = 6, 4096


def build(seed: int = 0) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """The model and the micro-batch's turn-samples (same seed: same weights and samples in every process)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sage_fast.models import packed_attention

    torch.manual_seed(seed)
    text = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256,
                  fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=VOCAB - 1,
                              video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3, vision_end_token_id=VOCAB - 4)
    config._attn_implementation = packed_attention.ATTN_NAME
    model = Qwen2_5_VLForConditionalGeneration(config).float().train()
    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, VOCAB - 8, (n,), generator=gen)

    grid_t, grid = FRAMES // 2, SIDE // 14
    video_tokens = grid_t * grid * grid // 4
    samples = []
    for _ in range(GROUPS):
        pixels = torch.randn(grid_t * grid * grid, 3 * 2 * 14 * 14, generator=gen)
        system, question = tokens(120), tokens(60)
        prompt = torch.cat([system, torch.tensor([VOCAB - 3]), torch.full((video_tokens,), VOCAB - 2),
                            torch.tensor([VOCAB - 4]), question])
        for _ in range(GROUP_SIZE):
            response = tokens(int(torch.randint(100, 301, (1,), generator=gen)))
            ids = torch.cat([prompt, response])
            samples.append({"input_ids": ids, "labels": torch.cat([torch.full_like(prompt, -100), response]),
                            "mm_token_type_ids": (ids == VOCAB - 2).long() * 2,
                            # each sample its own copy, as the trainer's tokenization makes them
                            "pixel_values_videos": pixels.clone(), "video_grid_thw": torch.tensor([[grid_t, grid, grid]]),
                            "second_per_grid_ts": torch.tensor([1.0])})
    for _ in range(STAGE2):
        prompt = tokens(int(torch.randint(500, 701, (1,), generator=gen)))
        response = tokens(int(torch.randint(150, 251, (1,), generator=gen)))
        samples.append({"input_ids": torch.cat([prompt, response]),
                        "labels": torch.cat([torch.full_like(prompt, -100), response])})
    return model, samples


def pack(mode: str, model: torch.nn.Module, samples: list[dict[str, torch.Tensor]]) -> tuple[dict[str, Any], list[int],
                                                                                            list[int]]:
    """(row, sample order, per-sample spans), as the trainer's ``_micro_batch`` builds them."""
    from sage_fast.models import packed_attention
    from sage_fast.rl.shared_prefix import find_families, pack_families

    if mode == "shared":
        packed = pack_families(model, samples, find_families(samples))
        return packed.row, packed.order, packed.spans
    row = packed_attention.pack_samples(model, samples)
    lengths = [int(s["input_ids"].numel()) for s in samples]
    row.update(packed_attention.packed_kwargs(lengths))
    return row, list(range(len(samples))), lengths


def run(model: torch.nn.Module, row: dict[str, Any], order: list[int], spans: list[int]) -> torch.Tensor:
    """Forward + backward of the on-policy GRPO loss (advantages +-1 by sample); returns the trained
    tokens' log-probabilities in sample order."""
    from sage_fast.rl.grpo import GRPOLossConfig, grpo_loss, packed_token_logprobs, token_advantages

    model.zero_grad(set_to_none=True)
    logprobs, mask = packed_token_logprobs(model, row, temperature=0.7)
    advantages = token_advantages(torch.tensor([1.0 if i % 2 else -1.0 for i in order]), spans, mask)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, GRPOLossConfig(kl_coef=0.0))
    loss.backward()
    per_sample, start = {}, 0
    for i, n in zip(order, spans, strict=True):
        per_sample[i] = logprobs[start:start + n][mask[start:start + n]].detach()
        start += n
    return torch.cat([per_sample[i] for i in sorted(per_sample)])


def probe(mode: str) -> dict[str, float]:
    """Peak memory of packing plus one forward + backward, in this (fresh) process."""
    os.environ.setdefault("SAGE_FAST_FORCE_IMPL", "reference" if not torch.cuda.is_available() else "kernel")
    model, samples = build()
    base = peak_mb()
    started = time.perf_counter()
    row, order, spans = pack(mode, model, samples)
    del samples  # the trainer keeps its samples; here only the row's own memory is measured
    run(model, row, order, spans)
    return {"mode": mode, "baseline_mb": base, "peak_mb": peak_mb(), "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    if not torch.cuda.is_available():
        os.environ["SAGE_FAST_FORCE_IMPL"] = "reference"
    model, samples = build()
    out: dict[str, Any] = {"model": model, "samples": samples}
    for mode in MODES:
        started = time.perf_counter()
        row, order, spans = pack(mode, model, samples)
        out[mode] = {"row": row, "order": order, "spans": spans, "pack_s": time.perf_counter() - started}
    want = run(model, *(out["unshared"][k] for k in ("row", "order", "spans")))
    out["want"] = (want, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return out


@pytest.mark.parametrize("mode", MODES)
def test_grpo_micro_batch(benchmark, case, say, mode: str) -> None:  # noqa: ANN001
    model, data = case["model"], case[mode]
    want, grads = case["want"]
    got = run(model, data["row"], data["order"], data["spans"])  # the same numbers before any timing
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-3, msg=name)
    tokens = int(data["row"]["input_ids"].shape[1])
    benchmark.group = (f"GRPO micro-batch fwd+bwd, CPU tiny Qwen2.5-VL: {GROUPS} groups x {GROUP_SIZE} Stage-1 "
                       f"samples + {STAGE2} Stage-2")
    benchmark.pedantic(run, args=(model, data["row"], data["order"], data["spans"]), rounds=3, iterations=1,
                       warmup_rounds=0)
    result = subprocess.run([sys.executable, "-m", "bench.bench_grpo_update", mode], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    pixels = int(data["row"]["pixel_values_videos"].shape[0])
    benchmark.extra_info.update(row_tokens=tokens, pixel_rows=pixels, pack_s=round(data["pack_s"], 3),
                                peak_mb=round(memory["peak_mb"], 1),
                                peak_above_baseline_mb=round(memory["peak_mb"] - memory["baseline_mb"], 1))
    say(f"\n{mode}: {tokens} tokens in the row, {pixels} video patches, find + pack {data['pack_s']:.2f} s, "
        f"fwd+bwd min {benchmark.stats.stats.min:.2f} s / mean {benchmark.stats.stats.mean:.2f} s, peak "
        f"{memory['peak_mb']:.0f} MB ({memory['peak_mb'] - memory['baseline_mb']:.0f} MB above the model and samples)")


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
