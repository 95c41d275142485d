"""Shared-prefix packing against the unshared packed row (itself tested against per-sample SDPA):
the same log-probabilities and GRPO-loss gradients on tiny Qwen2.5-VL / Qwen3-VL with video
prompts, a shorter row, exact family detection, budget planning."""

from __future__ import annotations

import warnings

import pytest
import torch

from sage_fast.agent.samples import TurnSample, tokenize_sample
from sage_fast.models import packed_attention as P
from sage_fast.models.tiny import build_tiny_model
from sage_fast.models.transformers_backend import TransformersVLM
from sage_fast.rl.grpo import GRPOLossConfig, grpo_loss, packed_token_logprobs
from sage_fast.rl.shared_prefix import (
    Family,
    find_families,
    lone_families,
    pack_families,
    plan_micro_batches,
    prompt_length,
    split_family,
)
from sage_fast.video.types import FrameBatch


@pytest.fixture(autouse=True)
def per_segment_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-segment SDPA path (fast on CPU); the kernel's gathered-key path is in tests/models."""
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def vlm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransformersVLM:
    folder = build_tiny_model(tmp_path_factory.mktemp("shared") / request.param, request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = TransformersVLM(folder, dtype=torch.float32)
    policy.model.set_attn_implementation(P.ATTN_NAME)
    return policy


def frames(vlm: TransformersVLM, seed: int, count: int = 4) -> FrameBatch:
    side = 2 * vlm.spec.factor
    gen = torch.Generator().manual_seed(seed)
    return FrameBatch(torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=gen),
                      torch.arange(count, dtype=torch.float64) * 0.5, torch.full((count,), 0.5, dtype=torch.float64),
                      torch.arange(count))


def stage1(vlm: TransformersVLM, question: str, response: str, video: FrameBatch) -> dict[str, torch.Tensor]:
    """A Stage-1-like turn-sample through the trainer's own tokenization: frames, question, response."""
    content = [{"type": "frame", "pts": float(t)} for t in video.pts_seconds] + [{"type": "text", "text": question}]
    messages = [{"role": "system", "content": "You answer questions about videos."}, {"role": "user", "content": content}]
    turn = TurnSample("stage1", 0, messages, response, tuple(float(t) for t in video.pts_seconds))
    return tokenize_sample(vlm, turn, video)


def stage2(vlm: TransformersVLM, prompt: str, response: str) -> dict[str, torch.Tensor]:
    turn = TurnSample("stage2", 1, [{"role": "user", "content": prompt}], response, ())
    return tokenize_sample(vlm, turn, None)


def per_sample(values: torch.Tensor, mask: torch.Tensor, order: list[int], spans: list[int]) -> dict[int, torch.Tensor]:
    """The trained tokens' values of each sample, from a row laid out as ``order`` / ``spans``."""
    out, start = {}, 0
    for i, n in zip(order, spans, strict=True):
        out[i] = values[start:start + n][mask[start:start + n]]
        start += n
    return out


def spread(per: dict[int, torch.Tensor], mask: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Per-sample trained-token values put back on a row (0 elsewhere): the inverse of ``per_sample``."""
    return torch.zeros(mask.shape).masked_scatter(mask, torch.cat([per[i] for i in order]))


def test_shared_row_gives_the_unshared_logprobs_and_gradients(vlm: TransformersVLM) -> None:
    model = vlm.model.train()
    video, other = frames(vlm, 1), frames(vlm, 2)
    question = "What is cooked in the kitchen?"
    responses = ["a soup", "the football match at night", "0123", "a kitchen show with seconds 42"]
    family = [stage1(vlm, question, r, video) for r in responses]
    samples = [family[0], stage2(vlm, "The previous call found nothing.", "<json></json>"), family[1],
               stage1(vlm, question, "a street", other), family[2], family[3]]
    prefix = prompt_length(samples[0])
    assert prefix > int((samples[0]["mm_token_type_ids"] != 0).sum()) > 0  # a video prompt, then the response

    families = find_families(samples)
    assert [f.indices for f in families] == [(0, 2, 4, 5), (1,), (3,)] and families[0].prefix == prefix
    unshared = P.pack_samples(model, samples)
    unshared.update(P.packed_kwargs([len(s["input_ids"]) for s in samples]))
    shared = pack_families(model, samples, families)
    assert shared.row["input_ids"].shape[1] == unshared["input_ids"].shape[1] - 3 * prefix
    assert shared.saved == 3 * prefix and shared.order == [0, 2, 4, 5, 1, 3]
    pixels = samples[0]["pixel_values_videos"].shape[0]  # the family's video goes through the vision tower once
    assert shared.row["pixel_values_videos"].shape[0] == unshared["pixel_values_videos"].shape[0] - 3 * pixels

    head_rows: list[int] = []  # one LM-head row per trained token, as in the unshared row
    hook = model.lm_head.register_forward_hook(lambda _m, args, _o: head_rows.append(
        args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        want, want_mask = packed_token_logprobs(model, unshared, temperature=0.7)
        got, got_mask = packed_token_logprobs(model, shared.row, temperature=0.7)
    finally:
        hook.remove()
    assert head_rows[0] == head_rows[1] == int(want_mask.sum()) == int(got_mask.sum())
    lengths = [len(s["input_ids"]) for s in samples]
    want_per = per_sample(want, want_mask, list(range(len(samples))), lengths)
    got_per = per_sample(got, got_mask, shared.order, shared.spans)
    for i in range(len(samples)):
        assert got_per[i].numel() == len(samples[i]["input_ids"]) - prompt_length(samples[i])
        torch.testing.assert_close(got_per[i], want_per[i], atol=1e-5, rtol=1e-5, msg=f"sample {i}")

    # The whole GRPO loss (off-policy ratios, some clipped, KL on, per-sample means): same gradient.
    gen = torch.Generator().manual_seed(3)
    old = {i: v.detach() + 0.3 * torch.randn(v.shape, generator=gen) for i, v in want_per.items()}
    ref = {i: v.detach() + 0.2 * torch.randn(v.shape, generator=gen) for i, v in want_per.items()}
    adv = {i: float(a) for i, a in enumerate(torch.randn(len(samples), generator=gen))}
    config = GRPOLossConfig(loss_agg="seq-mean-token-mean")
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for logprobs, mask, order, spans in ((want, want_mask, list(range(len(samples))), lengths),
                                         (got, got_mask, shared.order, shared.spans)):
        advantages = spread({i: torch.full((want_per[i].numel(),), adv[i]) for i in order}, mask, order)
        index = torch.arange(len(spans)).repeat_interleave(torch.tensor(spans))
        loss, stats = grpo_loss(logprobs, spread(old, mask, order), spread(ref, mask, order), advantages, mask,
                                config, sample_index=index)
        assert stats["clip_frac"] > 0
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    vision = 0
    for (name, _), a, b in zip(model.named_parameters(), *grads, strict=True):
        if a is None:
            assert b is None or not bool(b.any()), name
            continue
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)
        vision += "visual" in name and bool(a.any())
    assert vision > 5  # the video prompt's gradient reached the vision tower through the shared prefix


def test_prompts_one_token_or_one_pixel_apart_are_not_merged(vlm: TransformersVLM) -> None:
    video = frames(vlm, 5)
    question = "Which number is shown?"
    a, b = stage1(vlm, question, "seven", video), stage1(vlm, question, "nine and more", video)
    prefix = prompt_length(a)
    one_token = stage1(vlm, question, "seven", video)
    text_at = int((one_token["mm_token_type_ids"][:prefix] == 0).nonzero()[-3, 0])  # a text token of the prompt
    one_token["input_ids"] = one_token["input_ids"].clone()
    one_token["input_ids"][text_at] = (one_token["input_ids"][text_at] + 1) % 200
    one_pixel = stage1(vlm, question, "seven", video)
    one_pixel["pixel_values_videos"] = one_pixel["pixel_values_videos"].clone()
    one_pixel["pixel_values_videos"][7, 3] += 1e-3
    untrained = dict(stage1(vlm, question, "x", video))
    untrained["labels"] = torch.full_like(untrained["labels"], -100)  # no response: nothing to share before
    longer = stage1(vlm, question + " Answer briefly.", "seven", video)  # the same prompt plus more tokens
    samples = [a, one_token, b, one_pixel, untrained, longer, stage1(vlm, question, "eleven", video)]
    families = find_families(samples)
    assert [f.indices for f in families] == [(0, 2, 6), (1,), (3,), (4,), (5,)]
    assert [f.prefix for f in families] == [prefix, 0, 0, 0, 0]
    assert [f.indices for f in lone_families(samples)] == [(i,) for i in range(len(samples))]
    with pytest.raises(ValueError, match="no 'labels'"):
        find_families([{"input_ids": a["input_ids"]}])


def test_planning_counts_a_family_once_and_splits_what_does_not_fit() -> None:
    family = Family((0, 1, 2, 3), (1000, 1100, 1050, 1200), prefix=900)
    assert family.tokens == 900 + 100 + 200 + 150 + 300 and family.saved == 3 * 900
    lone = [Family((4,), (700,)), Family((5,), (300,))]
    rows = plan_micro_batches([family, *lone], 2000)
    assert sorted(len(r) for r in rows) == [1, 2]  # the family (1650) beside the 300, the 700 alone
    assert all(sum(b.tokens for b in r) <= 2000 for r in rows)
    assert sorted(i for r in rows for b in r for i in b.indices) == list(range(6))

    parts = split_family(family, 1400)  # 900 + 100 + 200 + 150 fits; + 300 would not
    assert [p.indices for p in parts] == [(0, 1, 2), (3,)] and [p.prefix for p in parts] == [900, 0]
    parts = split_family(family, 1300)  # 900 + 100 + 200; then 1050 + 300 is too much: two more parts
    assert [p.indices for p in parts] == [(0, 1), (2,), (3,)] and [p.tokens for p in parts] == [1200, 1050, 1200]
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        split_family(family, 1100)
    with pytest.raises(ValueError, match="shorter than every member"):
        Family((0, 1), (10, 10), prefix=10)


def test_a_shared_row_refuses_an_attention_that_would_ignore_the_gather(vlm: TransformersVLM) -> None:
    video = frames(vlm, 7)
    samples = [stage1(vlm, "Why?", r, video) for r in ("because", "it rained")]
    row = pack_families(vlm.model, samples, find_families(samples)).row
    vlm.model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(ValueError, match="set_attn_implementation"):
            packed_token_logprobs(vlm.model, row)
    finally:
        vlm.model.set_attn_implementation(P.ATTN_NAME)
    bad = dict(row, predictor_positions=row["predictor_positions"] + 1)  # a token "predicted" from itself
    with pytest.raises(ValueError, match="earlier position"):
        packed_token_logprobs(vlm.model, bad)
    with pytest.raises(ValueError, match="blocks is empty"):
        pack_families(vlm.model, samples, [])
