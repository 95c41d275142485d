"""Engines: the OpenAI-compatible client's retries against a failing local server; transformers batching."""

from __future__ import annotations

import asyncio

import pytest

from sage_fast.models.base import SamplingConfig
from sage_fast.rollout.engines import (
    EngineError,
    GenerationRequest,
    OpenAIEngine,
    RetryPolicy,
    TransformersEngine,
)

REQUEST = GenerationRequest(messages=[{"role": "user", "content": "hello"}], sampling=SamplingConfig(max_tokens=8))


def test_openai_engine_retries_5xx_and_dropped_connections(faulty_openai) -> None:  # noqa: ANN001
    faulty_openai.faults = ["500", "drop", "503"]
    engine = OpenAIEngine(faulty_openai.url, "stub-model", retry=RetryPolicy(attempts=4, base_delay_s=0.01, seed=0))

    async def main():  # noqa: ANN202
        try:
            return await engine.generate(REQUEST)
        finally:
            await engine.aclose()

    generation = asyncio.run(main())
    assert generation.text == faulty_openai.reply and generation.tokens_out == len(faulty_openai.reply.split())
    assert engine.attempts == 4 and engine.retries == 3
    assert len(faulty_openai.requests) == 4
    assert faulty_openai.requests[-1]["max_tokens"] == 8


def test_openai_engine_gives_up_and_does_not_retry_client_errors(faulty_openai) -> None:  # noqa: ANN001
    async def run(faults: list[str]) -> OpenAIEngine:
        faulty_openai.faults = faults
        engine = OpenAIEngine(faulty_openai.url, "stub-model", retry=RetryPolicy(attempts=2, base_delay_s=0.01, seed=0))
        try:
            await engine.generate(REQUEST)
        finally:
            await engine.aclose()
        return engine

    with pytest.raises(EngineError, match="gave up after 2 attempts"):
        asyncio.run(run(["500", "500", "500"]))
    faulty_openai.requests.clear()
    with pytest.raises(EngineError, match="BadRequestError"):
        asyncio.run(run(["400"]))
    assert len(faulty_openai.requests) == 1  # a 400 is not retried


def test_openai_engine_keeps_many_requests_in_flight(faulty_openai) -> None:  # noqa: ANN001
    engine = OpenAIEngine(faulty_openai.url, "stub-model", retry=RetryPolicy(base_delay_s=0.01, seed=0))

    async def main():  # noqa: ANN202
        try:
            return await asyncio.gather(*(engine.generate(REQUEST) for _ in range(24)))
        finally:
            await engine.aclose()

    assert len(asyncio.run(main())) == 24 and len(faulty_openai.requests) == 24


def test_transformers_engine_batches_and_matches_unbatched_greedy(tiny_model_dir) -> None:  # noqa: ANN001
    engine = TransformersEngine(tiny_model_dir, max_batch=8)
    prompts = [f"question {i}: {'why ' * (i * 3)}?" for i in range(5)]  # different lengths: padding matters
    sampling = SamplingConfig(max_tokens=6, logprobs=True)
    requests = [GenerationRequest(messages=[{"role": "user", "content": p}], sampling=sampling) for p in prompts]

    async def main():  # noqa: ANN202
        try:
            return await asyncio.gather(*(engine.generate(r) for r in requests))
        finally:
            await engine.aclose()

    batched = asyncio.run(main())
    assert engine.batches == [5]  # one generate call for the five turns
    single = [engine.vlm.generate(r.messages, None, r.sampling) for r in requests]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens_in for g in batched] == [g.tokens_in for g in single]
    assert all(1 <= g.tokens_out <= 6 for g in batched)
    # GRPO's inputs: the same tokens and (up to padding's rounding) the same log-probabilities
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    for b, u in zip(batched, single, strict=True):
        assert b.logprobs is not None and len(b.logprobs) == len(b.token_ids)
        assert max(abs(x - y) for x, y in zip(b.logprobs, u.logprobs, strict=True)) < 1e-4


def test_openai_engine_returns_logprobs_when_asked(faulty_openai) -> None:  # noqa: ANN001
    engine = OpenAIEngine(faulty_openai.url, "stub-model", retry=RetryPolicy(base_delay_s=0.01, seed=0))
    faulty_openai.reply = "two words"
    asked = GenerationRequest(messages=[{"role": "user", "content": "q"}],
                              sampling=SamplingConfig(max_tokens=8, logprobs=True))

    async def main():  # noqa: ANN202
        try:
            return await engine.generate(asked), await engine.generate(REQUEST)
        finally:
            await engine.aclose()

    with_logprobs, without = asyncio.run(main())
    assert with_logprobs.logprobs == (-0.5, -1.0) and without.logprobs is None


def test_continuous_engine_matches_unbatched_greedy(tiny_model_dir) -> None:  # noqa: ANN001
    from sage_fast.rollout.engines import ContinuousTransformersEngine

    engine = ContinuousTransformersEngine(tiny_model_dir, sampling=SamplingConfig(max_tokens=6))
    prompts = [f"question {i}: {'why ' * (i * 3)}?" for i in range(5)]
    requests = [GenerationRequest(messages=[{"role": "user", "content": p}], sampling=SamplingConfig(max_tokens=6 - i % 2))
                for i, p in enumerate(prompts)]

    async def main():  # noqa: ANN202
        try:
            out = await asyncio.gather(*(engine.generate(r) for r in requests))
            with pytest.raises(ValueError, match="temperature"):
                await engine.generate(GenerationRequest(messages=requests[0].messages,
                                                        sampling=SamplingConfig(temperature=0.7)))
            return out
        finally:
            await engine.aclose()

    continuous = asyncio.run(main())
    single = [engine.vlm.generate(r.messages, None, r.sampling) for r in requests]
    assert [g.text for g in continuous] == [g.text for g in single]
    assert [(g.tokens_in, g.tokens_out) for g in continuous] == [(g.tokens_in, g.tokens_out) for g in single]


def test_continuous_engine_never_shares_the_model_with_generate(tiny_model_dir) -> None:  # noqa: ANN001
    """Stage-1 turns (generate) and paged text turns at once, then the model must be as it was:
    transformers' forward writes is_causal into the shared config for the length of a call, so two
    threads at once could leave the model attending bidirectionally for good."""
    import threading

    import torch

    from sage_fast.rollout.engines import ContinuousTransformersEngine
    from sage_fast.video.types import FrameBatch

    engine = ContinuousTransformersEngine(tiny_model_dir, sampling=SamplingConfig(max_tokens=8, temperature=0.7))
    model = engine.vlm.model
    probe = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=probe).logits
    frames = FrameBatch(data=torch.randint(0, 255, (4, 3, 56, 56), dtype=torch.uint8),
                        pts_seconds=torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64),
                        duration_seconds=torch.full((4,), 1.0, dtype=torch.float64), indices=torch.arange(4))
    framed = [{"role": "user", "content": [{"type": "frame", "pts": float(t)} for t in range(4)]
               + [{"type": "text", "text": f"what happens {i}?"}]} for i in range(3)]
    sampling = SamplingConfig(max_tokens=8, temperature=0.7)
    requests = [GenerationRequest(messages=[m], sampling=sampling, frames=frames) for m in framed]
    requests += [GenerationRequest(messages=[{"role": "user", "content": f"step {i} " * (i + 1)}], sampling=sampling)
                 for i in range(12)]
    overlaps: list[bool] = []
    original_generate = engine.vlm.generate

    def generate_while_paged_runs(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        overlaps.append(engine._paged_in_flight > 0)
        return original_generate(*args, **kwargs)

    engine.vlm.generate = generate_while_paged_runs

    async def main():  # noqa: ANN202
        try:
            return await asyncio.gather(*(engine.generate(r) for r in requests))
        finally:
            await engine.aclose()

    outputs = asyncio.run(main())
    assert len(outputs) == len(requests) and len(overlaps) == 3 and not any(overlaps)
    assert getattr(model.config.get_text_config(), "is_causal", None) is not False
    assert not engine.vlm.generate_lock.locked() and threading.active_count() >= 1
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=probe).logits, before)
