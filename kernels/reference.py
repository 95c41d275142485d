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
    if x.dim() != 3 or x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"x must be (frames, tokens_per_frame, hidden) merged vision embeddings, got shape "
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
