"""Packs finished turn-samples into token-budget micro-batches, balanced across data-parallel ranks.

GRPO trains on every turn of every episode, and turns range from a 300-token Stage-2 answer to an
11 000-token Stage-1 prompt. Padding them to one length wastes most of a batch; packing them into
one row per micro-batch with ``cu_seqlens`` (int32, (batch + 1,), flash-attn's varlen convention)
wastes nothing. Every rank must run the same number of micro-batches per step (or the gradient
all-reduce waits forever), so micro-batches open ``world_size`` at a time, and they are dealt to
ranks heaviest first to the least-loaded rank with a free slot.

The C++ core (csrc/scheduler/packing.cpp) and :func:`pack_reference` here are the same algorithm;
tests compare them exactly.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sage_fast import _ext
from sage_fast.rollout.scheduler import Impl


@dataclass(frozen=True)
class MicroBatch:
    """One packed row: ``indices`` into the sample list, ``cu_seqlens`` int32 (len(indices) + 1,)."""

    rank: int
    indices: list[int]
    cu_seqlens: torch.Tensor
    max_seqlen: int

    @property
    def tokens(self) -> int:
        return int(self.cu_seqlens[-1])


def _check(lengths: Any, budget: int, world_size: int) -> list[int]:
    if budget < 1:
        raise ValueError(f"budget must be >= 1 token, got {budget}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    values = [int(x) for x in np.asarray(lengths, dtype=np.int64).reshape(-1)]
    for i, n in enumerate(values):
        if not 1 <= n <= budget:
            raise ValueError(f"sample {i} has {n} tokens; each must be in [1, budget={budget}] "
                             "(raise the budget or truncate the sample)")
    return values


def pack_reference(lengths: Any, budget: int, world_size: int) -> dict[str, np.ndarray]:
    """The algorithm in plain Python: ``order, offsets, ranks, loads`` arrays as the C++ core returns."""
    lens = _check(lengths, budget, world_size)
    total = sum(lens)
    bins = max(-(-total // budget), 1)
    bins = -(-bins // world_size) * world_size
    load = [0] * bins
    items: list[list[int]] = [[] for _ in range(bins)]
    heap = [(0, b) for b in range(bins)]
    for i in sorted(range(len(lens)), key=lambda i: -lens[i]):  # stable: ties keep index order
        if heap[0][0] + lens[i] > budget:  # even the lightest has no room: open a row per rank
            for _ in range(world_size):
                heapq.heappush(heap, (0, bins))
                load.append(0)
                items.append([])
                bins += 1
        current, b = heapq.heappop(heap)
        load[b] = current + lens[i]
        items[b].append(i)
        heapq.heappush(heap, (load[b], b))
    per_rank = bins // world_size
    rank_load, rank_count = [0] * world_size, [0] * world_size
    rank_bins: list[list[int]] = [[] for _ in range(world_size)]
    for b in sorted(range(bins), key=lambda b: -load[b]):
        best = -1
        for r in range(world_size):
            if rank_count[r] < per_rank and (best < 0 or rank_load[r] < rank_load[best]):
                best = r
        rank_load[best] += load[b]
        rank_count[best] += 1
        rank_bins[best].append(b)
    order, offsets, ranks, loads = [], [0], [], []
    for r in range(world_size):
        for b in rank_bins[r]:
            order += items[b]
            offsets.append(len(order))
            ranks.append(r)
            loads.append(load[b])
    return {"order": np.asarray(order, np.int64), "offsets": np.asarray(offsets, np.int64),
            "ranks": np.asarray(ranks, np.int32), "loads": np.asarray(loads, np.int64)}


def pack_plan(lengths: Any, budget: int, world_size: int, *, impl: Impl = "auto") -> dict[str, np.ndarray]:
    """``order, offsets, ranks, loads`` from the C++ core (``auto`` when built) or the reference."""
    use_cpp = impl == "cpp" or (impl == "auto" and _ext.available() and hasattr(_ext.load(), "pack_samples"))
    if impl not in ("auto", "cpp", "python"):
        raise ValueError(f"impl must be 'auto', 'cpp' or 'python', got {impl!r}")
    if not use_cpp:
        return pack_reference(lengths, budget, world_size)
    _check(lengths, budget, world_size)  # the same message from both paths
    return dict(_ext.load().pack_samples(np.asarray(lengths, dtype=np.int64).reshape(-1), budget, world_size))


def pack_samples(lengths: Any, budget: int, world_size: int = 1, *, impl: Impl = "auto",
                 device: torch.device | str | None = None) -> list[list[MicroBatch]]:
    """Per rank, its micro-batches (every rank the same number; an empty one has ``cu_seqlens == [0]``).

    ``lengths[i]`` is sample i's token count; each micro-batch holds at most ``budget`` tokens;
    ``cu_seqlens`` are placed on ``device`` (the attention kernel wants them beside q, k, v)."""
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    plan = pack_plan(lens, budget, world_size, impl=impl)
    per_rank: list[list[MicroBatch]] = [[] for _ in range(world_size)]
    order, offsets = plan["order"], plan["offsets"]
    for k, rank in enumerate(plan["ranks"].tolist()):
        indices = order[offsets[k]:offsets[k + 1]]
        cu = np.zeros(len(indices) + 1, dtype=np.int32)
        np.cumsum(lens[indices], out=cu[1:])
        per_rank[rank].append(MicroBatch(rank=rank, indices=indices.tolist(), cu_seqlens=torch.from_numpy(cu).to(device),
                                         max_seqlen=int(lens[indices].max()) if len(indices) else 0))
    return per_rank


def pack_tensors(samples: list[torch.Tensor], batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenates ``samples[i]`` (1-D token ids) of ``batch`` into one (1, tokens) row and the
    position ids that restart at 0 for every sample (what varlen attention with M-RoPE-free text expects)."""
    parts = [samples[i] for i in batch.indices]
    for i, part in zip(batch.indices, parts, strict=True):
        if part.ndim != 1:
            raise ValueError(f"samples[{i}] must be a 1-D tensor of token ids, got shape {tuple(part.shape)}")
    if not parts:
        return torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in parts])
    expected = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
    if not torch.equal(lengths.to(expected.dtype), expected):
        raise ValueError("samples' lengths differ from the lengths the batch was packed with")
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()])
    return torch.cat(parts)[None], positions[None]
