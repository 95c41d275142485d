"""Plain-PyTorch references of every sage_fast Triton kernel: the tests' oracle, the benchmarks'
baseline and the fallback when Triton cannot run.

Each function here is the simple, obviously-right version of its kernel, written for clarity, not
speed. Kernel files import nothing from each other; they import their reference from here.
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the sections below)

# ---- frame-token pruning (kernels/token_prune.py) ------------------------------------------------


def tokens_kept_per_frame(keep_ratio: float, tokens_per_frame: int) -> int:
    """Tokens a non-first frame keeps under ``keep_ratio``: ``round(keep_ratio * T)``, half up.

    One helper so the kernel, both references and the model integration agree to the token.
    """
    return min(tokens_per_frame, max(0, int(keep_ratio * tokens_per_frame + 0.5)))


def _check_prune_args(x: torch.Tensor, threshold: float | None, keep_ratio: float | None) -> None:
    if x.dim() != 3 or 0 in x.shape:
        raise ValueError(f"x must be non-empty (frames, tokens_per_frame, hidden) merged vision embeddings, got shape "
                         f"{tuple(x.shape)}; reshape the video's (N, hidden) embeddings with "
                         "x.view(grid_t, N // grid_t, hidden)")
    if not x.is_floating_point():
        raise ValueError(f"x must be float32/float16/bfloat16 embeddings, got {x.dtype}")
    if (threshold is None) == (keep_ratio is None):
        raise ValueError("give exactly one of threshold (drop when cosine >= threshold) and keep_ratio "
                         f"(keep that fraction of each frame), got threshold={threshold}, keep_ratio={keep_ratio}")
    if keep_ratio is not None and not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")


def token_prune_scores_reference(x: torch.Tensor) -> torch.Tensor:
    """fp32 (F, T) cosine similarity of each token with the same position one frame earlier.

    Frame 0 has no predecessor and scores ``-inf`` (always kept). Computed in fp32 as
    ``dot / max(sqrt(|a|^2 * |b|^2), 1e-12)``: the dot and both squared norms come from the same
    reduction, so an exact repeat scores exactly 1.0 in every implementation (ties then break by
    index the same way everywhere); a zero vector scores 0 (kept).
    """
    frames, tokens, _ = x.shape
    scores = torch.full((frames, tokens), float("-inf"), dtype=torch.float32, device=x.device)
    for f in range(1, frames):
        cur, prev = x[f].float(), x[f - 1].float()
        dot = (cur * prev).sum(-1)
        norms = torch.sqrt((cur * cur).sum(-1) * (prev * prev).sum(-1))
        scores[f] = dot / norms.clamp_min(1e-12)
    return scores


def token_prune_reference(
    x: torch.Tensor, *, threshold: float | None = None, keep_ratio: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame-token pruning, one frame at a time: (indices, counts, kept embeddings).

    x: (F, T, D) merged vision embeddings of one video, F temporal groups of T tokens.
    threshold: drop a token of frame f >= 1 when its cosine with the same position in frame f-1
        is >= threshold.
    keep_ratio: frame f >= 1 keeps its ``tokens_kept_per_frame(keep_ratio, T)`` lowest-scoring
        (most changed) tokens; equal scores prefer the lower token index.
    Frame 0 is always kept whole. Returns indices int32 (K,) into the flat F*T tokens, ascending;
    counts int32 (F,) kept per frame; embeddings (K, D) = x.view(F*T, D)[indices], x's dtype.
    """
    _check_prune_args(x, threshold, keep_ratio)
    frames, tokens, hidden = x.shape
    scores = token_prune_scores_reference(x)
    kept: list[torch.Tensor] = [torch.arange(tokens, device=x.device)]
    for f in range(1, frames):
        if threshold is not None:
            keep = scores[f] < threshold
        else:
            order = torch.sort(scores[f], stable=True).indices  # ties keep index order
            keep = torch.zeros(tokens, dtype=torch.bool, device=x.device)
            keep[order[:tokens_kept_per_frame(keep_ratio, tokens)]] = True
        kept.append(torch.nonzero(keep).flatten() + f * tokens)
    indices = torch.cat(kept).to(torch.int32)
    counts = torch.tensor([len(k) for k in kept], dtype=torch.int32, device=x.device)
    return indices, counts, x.reshape(frames * tokens, hidden)[indices.long()]


def token_prune_vectorized(
    x: torch.Tensor, *, threshold: float | None = None, keep_ratio: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same selection as :func:`token_prune_reference` in whole-tensor PyTorch ops (no frame
    loop): the strongest plain-PyTorch baseline the benchmark compares the kernel against."""
    _check_prune_args(x, threshold, keep_ratio)
    frames, tokens, hidden = x.shape
    xf = x.float()
    cur, prev = xf[1:], xf[:-1]
    dot = (cur * prev).sum(-1)
    norms = torch.sqrt((cur * cur).sum(-1) * (prev * prev).sum(-1))
    scores = dot / norms.clamp_min(1e-12)  # (F-1, T)
    if threshold is not None:
        keep_rest = scores < threshold
    else:
        order = torch.sort(scores, dim=1, stable=True).indices
        keep_rest = torch.zeros_like(scores, dtype=torch.bool)
        keep_rest.scatter_(1, order[:, :tokens_kept_per_frame(keep_ratio, tokens)], True)
    keep = torch.cat([torch.ones(1, tokens, dtype=torch.bool, device=x.device), keep_rest])
    indices = torch.nonzero(keep.flatten()).flatten().to(torch.int32)
    counts = keep.sum(1, dtype=torch.int32)
    return indices, counts, x.reshape(frames * tokens, hidden)[indices.long()]


# ---- packed varlen attention (kernels/packed_attention.py) ---------------------------------------


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                               causal: bool = True, softmax_scale: float | None = None) -> torch.Tensor:
    """Packed attention, one segment at a time, with the softmax written out (flash-attn's varlen API).

    q: (total_q, nheads, head_dim); k, v: (total_k, nheads_k, head_dim), nheads % nheads_k == 0 (GQA);
    cu_seqlens_q / cu_seqlens_k: int (batch + 1,), segment b is rows cu[b]:cu[b+1]. Returns
    (total_q, nheads, head_dim) in q's dtype, computed in q's dtype (so that the tests can measure
    what plain torch loses in fp16/bf16). Causal masks are bottom-right aligned like flash-attn's:
    query i of a segment sees key j when j <= i + seqlen_k - seqlen_q; a query that sees no key
    (seqlen_q > seqlen_k, or an empty key segment) outputs zeros.
    """
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    group = q.shape[1] // k.shape[1]
    pieces = []
    for b in range(cu_seqlens_q.numel() - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        if b == 0 and q0 > 0:  # rows before the first segment belong to none: zeros
            pieces.append(q.new_zeros((q0, *q.shape[1:])))
        qs = q[q0:q1].transpose(0, 1)                                    # (h, Lq, d)
        ks = k[k0:k1].transpose(0, 1).repeat_interleave(group, dim=0)    # (h, Lk, d)
        vs = v[k0:k1].transpose(0, 1).repeat_interleave(group, dim=0)
        scores = (qs @ ks.transpose(1, 2)) * scale                        # (h, Lq, Lk)
        i = torch.arange(q1 - q0, device=q.device)[:, None]
        j = torch.arange(k1 - k0, device=q.device)[None, :]
        allowed = (j <= i + (k1 - k0) - (q1 - q0)) if causal else (i >= 0) & (j >= 0)
        sees_a_key = allowed.any(dim=1, keepdim=True)                     # (Lq, 1)
        # Rows that see no key: softmax over a row of -inf is NaN (and so is its gradient), so those
        # rows keep their finite scores and are zeroed after the softmax instead.
        scores = scores.masked_fill(~(allowed | ~sees_a_key), float("-inf"))
        probs = torch.softmax(scores, dim=-1) * sees_a_key
        pieces.append((probs @ vs).transpose(0, 1))                       # (Lq, h, d)
    tail = q.shape[0] - int(cu_seqlens_q[-1])
    if tail > 0:  # rows after the last segment belong to none: zeros
        pieces.append(q.new_zeros((tail, *q.shape[1:])))
    return torch.cat(pieces, dim=0) if pieces else q.new_zeros(q.shape)


def varlen_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, causal: bool = True,
                          softmax_scale: float | None = None) -> torch.Tensor:
    """Per-segment SDPA: the kernel's fallback where Triton cannot run, and a benchmark baseline.

    One ``scaled_dot_product_attention`` call per segment (flash-attn shapes), so memory stays
    O(total) where SDPA's fused CPU/GPU kernels apply, unlike ``varlen_attention_reference``.

    q: (total_q, nheads, head_dim); k, v: (total_k, nheads_k, head_dim); cu_seqlens int32 (batch + 1,).
    Same conventions as the kernel: bottom-right causal alignment, zeros for queries that see no key
    (SDPA itself would return NaN for them) and for rows outside every segment.
    Returns (total_q, nheads, head_dim).
    """
    group = q.shape[1] // k.shape[1]
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    pieces = [q.new_zeros((bounds_q[0], *q.shape[1:]))] if bounds_q[0] > 0 else []
    for b in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[b], bounds_q[b + 1], bounds_k[b], bounds_k[b + 1]
        len_q, len_k = q1 - q0, k1 - k0
        # Queries that see no key: all of them without keys; under a causal mask the first
        # len_q - len_k (bottom-right alignment: query i sees keys j <= i + len_k - len_q).
        blind = len_q if len_k == 0 else max(len_q - len_k, 0) if causal else 0
        if blind:
            pieces.append(q.new_zeros((blind, *q.shape[1:])))
        rows = len_q - blind
        if rows == 0:
            continue
        qs = q[q0 + blind:q1].transpose(0, 1).unsqueeze(0)  # (1, nheads, rows, head_dim)
        ks = k[k0:k1].transpose(0, 1).unsqueeze(0)
        vs = v[k0:k1].transpose(0, 1).unsqueeze(0)
        if group > 1:  # enable_gqa exists from torch 2.5 on; repeating works everywhere
            ks, vs = ks.repeat_interleave(group, dim=1), vs.repeat_interleave(group, dim=1)
        mask = None
        if causal and rows != len_k:  # SDPA's is_causal is top-left aligned: give the mask
            i = torch.arange(rows, device=q.device)[:, None]
            mask = torch.arange(len_k, device=q.device)[None, :] <= i + (len_k - rows)
        out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=softmax_scale,
                                             is_causal=causal and rows == len_k)
        pieces.append(out.squeeze(0).transpose(0, 1))
    tail = q.shape[0] - bounds_q[-1]
    if tail > 0:
        pieces.append(q.new_zeros((tail, *q.shape[1:])))
    return torch.cat(pieces) if pieces else q.new_zeros(q.shape)
