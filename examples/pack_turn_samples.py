"""Pack RL turn-samples of very different lengths into token-budget rows and attend per sample.

A Stage-1 sample (thousands of visual tokens) beside many short Stage-2 samples is the shape of
SAGE's RL batches. ``pack_samples`` plans balanced micro-batches for the data-parallel ranks and
emits ``cu_seqlens``; ``varlen_attention`` attends within each sample of a packed row (the Triton
kernel on a GPU, the per-sample PyTorch path elsewhere). The script checks the packed result
against attention run on each sample alone. Usage: ``python examples/pack_turn_samples.py``.
"""

from __future__ import annotations

import torch
from sage_fast.kernels.packed_attention import varlen_attention

from sage_fast.rollout.packing import pack_samples


def main() -> None:
    torch.manual_seed(0)
    lengths = [1800, 120, 340, 95, 410, 260, 77, 530, 150, 64]  # one Stage-1 turn, nine Stage-2 turns
    heads, kv_heads, dim = 4, 2, 64
    plan = pack_samples(lengths, budget=2048, world_size=2)
    for rank, batches in enumerate(plan):
        for batch in batches:
            total = batch.tokens
            q = torch.randn(total, heads, dim)
            k, v = torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
            out = varlen_attention(q, k, v, batch.cu_seqlens, batch.cu_seqlens, batch.max_seqlen, batch.max_seqlen)
            worst = 0.0
            for i in range(len(batch.indices)):  # each sample alone, through plain SDPA
                a, b = int(batch.cu_seqlens[i]), int(batch.cu_seqlens[i + 1])
                alone = torch.nn.functional.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1), k[a:b].repeat_interleave(heads // kv_heads, 1).transpose(0, 1),
                    v[a:b].repeat_interleave(heads // kv_heads, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
                worst = max(worst, float((out[a:b] - alone).abs().max()))
            print(f"rank {rank}: samples {batch.indices} -> {total} tokens, max error vs per-sample SDPA {worst:.2e}")
            assert worst < 1e-4


if __name__ == "__main__":
    main()
