"""Frame-token pruning in Triton: drop visual tokens that repeat the same position one frame earlier.

Stage-1 feeds 128 frames of 128-192 merged visual tokens each, and consecutive frames repeat most
patches. Each token of frame f >= 1 is scored by the cosine similarity of its merged vision
embedding with the token at the same spatial position in frame f-1; redundant ones are dropped by
a threshold or a per-frame keep ratio, and frame 0 is kept whole. A "frame" is one temporal group
of the vision encoder (Qwen-VL merges two video frames per group), i.e. one row of ``x``.

Three kernels, following Liger-Kernel's layout (kernels, launcher, public function):
1. ``_scores_kernel``, grid (F-1, T-blocks): streams both frames' rows through D in blocks and
   accumulates dot and squared norms in fp32 (the bandwidth-bound part: it reads 2 x F*T*D).
2. ``_select_kernel``, grid (F, T-blocks): the keep decision. Threshold: ``score < threshold``.
   Keep ratio: a token's rank in its frame (lower score first, then lower index) is counted by
   comparing it with every score of the frame, so the selection is deterministic and equal to a
   stable sort's without any sort; it keeps the ``k`` lowest ranks.
3. ``_gather_kernel``, grid (T-blocks, D-blocks): copies each kept row to its slot (an inclusive
   prefix sum of the keep flags, one ``torch.cumsum`` over F*T int32) and writes its index.
The keep-ratio path never synchronises with the host (the output size is known in advance); the
threshold path reads the kept total once to size the output.

No autograd: the output is a selection (integer indices) plus a gather of the input rows, and the
decision is not differentiable; during training the gradient of the gathered rows is an ordinary
``index_select`` backward, which callers get by re-gathering with ``x[indices]`` when they need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sage_fast.kernels import _dispatch
from sage_fast.kernels.reference import _check_prune_args, token_prune_reference, tokens_kept_per_frame

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference runs instead (see _dispatch)
    triton = None


@dataclass
class TokenPruneOutput:
    """What survives pruning of one video of F frames x T tokens (K kept in all).

    indices: int32 (K,) ascending indices into the flat F*T tokens.
    counts: int32 (F,) tokens kept per frame (counts[0] == T).
    embeddings: (K, D) the kept rows, x's dtype and device.
    position_ids: (3, K) the kept tokens' original M-RoPE positions when position_ids were given.
    """

    indices: torch.Tensor
    counts: torch.Tensor
    embeddings: torch.Tensor
    position_ids: torch.Tensor | None = None


if triton is not None:

    @triton.jit
    def _scores_kernel(x_ptr, scores_ptr, T, D, stride_f, stride_t,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        f = tl.program_id(0) + 1  # frame 0 has no predecessor
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = t < T
        cur_row = x_ptr + f.to(tl.int64) * stride_f + t.to(tl.int64)[:, None] * stride_t
        prev_row = cur_row - stride_f
        dot = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        cur_sq = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        prev_sq = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            mask = t_ok[:, None] & (d < D)[None, :]
            a = tl.load(cur_row + d[None, :], mask=mask, other=0.0).to(tl.float32)
            b = tl.load(prev_row + d[None, :], mask=mask, other=0.0).to(tl.float32)
            dot += a * b
            cur_sq += a * a
            prev_sq += b * b
        # Same reduction for dot and norms: an exact repeat gives dot == |a|^2 == |b|^2 bit for bit,
        # and the correctly rounded sqrt/div make its score exactly 1.0 (as in the reference).
        dot_s = tl.sum(dot, axis=1)
        norm = tl.sqrt_rn(tl.sum(cur_sq, axis=1) * tl.sum(prev_sq, axis=1))
        score = tl.div_rn(dot_s, tl.maximum(norm, 1e-12))
        tl.store(scores_ptr + f * T + t, score, mask=t_ok)

    @triton.jit
    def _select_kernel(scores_ptr, keep_ptr, T, threshold, k,
                       BY_RATIO: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_U: tl.constexpr):
        f = tl.program_id(0)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = t < T
        s = tl.load(scores_ptr + f * T + t, mask=t_ok, other=0.0)
        if BY_RATIO:
            rank = tl.zeros((BLOCK_T,), dtype=tl.int32)
            for u0 in range(0, T, BLOCK_U):
                u = u0 + tl.arange(0, BLOCK_U)
                u_ok = u < T
                su = tl.load(scores_ptr + f * T + u, mask=u_ok, other=0.0)
                before = (su[None, :] < s[:, None]) | ((su[None, :] == s[:, None]) & (u[None, :] < t[:, None]))
                rank += tl.sum((before & u_ok[None, :]).to(tl.int32), axis=1)
            keep = rank < k
        else:
            keep = s < threshold
        keep = t_ok & (keep | (f == 0))  # frame 0 is kept whole
        tl.store(keep_ptr + f * T + t, keep.to(tl.int32), mask=t_ok)

    @triton.jit
    def _gather_kernel(x_ptr, keep_ptr, slot_ptr, out_ptr, idx_ptr, N, D, stride_n, stride_out,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        keep = (tl.load(keep_ptr + n, mask=n_ok, other=0) != 0) & n_ok
        slot = tl.load(slot_ptr + n, mask=n_ok, other=1) - 1  # inclusive prefix sum -> slot
        if tl.program_id(1) == 0:
            tl.store(idx_ptr + slot, n, mask=keep)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = keep[:, None] & (d < D)[None, :]
        rows = tl.load(x_ptr + n.to(tl.int64)[:, None] * stride_n + d[None, :], mask=mask)
        tl.store(out_ptr + slot.to(tl.int64)[:, None] * stride_out + d[None, :], rows, mask=mask)


def _token_prune_triton(
    x: torch.Tensor, threshold: float | None, keep_ratio: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher: scores, keep flags, slots, gather. x is (F, T, D) with unit stride along D."""
    frames, tokens, hidden = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    scores = torch.full((frames, tokens), float("-inf"), dtype=torch.float32, device=x.device)
    # 16 x 128 tiles: 128-bit loads and 80 registers on sm_90 (16 x 256 needs 164 and halves occupancy
    # of this bandwidth-bound loop); checked by compiling for sm_90, not yet timed on a GPU.
    block_t, block_d = 16, min(128, triton.next_power_of_2(hidden))
    if frames > 1:
        _scores_kernel[(frames - 1, triton.cdiv(tokens, block_t))](
            x, scores, tokens, hidden, x.stride(0), x.stride(1), BLOCK_T=block_t, BLOCK_D=block_d)
    keep = torch.empty((frames, tokens), dtype=torch.int32, device=x.device)
    by_ratio = keep_ratio is not None
    k = tokens_kept_per_frame(keep_ratio, tokens) if by_ratio else 0
    sel_t = min(64, triton.next_power_of_2(tokens))
    _select_kernel[(frames, triton.cdiv(tokens, sel_t))](
        scores, keep, tokens, float(threshold) if threshold is not None else 0.0, k,
        BY_RATIO=by_ratio, BLOCK_T=sel_t, BLOCK_U=32)
    flat_keep = keep.view(-1)
    slots = torch.cumsum(flat_keep, 0, dtype=torch.int32)
    counts = keep.sum(1, dtype=torch.int32)
    # Keep ratio: the total is known without reading the device; threshold: one read.
    total = tokens + (frames - 1) * k if by_ratio else int(slots[-1])
    indices = torch.empty(total, dtype=torch.int32, device=x.device)
    out = torch.empty((total, hidden), dtype=x.dtype, device=x.device)
    if total:
        flat = x.reshape(frames * tokens, hidden)  # a view when rows are evenly spaced, else a copy
        block_n, copy_d = 16, min(256, triton.next_power_of_2(hidden))
        _gather_kernel[(triton.cdiv(frames * tokens, block_n), triton.cdiv(hidden, copy_d))](
            flat, flat_keep, slots, out, indices, frames * tokens, hidden, flat.stride(0), out.stride(0),
            BLOCK_N=block_n, BLOCK_D=copy_d)
    return indices, counts, out


def token_prune(
    x: torch.Tensor,
    *,
    threshold: float | None = None,
    keep_ratio: float | None = None,
    position_ids: torch.Tensor | None = None,
) -> TokenPruneOutput:
    """Prunes the visual tokens of one video that repeat the previous frame; see the module doc.

    x: (F, T, D) float32/float16/bfloat16 merged vision embeddings, F temporal groups of T tokens
        (a Qwen-VL video's (N, D) features viewed as ``(grid_t, N // grid_t, D)``).
    threshold: drop a token of frame f >= 1 when its cosine with frame f-1's token at the same
        position is >= threshold (e.g. 0.95). Exactly one of threshold and keep_ratio.
    keep_ratio: each frame f >= 1 keeps its ``round(keep_ratio * T)`` most changed tokens (lowest
        cosine; equal scores prefer the lower index), in index order.
    position_ids: optional (3, F*T) M-RoPE positions of the video's tokens (temporal, height, width);
        the kept tokens' columns come back unchanged, so the model sees them at their old places.
    The Triton kernel runs when ``_dispatch.use_kernel(x)`` says so, else the PyTorch reference
    (same indices; see tests/kernels/test_token_prune.py).
    """
    _check_prune_args(x, threshold, keep_ratio)
    frames, tokens, _ = x.shape
    if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape != (3, frames * tokens)):
        raise ValueError(f"position_ids must be (3, F*T) = (3, {frames * tokens}) M-RoPE positions of x's tokens, "
                         f"got {tuple(position_ids.shape)}; take get_rope_index's columns of the video's tokens")
    if _dispatch.use_kernel(x):
        indices, counts, embeddings = _token_prune_triton(x, threshold, keep_ratio)
    else:
        indices, counts, embeddings = token_prune_reference(x, threshold=threshold, keep_ratio=keep_ratio)
    kept_positions = None
    if position_ids is not None:
        kept_positions = position_ids.index_select(1, indices.to(device=position_ids.device, dtype=torch.long))
    return TokenPruneOutput(indices=indices, counts=counts, embeddings=embeddings, position_ids=kept_positions)
