"""``sage_varlen`` inside tiny Qwen2.5-VL / Qwen3-VL models: packed rows give the padded batch's
loss and gradients, and the registration is what transformers' from_pretrained accepts.

The padded side runs transformers' own ``sdpa`` (independent of our code), so a segment leaking
into its neighbour, a wrong boundary or a wrong causal alignment shows up as a different loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from sage_fast.models import packed_attention as P  # noqa: E402  (registers "sage_varlen")
from sage_fast.models.tiny import build_tiny_model  # noqa: E402

LENGTHS = [7, 19, 1, 33]  # a 1-token sample, and lengths straddling the interpreter's 16-blocks


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / request.param, request.param)


def load(folder: Path, attn: str) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


def samples(vocab: int, lengths: list[int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    # Plain tokens only (ids below 200 are byte-level pieces, none of them a vision placeholder).
    return [torch.randint(10, 200, (n,), generator=gen) for n in lengths]


def loss_and_grads(model: torch.nn.Module, **inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def padded_inputs(seqs: list[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = s
        mask[row, :len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def packed_inputs(seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.cat(seqs).unsqueeze(0)
    labels = ids.clone()
    starts = P.cu_seqlens_from_lengths([len(s) for s in seqs])[:-1].long()
    labels[0, starts] = -100  # a sample's first token is not predicted from the previous sample
    text = P.position_ids_for_lengths([len(s) for s in seqs])  # (1, total)
    # Qwen-VL packed positions: (4, batch, total), row 0 the text positions (used to find segments),
    # rows 1-3 M-RoPE (equal to the text positions for text-only samples).
    return dict(input_ids=ids, labels=labels, position_ids=text.unsqueeze(0).expand(4, -1, -1))


def assert_same(loss_a: torch.Tensor, grads_a: dict, loss_b: torch.Tensor, grads_b: dict) -> None:
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_packed_row_matches_padded_batch(folder: Path, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """impl=kernel: the Triton kernel (interpreter here); reference: the per-segment SDPA fallback."""
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", impl)
    padded_model, packed_model = load(folder, "sdpa"), load(folder, P.ATTN_NAME)
    seqs = samples(padded_model.config.text_config.vocab_size, LENGTHS)
    pad_id = padded_model.config.text_config.pad_token_id
    want = loss_and_grads(padded_model, **padded_inputs(seqs, pad_id))
    got = loss_and_grads(packed_model, **packed_inputs(seqs))
    assert_same(*got, *want)


def test_padded_batch_through_sage_varlen(folder: Path) -> None:
    """A right-padded batch (2-D mask: unpad, attend, pad) gives sdpa's loss and gradients."""
    padded_model, ours = load(folder, "sdpa"), load(folder, P.ATTN_NAME)
    inputs = padded_inputs(samples(0, LENGTHS), padded_model.config.text_config.pad_token_id)
    assert_same(*loss_and_grads(ours, **inputs), *loss_and_grads(padded_model, **inputs))


def test_packed_kwargs_give_the_same_loss(folder: Path) -> None:
    """cu_seq_lens_q/k passed to forward (TRL's padding-free style) instead of derived per layer."""
    model = load(folder, P.ATTN_NAME)
    inputs = packed_inputs(samples(0, LENGTHS))
    from_positions = loss_and_grads(model, **inputs)
    from_kwargs = loss_and_grads(model, **inputs, **P.packed_kwargs(LENGTHS))
    assert_same(*from_kwargs, *from_positions)


def test_greedy_generation_matches_sdpa(folder: Path) -> None:
    """Decoding with a KV cache (bottom-right causal) and a left-padded batch: same tokens as sdpa."""
    sdpa, ours = load(folder, "sdpa"), load(folder, P.ATTN_NAME)
    seqs = samples(0, [5, 12])
    pad_id = sdpa.config.text_config.pad_token_id
    ids = torch.full((2, 12), pad_id)
    mask = torch.zeros((2, 12), dtype=torch.long)
    for row, s in enumerate(seqs):  # left padding, as for generation
        ids[row, 12 - len(s):] = s
        mask[row, 12 - len(s):] = 1
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=pad_id)
    assert torch.equal(ours.generate(**kwargs), sdpa.generate(**kwargs))


def image_sample(model: torch.nn.Module, text_before: int, text_after: int, seed: int) -> dict[str, torch.Tensor]:
    """One sample holding a 4x4-patch image (4 tokens after the 2x2 merge) between random text."""
    config = model.config
    vision = config.vision_config
    gen = torch.Generator().manual_seed(seed)
    grid = torch.tensor([[1, 4, 4]])
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    ids = torch.cat([torch.randint(10, 200, (text_before,), generator=gen),
                     torch.tensor([config.vision_start_token_id] + [config.image_token_id] * 4
                                  + [config.vision_end_token_id]),
                     torch.randint(10, 200, (text_after,), generator=gen)])
    types = (ids == config.image_token_id).int()
    return dict(input_ids=ids, pixel_values=torch.randn(16, patch_dim, generator=gen), image_grid_thw=grid,
                mm_token_type_ids=types)


def test_packed_row_with_images_matches_samples_one_by_one(folder: Path) -> None:
    """Image samples packed (``pack_samples``) beside a text sample: the vision tower (non-causal, per
    image) and the M-RoPE positions (each sample's own, concatenated) go through sage_varlen too.
    Reference: each sample alone through sdpa, losses weighted by their target counts."""
    sdpa, ours = load(folder, "sdpa"), load(folder, P.ATTN_NAME)
    text_only = samples(0, [9])[0]
    items = [image_sample(sdpa, 3, 12, seed=1), dict(input_ids=text_only), image_sample(sdpa, 20, 2, seed=2)]
    for item in items:
        labels = item["input_ids"].clone()
        labels[item["input_ids"] == sdpa.config.image_token_id] = -100  # image tokens are not predicted
        item["labels"] = labels
    targets = [int((item["labels"][1:] != -100).sum()) for item in items]

    # Reference: one sample at a time, grads of sum_i (n_i / N) * loss_i.
    sdpa.zero_grad(set_to_none=True)
    total_loss = torch.zeros(())
    for item, n in zip(items, targets, strict=True):
        batch = {k: (v.unsqueeze(0) if k in ("input_ids", "labels", "mm_token_type_ids") else v)
                 for k, v in item.items()}
        loss = sdpa(**batch).loss * (n / sum(targets))
        loss.backward()
        total_loss += loss.detach()
    want = (total_loss, {n: p.grad.clone() for n, p in sdpa.named_parameters() if p.grad is not None})

    # Packed by pack_samples: each sample's own M-RoPE positions, text positions restarting per sample.
    packed = P.pack_samples(ours, items)
    lengths = [len(item["input_ids"]) for item in items]
    assert packed["position_ids"].shape == (4, 1, sum(lengths))
    assert packed["labels"][0, P.cu_seqlens_from_lengths(lengths)[:-1].long()].eq(-100).all()
    assert_same(*loss_and_grads(ours, **packed), *want)
    # The same with the text's cu_seq_lens given as kwargs (the vision tower's chunks must not use them).
    assert_same(*loss_and_grads(ours, **packed, **P.packed_kwargs(lengths)), *want)


def test_segments_from_position_ids() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    cu, longest = P.cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 5, 6, 10] and cu.dtype == torch.int32 and longest == 4
    # Gaps (pruned tokens keep their positions) do not split; each row starts a segment.
    cu, longest = P.cu_seqlens_from_position_ids(torch.tensor([[0, 1, 5, 9, 0, 2], [0, 1, 2, 3, 4, 5]]))
    assert cu.tolist() == [0, 4, 6, 12] and longest == 6


def test_per_segment_sdpa_fallback_matches_the_reference() -> None:
    from sage_fast.kernels.reference import varlen_attention_reference

    gen = torch.Generator().manual_seed(0)
    lengths_q, lengths_k = [1, 17, 40, 3, 0, 5], [30, 33, 16, 3, 7, 0]
    q = torch.randn(sum(lengths_q), 4, 16, generator=gen)
    k = torch.randn(sum(lengths_k), 2, 16, generator=gen)
    v = torch.randn(sum(lengths_k), 2, 16, generator=gen)
    cu_q, cu_k = P.cu_seqlens_from_lengths(lengths_q), P.cu_seqlens_from_lengths(lengths_k)
    for causal in (True, False):
        torch.testing.assert_close(P.per_segment_sdpa(q, k, v, cu_q, cu_k, causal=causal),
                                   varlen_attention_reference(q, k, v, cu_q, cu_k, causal=causal))


def test_pack_samples_argument_checks(folder: Path) -> None:
    model = load(folder, "sdpa")
    a, b = samples(0, [4, 6])
    with pytest.raises(ValueError, match="labels for every sample or for none"):
        P.pack_samples(model, [dict(input_ids=a, labels=a), dict(input_ids=b)])
    with pytest.raises(ValueError, match=r"samples\[1\]\['input_ids'\] must be \(seqlen,\)"):
        P.pack_samples(model, [dict(input_ids=a), dict(input_ids=b.unsqueeze(0))])
    row = P.pack_samples(model, [dict(input_ids=a), dict(input_ids=b)])
    assert row["position_ids"][:, 0].tolist() == [list(range(4)) + list(range(6))] * 4 and "labels" not in row


class _Layer(torch.nn.Module):
    is_causal = True


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_shared_prefix_attention_is_each_sample_alone(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row [P1 r1 r2 r3][S][P2 r4 r5] through sage_varlen with shared_prefix_kwargs: every
    response's output and the gradients of q, k, v (the prefix's summed over its responses) are
    those of each sample packed whole, [P1 r1][P1 r2][P1 r3][S][P2 r4][P2 r5], by the written-out
    reference. Lengths straddle the interpreter's 16-token blocks."""
    from sage_fast.kernels.reference import varlen_attention_reference

    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", impl)
    blocks = [(21, [5, 1, 17]), (9, []), (16, [3, 33])]
    total = sum(p + sum(r) for p, r in blocks)
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, heads, total, 16, generator=gen, dtype=torch.float64).float()
               for heads in (4, 2, 2))
    weight = torch.randn(1, total, 4, 16, generator=gen)
    # The unshared layout: each sample whole, as row positions of the shared row (``gather``); and
    # for each shared position the unshared row that must give its output (``pick``: a prefix
    # token's from its family's first sample, which also carries the prefix's whole gradient).
    samples, pick, start = [], [0] * total, 0
    for prefix, responses in blocks:
        own = list(range(start, start + prefix))
        first = sum(len(s) for s in samples)
        for t in range(prefix):
            pick[start + t] = first + t
        position = start + prefix
        for n in responses or [0]:
            row0 = sum(len(s) for s in samples) + prefix
            samples.append(own + list(range(position, position + n)))
            for t in range(n):
                pick[position + t] = row0 + t
            position += n
        start = position
    gather = torch.tensor([i for sample in samples for i in sample])
    cu = P.cu_seqlens_from_lengths([len(sample) for sample in samples])

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = varlen_attention_reference(*(t[0].transpose(0, 1)[gather] for t in leaves), cu, cu, causal=True)[pick]
    (want * weight[0]).sum().backward()

    got_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    kwargs = P.shared_prefix_kwargs(blocks)
    assert kwargs[P.SHARED_KV_INDEX].shape == (sum(p * (len(r) + 1) + sum(r) for p, r in blocks if r) + 9,)
    got, _ = P.sage_varlen_attention_forward(_Layer(), *got_leaves, None, **kwargs)
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)
    (got[0] * weight[0]).sum().backward()
    for name, a, b in zip("qkv", got_leaves, leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=name)

    # a non-causal call (a vision tower gets the same forward keywords) ignores the gather
    plain, _ = P.sage_varlen_attention_forward(_Layer(), q, k, v, None, is_causal=False)
    ignored, _ = P.sage_varlen_attention_forward(_Layer(), q, k, v, None, is_causal=False,
                                                 shared_prefix_kv_index=kwargs[P.SHARED_KV_INDEX])
    assert torch.equal(plain, ignored)
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k"):
        P.sage_varlen_attention_forward(_Layer(), q, k, v, None, shared_prefix_kv_index=kwargs[P.SHARED_KV_INDEX])
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        P.shared_prefix_kwargs([(3, [2]), (0, [4])])
