"""Packed (varlen) attention in Triton: many segments of one packed row, forward and backward.

Why: RL and SFT train on turn-samples of very different lengths (a Stage-1 sample of thousands of
visual tokens beside Stage-2 samples of a few hundred). Padding them into a batch wastes most of
the attention work on padding; packing them into one row and attending per segment does not.

API and conventions are flash-attn's ``flash_attn_varlen_func``:
- q: (total_q, nheads, head_dim); k, v: (total_k, nheads_k, head_dim); nheads % nheads_k == 0 (GQA);
- cu_seqlens_q / cu_seqlens_k: int32 (batch + 1,), segment b owns rows cu[b]:cu[b+1];
- causal masks are aligned to the bottom-right corner of each segment's (seqlen_q, seqlen_k)
  score matrix: query i sees key j when j <= i + seqlen_k - seqlen_q. With seqlen_q == seqlen_k
  this is the usual causal mask; with one query (decoding) it sees every key. A query that sees no
  key (seqlen_q > seqlen_k) outputs zeros, as in flash-attn >= 2.1.

Kernels (Liger-Kernel layout: kernels, launcher, ``torch.autograd.Function``, public function):
- ``_fwd_kernel``: one program per (query block, segment, head); online softmax in base 2 over the
  key blocks the mask allows, stores the output and the log-sum-exp (log2 units, fp32) of each row;
- ``_bwd_delta_kernel``: rowsum(O * dO) per (token, head), the softmax backward's row term;
- ``_bwd_dkdv_kernel``: one program per (key block, segment, KV head); loops over the query heads of
  its GQA group and the query blocks that can see the key block, so dk/dv need no atomics;
- ``_bwd_dq_kernel``: one program per (query block, segment, head), recomputing the probabilities
  from the saved log-sum-exp (no (L, L) matrix is ever stored).
Blocks past a segment's end exit at once; the grid's first dimension is sized by max_seqlen. Key
blocks that every row of a query block sees entirely skip the mask (only diagonal and ragged-end
blocks pay for it).
"""

from __future__ import annotations

import math

import torch
from sage_fast.kernels._dispatch import interpreter_mode, use_kernel
from sage_fast.kernels.reference import varlen_attention_sdpa

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference runs instead (see _dispatch)
    triton = None

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128  # the tiles below are chosen (spill-free on sm_90a) up to 128; Qwen-VL's are 64-128


if triton is not None:

    @triton.jit
    def _mm(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """a @ b with an fp32 accumulator; UPCAST multiplies in fp32 (same products as the tensor
        cores' exact bf16 products), used because Triton's interpreter gets bf16 tl.dot wrong."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _rne(x, UPCAST: tl.constexpr):
        """x, rounded to the nearest bf16 (ties to even) when UPCAST: Triton's interpreter truncates
        fp32 -> bf16 casts, which would make the interpreter's bf16 error twice the GPU's."""
        if UPCAST:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        else:
            return x

    @triton.jit
    def _fwd_step(acc, m_i, l_i, q, Ks, Vs, start_n, offs_m, offs_n, offs_d, d_ok, seqlen_k,
                  shift, scale_log2, stride_kt, stride_vt, MASKED: tl.constexpr,
                  CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """One key block of the online softmax: returns the updated (acc, row max, row sum)."""
        cols = start_n + offs_n
        col_ok = cols < seqlen_k
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(Ks + cols[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(Vs + cols[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _mm(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
        if MASKED:
            ok = col_ok[None, :]
            if CAUSAL:
                ok = ok & (cols[None, :] <= offs_m[:, None] + shift)
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm(_rne(p, UPCAST).to(v.dtype), v, PRECISION, UPCAST)
        return acc, m_new, l_i

    @triton.jit
    def _fwd_kernel(Q, K, V, Out, LSE, CU_Q, CU_K, scale_log2,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                    stride_ot, stride_oh, stride_lh,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # Reversed block order: with causal masks the last query blocks have the most keys, so they
        # start first and the short ones fill in behind them.
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        seg = tl.program_id(1)
        head = tl.program_id(2)
        head_k = head // GROUP
        q_start = tl.load(CU_Q + seg)
        seqlen_q = tl.load(CU_Q + seg + 1) - q_start
        k_start = tl.load(CU_K + seg)
        seqlen_k = tl.load(CU_K + seg + 1) - k_start
        start_m = pid_m * BLOCK_M
        if start_m >= seqlen_q:
            return
        # Segment base pointers hold the only 64-bit arithmetic: tile offsets stay int32, since 2-D
        # tiles of 64-bit offsets cost registers the matmuls need (ptxas showed spills).
        Qs = Q + q_start.to(tl.int64) * stride_qt + head * stride_qh
        Ks = K + k_start.to(tl.int64) * stride_kt + head_k * stride_kh
        Vs = V + k_start.to(tl.int64) * stride_vt + head_k * stride_vh
        Ls = LSE + head.to(tl.int64) * stride_lh + q_start

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < seqlen_q
        d_ok = offs_d < HEAD_DIM
        q = tl.load(Qs + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                    other=0.0)
        shift = seqlen_k - seqlen_q  # bottom-right alignment: row i sees keys j <= i + shift
        if CAUSAL:  # the block's first row sees keys < start_m + shift + 1, its last < start_m + BLOCK_M + shift
            full_end = (tl.maximum(tl.minimum(seqlen_k, start_m + shift + 1), 0) // BLOCK_N) * BLOCK_N
            end_n = tl.maximum(tl.minimum(seqlen_k, start_m + BLOCK_M + shift), 0)
        else:
            full_end = (seqlen_k // BLOCK_N) * BLOCK_N
            end_n = seqlen_k

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # Key blocks every row of this block may fully see need no mask; the rest (the diagonal and
        # the segment's ragged end) do. Same results, fewer instructions in the long loop.
        for start_n in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, Ks, Vs, start_n, offs_m, offs_n, offs_d, d_ok, seqlen_k,
                                      shift, scale_log2, stride_kt, stride_vt, False, CAUSAL, PRECISION, UPCAST)
        for start_n in range(full_end, end_n, BLOCK_N):
            acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, Ks, Vs, start_n, offs_m, offs_n, offs_d, d_ok, seqlen_k,
                                      shift, scale_log2, stride_kt, stride_vt, True, CAUSAL, PRECISION, UPCAST)

        empty = l_i == 0.0  # rows that saw no key: output 0, lse +inf (so backward's p is 0)
        acc = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        Os = Out + q_start.to(tl.int64) * stride_ot + head * stride_oh
        tl.store(Os + offs_m[:, None] * stride_ot + offs_d[None, :],
                 _rne(acc, UPCAST).to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
        tl.store(Ls + offs_m, lse, mask=row_ok)

    @triton.jit
    def _bwd_delta_kernel(Out, DO, DELTA, total, stride_ot, stride_oh, stride_dot, stride_doh, stride_lh,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
        """delta[h, t] = sum_d O[t, h, d] * dO[t, h, d] in fp32: the softmax backward's row term
        (= sum_j P_tj dP_tj), read once from O and dO instead of recomputing P @ dP."""
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        head = tl.program_id(1)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (rows < total)[:, None] & (offs_d < HEAD_DIM)[None, :]
        rows64 = rows.to(tl.int64)
        o = tl.load(Out + rows64[:, None] * stride_ot + head * stride_oh + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(DO + rows64[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=mask, other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        tl.store(DELTA + head.to(tl.int64) * stride_lh + rows, delta, mask=rows < total)

    @triton.jit
    def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, scale_log2, scale,
                         stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                         stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                         stride_lh,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        pid_n = tl.program_id(0)
        seg = tl.program_id(1)
        head_k = tl.program_id(2)
        q_start = tl.load(CU_Q + seg)
        seqlen_q = tl.load(CU_Q + seg + 1) - q_start
        k_start = tl.load(CU_K + seg)
        seqlen_k = tl.load(CU_K + seg + 1) - k_start
        start_n = pid_n * BLOCK_N
        if start_n >= seqlen_k:
            return
        Ks = K + k_start.to(tl.int64) * stride_kt + head_k * stride_kh  # int32 tile offsets: see _fwd_kernel
        Vs = V + k_start.to(tl.int64) * stride_vt + head_k * stride_vh

        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        col_ok = offs_n < seqlen_k
        d_ok = offs_d < HEAD_DIM
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(Ks + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(Vs + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        shift = seqlen_k - seqlen_q
        if CAUSAL:  # noqa: SIM108 (the first query that sees key start_n is start_n - shift)
            lo = (tl.maximum(start_n - shift, 0) // BLOCK_M) * BLOCK_M
        else:
            lo = 0
        for g in range(GROUP):  # every query head that reads this KV head (GQA)
            head = head_k * GROUP + g
            Qs = Q + q_start.to(tl.int64) * stride_qt + head * stride_qh
            DOs = DO + q_start.to(tl.int64) * stride_dot + head * stride_doh
            Ls = LSE + head.to(tl.int64) * stride_lh + q_start
            Ds = DELTA + head.to(tl.int64) * stride_lh + q_start
            for start_m in range(lo, seqlen_q, BLOCK_M):
                offs_m = start_m + offs_m0
                row_ok = offs_m < seqlen_q
                q_mask = row_ok[:, None] & d_ok[None, :]
                q = tl.load(Qs + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
                do = tl.load(DOs + offs_m[:, None] * stride_dot + offs_d[None, :], mask=q_mask, other=0.0)
                lse = tl.load(Ls + offs_m, mask=row_ok, other=0.0)
                delta = tl.load(Ds + offs_m, mask=row_ok, other=0.0)
                # Transposed scores (keys x queries), so dk and dv come out without a transpose.
                s_t = _mm(k, tl.trans(q), PRECISION, UPCAST) * scale_log2
                ok = row_ok[None, :] & col_ok[:, None]
                if CAUSAL:
                    ok = ok & (offs_n[:, None] <= offs_m[None, :] + shift)
                p_t = tl.where(ok, tl.exp2(s_t - lse[None, :]), 0.0)
                dv += _mm(_rne(p_t, UPCAST).to(do.dtype), do, PRECISION, UPCAST)
                dp_t = _mm(v, tl.trans(do), PRECISION, UPCAST)
                ds_t = p_t * (dp_t - delta[None, :])
                dk += _mm(_rne(ds_t, UPCAST).to(q.dtype), q, PRECISION, UPCAST)
        DKs = DK + k_start.to(tl.int64) * stride_dkt + head_k * stride_dkh
        DVs = DV + k_start.to(tl.int64) * stride_dvt + head_k * stride_dvh
        tl.store(DKs + offs_n[:, None] * stride_dkt + offs_d[None, :],
                 _rne(dk * scale, UPCAST).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DVs + offs_n[:, None] * stride_dvt + offs_d[None, :],
                 _rne(dv, UPCAST).to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _dq_step(dq, q, do, lse, delta, Ks, Vs, start_n, offs_m, offs_n, offs_d, row_ok, d_ok,
                 seqlen_k, shift, scale_log2, stride_kt, stride_vt, MASKED: tl.constexpr,
                 CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """One key block of dq = scale * sum_j P_ij (dP_ij - delta_i) k_j. Unmasked blocks need no
        row mask either: rows past the segment have q = dO = delta = 0, so their dS is 0."""
        cols = start_n + offs_n
        col_ok = cols < seqlen_k
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(Ks + cols[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(Vs + cols[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _mm(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
        p = tl.exp2(s - lse[:, None])
        if MASKED:
            ok = row_ok[:, None] & col_ok[None, :]
            if CAUSAL:
                ok = ok & (cols[None, :] <= offs_m[:, None] + shift)
            p = tl.where(ok, p, 0.0)
        dp = _mm(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        return dq + _mm(_rne(ds, UPCAST).to(k.dtype), k, PRECISION, UPCAST)

    @triton.jit
    def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, scale_log2, scale,
                       stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                       stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lh,
                       GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        seg = tl.program_id(1)
        head = tl.program_id(2)
        head_k = head // GROUP
        q_start = tl.load(CU_Q + seg)
        seqlen_q = tl.load(CU_Q + seg + 1) - q_start
        k_start = tl.load(CU_K + seg)
        seqlen_k = tl.load(CU_K + seg + 1) - k_start
        start_m = pid_m * BLOCK_M
        if start_m >= seqlen_q:
            return
        # Segment base pointers hold the only 64-bit arithmetic: tile offsets stay int32, since 2-D
        # tiles of 64-bit offsets cost registers the matmuls need (ptxas showed spills).
        Qs = Q + q_start.to(tl.int64) * stride_qt + head * stride_qh
        Ks = K + k_start.to(tl.int64) * stride_kt + head_k * stride_kh
        Vs = V + k_start.to(tl.int64) * stride_vt + head_k * stride_vh
        Ls = LSE + head.to(tl.int64) * stride_lh + q_start

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < seqlen_q
        d_ok = offs_d < HEAD_DIM
        q_mask = row_ok[:, None] & d_ok[None, :]
        DOs = DO + q_start.to(tl.int64) * stride_dot + head * stride_doh
        Ds = DELTA + head.to(tl.int64) * stride_lh + q_start
        q = tl.load(Qs + offs_m[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DOs + offs_m[:, None] * stride_dot + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(Ls + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(Ds + offs_m, mask=row_ok, other=0.0)
        shift = seqlen_k - seqlen_q
        if CAUSAL:  # as in the forward: unmasked key blocks first, then the diagonal ones
            full_end = (tl.maximum(tl.minimum(seqlen_k, start_m + shift + 1), 0) // BLOCK_N) * BLOCK_N
            end_n = tl.maximum(tl.minimum(seqlen_k, start_m + BLOCK_M + shift), 0)
        else:
            full_end = (seqlen_k // BLOCK_N) * BLOCK_N
            end_n = seqlen_k
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, full_end, BLOCK_N):
            dq = _dq_step(dq, q, do, lse, delta, Ks, Vs, start_n, offs_m, offs_n, offs_d, row_ok, d_ok, seqlen_k,
                          shift, scale_log2, stride_kt, stride_vt, False, CAUSAL, PRECISION, UPCAST)
        for start_n in range(full_end, end_n, BLOCK_N):
            dq = _dq_step(dq, q, do, lse, delta, Ks, Vs, start_n, offs_m, offs_n, offs_d, row_ok, d_ok, seqlen_k,
                          shift, scale_log2, stride_kt, stride_vt, True, CAUSAL, PRECISION, UPCAST)
        DQs = DQ + q_start.to(tl.int64) * stride_dqt + head * stride_dqh
        tl.store(DQs + offs_m[:, None] * stride_dqt + offs_d[None, :],
                 _rne(dq * scale, UPCAST).to(DQ.dtype.element_ty), mask=q_mask)


# ---- launcher --------------------------------------------------------------------------------------

def _blocks(head_dim: int, dtype: torch.dtype, on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward; the backward's are below.

    Why fixed choices and no autotuning: the grid depends on BLOCK_M and segment layouts change
    every step, so a per-shape autotune would retune constantly. The GPU choices are the largest
    tiles that ptxas (sm_90a) compiles without register spills; they are not timed yet (no GPU was
    available when they were chosen). fp32 (the tests' dtype; no tensor cores) uses small tiles.
    In the interpreter small blocks keep tests fast and make short segments straddle blocks.
    """
    if not on_gpu:
        return 16, 16, 1, 1
    if dtype == torch.float32:
        return 32, 32, 4, 2
    if head_dim <= 64:
        return 128, 64, 8, 3
    return 128, 32, 8, 3


def _bwd_blocks(head_dim: int, dtype: torch.dtype, on_gpu: bool) -> tuple[tuple[int, int], tuple[int, int], int, int]:
    """((BLOCK_M, BLOCK_N) of dk/dv, (BLOCK_M, BLOCK_N) of dq, num_warps, num_stages).

    dk/dv keeps its key block (BLOCK_N) in registers and streams query blocks (BLOCK_M) past it,
    dq the other way round; spill-free on sm_90a like the forward's (see ``_blocks``).
    """
    if not on_gpu:
        return (16, 16), (16, 16), 1, 1
    if dtype == torch.float32:
        return (32, 32), (32, 32), 4, 2
    if head_dim <= 64:
        return (64, 128), (128, 64), 8, 3
    return (64, 64), (64, 64), 8, 3


def _check_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, total_k: int | None = None) -> None:
    """Shape, dtype and device checks that name the tensor, what was expected and the fix.
    ``total_k``: the keys the segments index (``len(kv_index)`` when keys are gathered), else k's rows.

    Values of cu_seqlens are checked only on the CPU: on a GPU reading them would synchronise the
    device in every layer (flash-attn does not check them either).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be (total_tokens, nheads, head_dim), got shape {tuple(t.shape)}; "
                             "flatten a padded (batch, seqlen, nheads, head_dim) tensor by unpadding it first")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move all tensors to one device")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}; cast them")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (total_k, nheads_k, head_dim), got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q's head_dim {q.shape[2]} differs from k's {k.shape[2]}; they must match")
    if q.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be at most {MAX_HEAD_DIM} (the kernel's tiles are sized for it), got "
                         f"{q.shape[2]}; use sage_fast.kernels.reference.varlen_attention_sdpa for larger heads")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q's nheads ({q.shape[1]}) must be a multiple of k's nheads_k ({k.shape[1]}) for GQA")
    total_k = k.shape[0] if total_k is None else total_k
    for name, cu, total in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, total_k)):
        if cu.dim() != 1 or cu.numel() < 2:
            raise ValueError(f"{name} must be (batch + 1,) cumulative lengths starting at 0, got shape "
                             f"{tuple(cu.shape)}; build it with F.pad(lengths.cumsum(0), (1, 0))")
        if cu.dtype != torch.int32:
            raise ValueError(f"{name} must be int32 (flash-attn's convention), got {cu.dtype}; "
                             f"pass {name}.to(torch.int32)")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device} but q is on {q.device}; move it to q's device")
        if cu.device.type != "cpu":  # reading values would sync the GPU in every layer: flash-attn doesn't
            continue
        first, last = int(cu[0]), int(cu[-1])
        if first < 0 or last > total or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"{name} must be non-decreasing within [0, {total}] (the tensor's total tokens), "
                             f"got first {first}, last {last}")
    for name, cu, given in (("max_seqlen_q", cu_seqlens_q, max_seqlen_q), ("max_seqlen_k", cu_seqlens_k, max_seqlen_k)):
        if cu.device.type == "cpu" and cu.numel() > 1 and int((cu[1:] - cu[:-1]).max()) > given:
            raise ValueError(f"{name}={given} is below the longest segment ({int((cu[1:] - cu[:-1]).max())}); "
                             "pass the longest segment length (rows past it would be skipped)")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q has {cu_seqlens_q.numel() - 1} segments but cu_seqlens_k has "
                         f"{cu_seqlens_k.numel() - 1}; give one (q, k) pair per segment")


def _precision(dtype: torch.dtype) -> str:
    # fp32 is the tests' dtype: TF32 products (10-bit mantissa) would fail the fp32 comparison.
    return "ieee" if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and interpreter_mode()


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
             max_seqlen_q: int, causal: bool, scale: float,
             blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the forward: returns out (total_q, nheads, head_dim) and lse (nheads, total_q) fp32, log2."""
    total_q, nheads, head_dim = q.shape
    on_gpu = q.is_cuda and not interpreter_mode()
    block_m, block_n, warps, stages = _blocks(head_dim, q.dtype, on_gpu)
    if blocks is not None:
        block_m, block_n = blocks
    out = torch.zeros_like(q)  # rows no segment covers stay 0 (flash-attn leaves them undefined)
    lse = torch.full((nheads, total_q), float("inf"), dtype=torch.float32, device=q.device)
    batch = cu_q.numel() - 1
    if total_q == 0 or max_seqlen_q == 0:
        return out, lse
    grid = (triton.cdiv(max_seqlen_q, block_m), batch, nheads)
    _fwd_kernel[grid](
        q, k, v, out, lse, cu_q, cu_k, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        GROUP=nheads // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, PRECISION=_precision(q.dtype), UPCAST=_upcast(q.dtype),
        num_warps=warps, num_stages=stages,
    )
    return out, lse


def _backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
              causal: bool, scale: float,
              blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launches the backward: returns dq, dk, dv shaped like q, k, v."""
    total_q, nheads, head_dim = q.shape
    nheads_k = k.shape[1]
    on_gpu = q.is_cuda and not interpreter_mode()
    kv_blocks, q_blocks, warps, stages = _bwd_blocks(head_dim, q.dtype, on_gpu)
    if blocks is not None:
        kv_blocks = q_blocks = blocks
    do = do.contiguous() if do.stride(-1) != 1 else do
    delta = torch.empty((nheads, total_q), dtype=torch.float32, device=q.device)  # see _bwd_delta_kernel
    if total_q > 0:
        block_t = 16 if not on_gpu else 64
        _bwd_delta_kernel[(triton.cdiv(total_q, block_t), nheads)](
            out, do, delta, total_q, out.stride(0), out.stride(1), do.stride(0), do.stride(1), delta.stride(0),
            HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_T=block_t,
            num_warps=4 if on_gpu else 1,
        )
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    batch = cu_q.numel() - 1
    if total_q == 0 or k.shape[0] == 0:
        return dq, dk, dv
    common = dict(GROUP=nheads // nheads_k, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                  CAUSAL=causal, PRECISION=_precision(q.dtype), UPCAST=_upcast(q.dtype), num_warps=warps,
                  num_stages=stages)
    if max_seqlen_k > 0:
        _bwd_dkdv_kernel[(triton.cdiv(max_seqlen_k, kv_blocks[1]), batch, nheads_k)](
            q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, scale * LOG2E, scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            lse.stride(0), BLOCK_M=kv_blocks[0], BLOCK_N=kv_blocks[1], **common,
        )
    if max_seqlen_q > 0:
        _bwd_dq_kernel[(triton.cdiv(max_seqlen_q, q_blocks[0]), batch, nheads)](
            q, k, v, do, lse, delta, dq, cu_q, cu_k, scale * LOG2E, scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            do.stride(0), do.stride(1), dq.stride(0), dq.stride(1), lse.stride(0),
            BLOCK_M=q_blocks[0], BLOCK_N=q_blocks[1], **common,
        )
    return dq, dk, dv


class VarlenAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, out and the log-sum-exp; the backward recomputes P blockwise."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,  # noqa: ANN001
                softmax_scale, blocks=None):  # noqa: ANN001, ANN205
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out, lse = _forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, causal, softmax_scale, blocks)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.args = (max_seqlen_q, max_seqlen_k, causal, softmax_scale, blocks)
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001, ANN205
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        max_seqlen_q, max_seqlen_k, causal, scale, blocks = ctx.args
        dq, dk, dv = _backward(dout, q, k, v, out, lse, cu_q, cu_k, max_seqlen_q, max_seqlen_k, causal, scale,
                               blocks)
        return dq, dk, dv, None, None, None, None, None, None, None


class GatheredKVVarlenAttentionFunction(torch.autograd.Function):
    """VarlenAttentionFunction whose keys and values are rows ``kv_index`` of k and v.

    Why: a shared-prefix row (a GRPO group's prompt once, then its n responses) attends each
    response to [prefix, itself], so the prefix's keys appear n times among the keys. Gathered
    before the call, that copy (n x prefix rows) is what autograd would keep for backward in every
    layer: ~13 GB at 8B for a group of 8 with an 11k-token prompt. Here the copy exists only while
    the forward and then the backward kernels run; autograd keeps k and v themselves, and the
    backward sums each gathered row's gradient back onto its row (in fp32).
    """

    @staticmethod
    def forward(ctx, q, k, v, kv_index, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,  # noqa: ANN001
                causal, softmax_scale, blocks=None):  # noqa: ANN001, ANN205
        q = q if q.stride(-1) == 1 else q.contiguous()
        keys, values = k.index_select(0, kv_index), v.index_select(0, kv_index)
        out, lse = _forward(q, keys, values, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, causal, softmax_scale, blocks)
        ctx.save_for_backward(q, k, v, kv_index, out, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.args = (max_seqlen_q, max_seqlen_k, causal, softmax_scale, blocks)
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: ANN001, ANN205
        q, k, v, kv_index, out, lse, cu_q, cu_k = ctx.saved_tensors
        max_seqlen_q, max_seqlen_k, causal, scale, blocks = ctx.args
        keys, values = k.index_select(0, kv_index), v.index_select(0, kv_index)
        dq, dkeys, dvalues = _backward(dout, q, keys, values, out, lse, cu_q, cu_k, max_seqlen_q, max_seqlen_k,
                                       causal, scale, blocks)
        del keys, values

        def scatter(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            summed = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
            return summed.index_add_(0, kv_index, grad.float()).to(like.dtype)

        return (dq, scatter(dkeys, k), scatter(dvalues, v), None, None, None, None, None, None, None, None)


def _check_kv_index(kv_index: torch.Tensor, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    if kv_index.dim() != 1 or kv_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"kv_index must be a 1-D int64 (or int32) tensor of k's row numbers, got {kv_index.dtype} of shape "
                         f"{tuple(kv_index.shape)}; build it with shared_prefix_kwargs(blocks)")
    if kv_index.device != q.device:
        raise ValueError(f"kv_index is on {kv_index.device} but q is on {q.device}; move it to q's device")
    if kv_index.device.type == "cpu" and kv_index.numel() and (int(kv_index.min()) < 0
                                                               or int(kv_index.max()) >= k.shape[0]):
        raise ValueError(f"kv_index must hold row numbers in [0, {k.shape[0]}) (k's rows), got values from "
                         f"{int(kv_index.min())} to {int(kv_index.max())}")
    return kv_index.long()


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool = True,
                     softmax_scale: float | None = None, kv_index: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over the segments of packed rows (flash-attn's ``flash_attn_varlen_func``).

    q: (total_q, nheads, head_dim); k, v: (total_k, nheads_k, head_dim) with nheads % nheads_k == 0;
    cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) cumulative segment lengths (segment b is rows
    cu[b]:cu[b+1]); max_seqlen_q / max_seqlen_k: the longest segment (sizes the launch grid; checked
    on the CPU, while on a GPU a value too small skips rows, as in flash-attn, because checking would
    synchronise the device). causal: bottom-right aligned mask (see the
    module docstring); softmax_scale: default 1/sqrt(head_dim). fp16/bf16 (fp32 for tests), head_dim
    up to 128 (64, 80 and 128 are the Qwen-VL ones). Returns (total_q, nheads, head_dim).

    kv_index: optional int64 (total_k,): the keys and values are rows ``kv_index`` of k and v (a
    shared prefix's rows repeated for each of its responses); the kernel path never keeps that
    gathered copy for backward (``GatheredKVVarlenAttentionFunction``).

    Runs the Triton kernels when ``sage_fast.kernels._dispatch.use_kernel`` says so (CUDA tensors or
    the interpreter), else ``varlen_attention_sdpa`` (one PyTorch SDPA call per segment: memory
    stays O(total), unlike the tests' written-out reference).
    """
    if kv_index is not None:
        kv_index = _check_kv_index(kv_index, k, q)
    _check_args(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                None if kv_index is None else kv_index.numel())
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    if not use_kernel(q, k, v):
        if kv_index is not None:
            k, v = k.index_select(0, kv_index), v.index_select(0, kv_index)
        return varlen_attention_sdpa(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal, softmax_scale=scale)
    if kv_index is not None:
        return GatheredKVVarlenAttentionFunction.apply(q, k, v, kv_index, cu_seqlens_q, cu_seqlens_k,
                                                       int(max_seqlen_q), int(max_seqlen_k), bool(causal), scale)
    return VarlenAttentionFunction.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                         int(max_seqlen_k), bool(causal), scale)
