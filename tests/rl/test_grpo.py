"""GRPO math against plain references: advantages, chunked log-probs, the clipped loss, KL, packing."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch

from sage_fast.rl.grpo import (
    GRPOLossConfig,
    group_advantages,
    grpo_loss,
    kl_penalty,
    packed_token_logprobs,
    sample_index_for_lengths,
    token_advantages,
    token_logprobs,
    turn_advantages,
)

OFF = GRPOLossConfig(kl_coef=0.0, kl_estimator="none")


# ---- advantages ----------------------------------------------------------------------------------

def reference_advantages(rewards: list[float], groups: list[int], eps: float, scale: bool) -> list[float]:
    out = []
    for r, g in zip(rewards, groups, strict=True):
        members = [x for x, h in zip(rewards, groups, strict=True) if h == g]
        if len(members) == 1:
            out.append(0.0)
            continue
        centred = r - statistics.mean(members)
        out.append(centred / (statistics.stdev(members) + eps) if scale else centred)
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_a_python_loop(scale: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = (torch.randn(23, generator=gen, dtype=torch.float64) * 2).tolist()
    groups = [7, 3, 7, 7, 3, 9, 3, 7, 5, 5, 5, 5, 3, 3, 7, 9, 9, 9, 1, 5, 7, 3, 9]  # not contiguous; group 1 alone
    got = group_advantages(torch.tensor(rewards), groups, GRPOLossConfig(scale_rewards=scale))
    want = reference_advantages(rewards, groups, 1e-6, scale)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    assert got[groups.index(1)] == 0


def test_group_advantages_edge_cases() -> None:
    equal = group_advantages(torch.tensor([0.5, 0.5, 0.5, -1.0, -1.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert torch.equal(equal, torch.zeros(5))
    assert torch.equal(group_advantages(torch.tensor([3.0, -2.0]), [0, 1]), torch.zeros(2))
    two = group_advantages(torch.tensor([1.0, 0.0]), [4, 4])  # unbiased std of {1, 0} is sqrt(1/2)
    torch.testing.assert_close(two, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1e-6))
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(torch.zeros(3), [0, 0])
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(3, 1), [0, 0, 0])


def test_turn_and_token_advantages_broadcast() -> None:
    per_turn = turn_advantages(torch.tensor([1.0, -2.0, 0.5]), [2, 0, 3])
    assert per_turn.tolist() == [1.0, 1.0, 0.5, 0.5, 0.5]
    mask = torch.tensor([False, True, True, False, True, False])
    per_token = token_advantages(torch.tensor([2.0, -1.0]), [3, 3], mask)
    assert per_token.tolist() == [0.0, 2.0, 2.0, 0.0, -1.0, 0.0]
    assert sample_index_for_lengths([2, 0, 3]).tolist() == [0, 0, 2, 2, 2]
    with pytest.raises(ValueError, match=r"mask must be \(total,\)"):
        token_advantages(torch.tensor([2.0, -1.0]), [3, 2], mask)
    with pytest.raises(ValueError, match="turns_per_episode"):
        turn_advantages(torch.tensor([1.0]), [1, 2])


# ---- log-probabilities ---------------------------------------------------------------------------

def reference_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits.double() / temperature, -1)[..., :-1, :]
    target = labels[..., 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    picked = torch.where(target == -100, torch.zeros_like(picked), picked)
    return torch.nn.functional.pad(picked, (1, 0))


@pytest.mark.parametrize("chunk_size, temperature", [(5, 1.0), (1024, 1.0), (7, 0.7)])
def test_token_logprobs_match_log_softmax(chunk_size: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 13, 1000, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, 1000, (2, 13), generator=gen)
    labels[0, :4] = -100
    labels[1, 7] = -100
    got, mask = token_logprobs(logits, labels, chunk_size=chunk_size, temperature=temperature)
    want = reference_logprobs(logits, labels, temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    want_mask = labels != -100
    want_mask[:, 0] = False
    assert torch.equal(mask, want_mask) and bool((got[~mask] == 0).all())
    weights = torch.randn(2, 13, generator=gen)
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weights.double()).sum(), logits)
    torch.testing.assert_close(grad, want_grad.float(), atol=1e-5, rtol=1e-5)


def test_token_logprobs_backward_passes_gradcheck_and_keeps_bf16() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([3, -100, 0, 10, 4, -100])
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, chunk_size=2, temperature=0.8)[0], (logits,))
    half = torch.randn(9, 50, generator=gen).bfloat16().requires_grad_()
    got, _ = token_logprobs(half, torch.randint(0, 50, (9,), generator=gen), chunk_size=4)
    got.sum().backward()
    assert got.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="labels must be"):
        token_logprobs(half, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="IGNORE_INDEX"):
        token_logprobs(half, torch.full((9,), -5))


# ---- the loss ------------------------------------------------------------------------------------

def random_batch(n: int = 40, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logprobs = (-torch.rand(n, generator=gen) * 4).requires_grad_()
    advantages = torch.randn(n, generator=gen)
    mask = torch.rand(n, generator=gen) > 0.3
    return logprobs, advantages, mask


def test_on_policy_loss_is_reinforce() -> None:
    logprobs, advantages, mask = random_batch()
    loss, stats = grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, OFF)
    n = int(mask.sum())
    torch.testing.assert_close(loss, -advantages[mask].mean())
    (grad,) = torch.autograd.grad(loss, logprobs)
    reinforce = torch.where(mask, -advantages / n, torch.zeros_like(advantages))  # grad of -mean(A * logp)
    torch.testing.assert_close(grad, reinforce)
    assert stats["tokens"] == n and stats["clip_frac"] == 0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["adv_mean"] == pytest.approx(float(advantages[mask].mean()), abs=1e-6)


@pytest.mark.parametrize("clip_low, clip_high", [(0.2, 0.2), (0.2, 0.28)])
def test_clipping_matches_the_ppo_formula(clip_low: float, clip_high: float) -> None:
    ratios = [0.5, 0.79, 0.85, 1.0, 1.15, 1.25, 1.35, 2.0]
    signs = [1.0, -1.0]
    old = torch.tensor([-1.5] * len(ratios) * 2)
    logprobs = (old + torch.tensor([math.log(r) for r in ratios] * 2)).requires_grad_()
    advantages = torch.tensor([s * 0.7 for s in signs for _ in ratios])
    mask = torch.ones(len(old), dtype=torch.bool)
    config = GRPOLossConfig(clip_low=clip_low, clip_high=clip_high, kl_coef=0.0)
    loss, stats = grpo_loss(logprobs, old, None, advantages, mask, config)
    n = len(old)
    want_loss, want_grad, clipped = 0.0, [], 0
    for lp, o, a in zip(logprobs.tolist(), old.tolist(), advantages.tolist(), strict=True):
        r = math.exp(lp - o)
        unclipped, bounded = -a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high)
        want_loss += max(unclipped, bounded) / n
        # the clipped branch is flat: no gradient once the ratio moved past the bound in A's favour
        outside = (a > 0 and r > 1 + clip_high) or (a < 0 and r < 1 - clip_low)
        want_grad.append(0.0 if outside else -a * r / n)
        clipped += bounded > unclipped
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad, torch.tensor(want_grad), atol=1e-7, rtol=1e-5)
    assert stats["clip_frac"] == pytest.approx(clipped / n) and clipped > 0


def test_kl_estimators() -> None:
    gen = torch.Generator().manual_seed(4)
    logprobs, ref = -torch.rand(30, generator=gen) * 1.5, -torch.rand(30, generator=gen) * 1.5  # k3 < 10
    k3 = kl_penalty(logprobs, ref, "low_var_kl")
    torch.testing.assert_close(k3, torch.exp(ref - logprobs) - (ref - logprobs) - 1)
    assert bool((k3 >= 0).all())
    assert torch.equal(kl_penalty(logprobs, logprobs, "low_var_kl"), torch.zeros(30))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), logprobs - ref)
    assert torch.equal(kl_penalty(logprobs, ref, "none"), torch.zeros(30))
    assert float(kl_penalty(torch.tensor([-30.0]), torch.tensor([-1.0]), "low_var_kl")) == 10.0  # verl's clamp
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logprobs, ref, "k2")


def test_loss_adds_the_kl_term() -> None:
    logprobs, advantages, mask = random_batch(seed=5)
    ref = logprobs.detach() - 0.3 * torch.rand(len(mask), generator=torch.Generator().manual_seed(6))
    loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, advantages, mask, GRPOLossConfig())
    kl = (torch.exp(ref - logprobs) - (ref - logprobs) - 1)[mask].mean()
    torch.testing.assert_close(loss, -advantages[mask].mean() + 0.005 * kl)
    assert stats["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)
    same, _ = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), advantages, mask, GRPOLossConfig())
    torch.testing.assert_close(same, -advantages[mask].mean())  # ref == current: KL 0
    with pytest.raises(ValueError, match="ref_logprobs is None"):
        grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, GRPOLossConfig())


def test_loss_aggregations_match_loops() -> None:
    logprobs, advantages, mask = random_batch(n=30, seed=7)
    old = logprobs.detach() + 0.1 * torch.randn(30, generator=torch.Generator().manual_seed(8))
    lengths = [4, 11, 3, 12]
    index = sample_index_for_lengths(lengths)
    mask[15:18] = False  # sample 2 has no trained token: left out of the sequence mean
    per_token = []
    for lp, o, a in zip(logprobs.tolist(), old.tolist(), advantages.tolist(), strict=True):
        r = math.exp(lp - o)
        per_token.append(max(-a * r, -a * min(max(r, 0.8), 1.2)))
    trained = [i for i in range(30) if mask[i]]
    token_mean = sum(per_token[i] for i in trained) / len(trained)
    seq_means = []
    for s in range(len(lengths)):
        mine = [per_token[i] for i in trained if index[i] == s]
        if mine:
            seq_means.append(sum(mine) / len(mine))
    got, _ = grpo_loss(logprobs, old, None, advantages, mask, OFF)
    assert float(got.detach()) == pytest.approx(token_mean, rel=1e-5)
    seq = GRPOLossConfig(kl_coef=0.0, loss_agg="seq-mean-token-mean")
    got, _ = grpo_loss(logprobs, old, None, advantages, mask, seq, sample_index=index)
    assert len(seq_means) == 3 and float(got.detach()) == pytest.approx(sum(seq_means) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="sample_index"):
        grpo_loss(logprobs, old, None, advantages, mask, seq)


def test_argument_and_config_checks_name_the_culprit() -> None:
    logprobs, advantages, mask = random_batch(n=8)
    with pytest.raises(ValueError, match="old_logprobs must be"):
        grpo_loss(logprobs, logprobs.detach()[:7], None, advantages, mask, OFF)
    with pytest.raises(ValueError, match="mask must be bool"):
        grpo_loss(logprobs, logprobs.detach(), None, advantages, mask.float(), OFF)
    for bad, field in [(dict(clip_low=1.0), "clip_low"), (dict(clip_high=-0.1), "clip_high"),
                       (dict(kl_coef=-1.0), "kl_coef"), (dict(kl_estimator="k9"), "kl_estimator"),
                       (dict(loss_agg="sum"), "loss_agg"), (dict(eps=0.0), "eps")]:
        with pytest.raises(ValueError, match=field):
            GRPOLossConfig(**bad)


# ---- packed rows on a tiny Qwen2.5-VL ------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from transformers import AutoModelForImageTextToText

    from sage_fast.models import packed_attention
    from sage_fast.models.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("grpo") / "tiny", "qwen2_5_vl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation=packed_attention.ATTN_NAME,
                                                             dtype=torch.float32)
        sdpa = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    return packed.eval(), sdpa.eval()


def text_samples(config: object, lengths: list[int], prompts: list[int]) -> list[dict[str, torch.Tensor]]:
    text = config.text_config  # type: ignore[attr-defined]
    banned = {config.image_token_id, config.video_token_id, config.vision_start_token_id,  # type: ignore[attr-defined]
              config.vision_end_token_id}  # type: ignore[attr-defined]
    allowed = torch.tensor([i for i in range(text.vocab_size) if i not in banned])
    gen = torch.Generator().manual_seed(9)
    samples = []
    for n, p in zip(lengths, prompts, strict=True):
        ids = allowed[torch.randint(0, len(allowed), (n,), generator=gen)]
        labels = ids.clone()
        labels[:p] = -100
        samples.append({"input_ids": ids, "labels": labels})
    return samples


def test_packed_logprobs_and_loss_gradient_match_samples_one_by_one(models, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from sage_fast.models.packed_attention import pack_samples

    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")  # the per-segment path: fast on CPU
    packed, sdpa = models
    lengths, prompts = [17, 9, 24], [6, 3, 10]
    samples = text_samples(packed.config, lengths, prompts)
    row = pack_samples(packed, samples)
    head_rows: list[int] = []  # the LM head must see only the positions that predict a trained token
    hook = packed.lm_head.register_forward_hook(lambda _m, args, _o: head_rows.append(args[0].reshape(
        -1, args[0].shape[-1]).shape[0]))
    try:
        logprobs, mask = packed_token_logprobs(packed, row)
    finally:
        hook.remove()
    assert head_rows == [sum(n - p for n, p in zip(lengths, prompts, strict=True))]
    assert logprobs.shape == mask.shape == (sum(lengths),)
    pieces, masks = [], []
    for sample in samples:
        logits = sdpa(input_ids=sample["input_ids"][None]).logits[0]
        lp, m = token_logprobs(logits, sample["labels"])
        pieces.append(lp)
        masks.append(m)
    torch.testing.assert_close(logprobs, torch.cat(pieces), atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, torch.cat(masks)) and int(mask.sum()) == sum(n - p for n, p in zip(lengths, prompts, strict=True))

    # the loss: off-policy ratios (some clipped) and the KL on, token-mean over the whole row
    gen = torch.Generator().manual_seed(10)
    old = logprobs.detach() + 0.3 * torch.randn(len(mask), generator=gen)
    ref = logprobs.detach() + 0.2 * torch.randn(len(mask), generator=gen)
    sample_adv = torch.tensor([1.0, -0.5, 0.25])
    advantages = token_advantages(sample_adv, lengths, mask)
    config = GRPOLossConfig()
    loss, stats = grpo_loss(logprobs, old, ref, advantages, mask, config)
    assert stats["clip_frac"] > 0
    packed_grads = torch.autograd.grad(loss, [p for p in packed.parameters() if p.requires_grad], allow_unused=True)

    total, start = int(mask.sum()), 0
    per_sample = None
    for sample, n in zip(samples, lengths, strict=True):
        logits = sdpa(input_ids=sample["input_ids"][None]).logits[0]
        lp, m = token_logprobs(logits, sample["labels"])
        piece = slice(start, start + n)
        part, _ = grpo_loss(lp, old[piece], ref[piece], advantages[piece], m, config)
        part = part * int(m.sum()) / total  # token-mean over the row = token-weighted sum of sample means
        per_sample = part if per_sample is None else per_sample + part
        start += n
    sdpa_grads = torch.autograd.grad(per_sample, [p for p in sdpa.parameters() if p.requires_grad], allow_unused=True)
    torch.testing.assert_close(loss, per_sample, atol=1e-6, rtol=1e-5)
    compared = 0
    for got, want in zip(packed_grads, sdpa_grads, strict=True):
        if want is None:  # the vision tower: text-only rows reach none of it
            assert got is None or not bool(got.any())
            continue
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        compared += 1
    assert compared > 10


def test_packed_row_checks() -> None:
    with pytest.raises(ValueError, match="labels"):
        packed_token_logprobs(torch.nn.Identity(), {"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="one packed row"):
        packed_token_logprobs(torch.nn.Identity(), {"input_ids": torch.zeros(2, 4, dtype=torch.long),
                                                    "labels": torch.zeros(2, 4, dtype=torch.long)})
