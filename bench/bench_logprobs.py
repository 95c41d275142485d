"""Per-token log-probabilities of a packed RL row (the GRPO update's LM-head cost): time and peak memory.

SAGE's turn-samples are nearly all prompt: a Stage-1 sample is thousands of frame and text tokens
for a few hundred response tokens, and Stage-2 prompts are ~1 500 tokens for ~250. The workload
is one packed row like the trainer builds: one Stage-1-like sample (8 192 tokens, 300 trained) and
six Stage-2-like samples (1 500 tokens, 250 trained each): 17 192 tokens, 1 800 trained (on a GPU;
a CPU runs the same shape at a quarter of the length, see LENGTHS). The model
is a 2-layer Qwen2.5-VL text stack (hidden 256) with Qwen's real vocabulary (151 936), so the LM
head and the log-softmax dominate as they do at scale, random weights. Forward + backward of the
sum of the trained tokens' log-probabilities (temperature 0.7, as the rollouts sample).

Providers, all checked to give the same log-probabilities and gradient before timing:
- ``sage_fast``: :func:`sage_fast.rl.grpo.packed_token_logprobs`: the LM head only at the
  positions that predict a trained token, chunked float32 gather - logsumexp;
- ``trl_selective_log_softmax``: full logits for the row, then TRL's ``selective_log_softmax``
  (what TRL's GRPO trainer does), when TRL is installed;
- ``full_log_softmax``: full logits, ``log_softmax`` then ``gather`` (the plain way).

Peak memory is measured in a fresh process per provider (VmHWM), because peak RSS only grows.

    python -m pytest bench/bench_logprobs.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.rss_probe import peak_mb

# On a GPU the row of the docstring; on a CPU a quarter of it (the plain providers' full logits of
# the whole row, 17k x 152k float32 = 10 GB, and their gradient do not fit beside a 24 GB machine's other work).
if torch.cuda.is_available():
    LENGTHS, TRAINED = [8192] + [1500] * 6, [300] + [250] * 6
else:
    LENGTHS, TRAINED = [2048] + [375] * 6, [75] + [62] * 6
VOCAB, HIDDEN, LAYERS = 151_936, 256, 2
TEMPERATURE = 0.7
PROVIDERS = ("sage_fast", "trl_selective_log_softmax", "full_log_softmax")


def build(seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model and the packed row (same seed, same weights and tokens in every process)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sage_fast.models import packed_attention

    torch.manual_seed(seed)
    # head_dim 64: the M-RoPE sections must sum to head_dim / 2
    text = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]})
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                              image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3)
    config._attn_implementation = packed_attention.ATTN_NAME
    model = Qwen2_5_VLForConditionalGeneration(config).float().train()
    ids, labels = [], []
    for n, trained in zip(LENGTHS, TRAINED, strict=True):
        sample = torch.randint(0, VOCAB - 1000, (n,))
        label = sample.clone()
        label[: n - trained] = -100
        ids.append(sample)
        labels.append(label)
    samples = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    row = packed_attention.pack_samples(model, samples)
    row.update(packed_attention.packed_kwargs(LENGTHS))
    return model, row


def run(provider: str, model: torch.nn.Module, row: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward + backward; returns the trained tokens' log-probabilities (detached)."""
    from sage_fast.rl.grpo import packed_token_logprobs

    model.zero_grad(set_to_none=True)
    if provider == "sage_fast":
        logprobs, mask = packed_token_logprobs(model, row, temperature=TEMPERATURE)
        chosen = logprobs[mask]
    else:
        inputs = {k: v for k, v in row.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits[0, :-1] / TEMPERATURE
        targets = row["labels"][0, 1:]
        keep = targets != -100
        if provider == "trl_selective_log_softmax":
            from trl.trainer.utils import selective_log_softmax

            per_token = selective_log_softmax(logits, targets.clamp(min=0))
        else:
            per_token = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[:, None])[:, 0]
        chosen = per_token[keep]
    chosen.sum().backward()
    return chosen.detach()


def available(provider: str) -> bool:
    if provider != "trl_selective_log_softmax":
        return True
    try:
        import trl.trainer.utils  # noqa: F401
    except ImportError:
        return False
    return True


def probe(provider: str) -> dict[str, float]:
    """Peak memory of one forward + backward, in this (fresh) process."""
    os.environ.setdefault("SAGE_FAST_FORCE_IMPL", "reference" if not torch.cuda.is_available() else "kernel")
    model, row = build()
    base = peak_mb()
    started = time.perf_counter()
    run(provider, model, row)
    return {"provider": provider, "baseline_mb": base, "peak_mb": peak_mb(), "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    if not torch.cuda.is_available():  # the per-segment attention path; the Triton kernel is benchmarked apart
        os.environ["SAGE_FAST_FORCE_IMPL"] = "reference"
    model, row = build()
    want = run("full_log_softmax", model, row)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return model, row, want, grads


@pytest.mark.parametrize("provider", PROVIDERS)
def test_packed_logprobs(benchmark, case, provider: str) -> None:  # noqa: ANN001
    if not available(provider):
        pytest.skip("trl is not installed (pip install trl)")
    model, row, want, grads = case
    got = run(provider, model, row)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-3, msg=name)
    benchmark.group = f"GRPO log-probs: packed row {sum(LENGTHS)} tokens ({sum(TRAINED)} trained), vocab {VOCAB}"
    benchmark.pedantic(run, args=(provider, model, row), rounds=3, iterations=1, warmup_rounds=0)
    result = subprocess.run([sys.executable, "-m", "bench.bench_logprobs", provider], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    benchmark.extra_info.update(peak_above_baseline_mb=round(memory["peak_mb"] - memory["baseline_mb"], 1),
                                peak_mb=round(memory["peak_mb"], 1))
    print(f"\n{provider}: peak {memory['peak_mb']:.0f} MB, {memory['peak_mb'] - memory['baseline_mb']:.0f} MB above "
          "the model and row")


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
