"""Packing: exact (every sample once, cu_seqlens right), within budget, balanced, C++ == reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_fast.rollout.packing import pack_plan, pack_reference, pack_samples, pack_tensors
from sage_fast.rollout.scheduler import cpp_available

needs_cpp = pytest.mark.skipif(not cpp_available(), reason="compiled core not built")


def turn_lengths(seed: int, n: int) -> np.ndarray:
    """Turn-sample lengths shaped like SAGE's: a few long Stage-1 turns, many short Stage-2 ones."""
    rng = np.random.default_rng(seed)
    stage1 = rng.random(n) < 0.25
    return np.where(stage1, rng.integers(9_000, 12_000, n), rng.integers(300, 4_000, n)).astype(np.int64)


@needs_cpp
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("world", [1, 3, 8])
def test_cpp_equals_reference(seed: int, world: int) -> None:
    lengths = turn_lengths(seed, 50 + 40 * seed)
    budget = 16_384 * (1 + seed % 2)
    cpp, ref = pack_plan(lengths, budget, world, impl="cpp"), pack_reference(lengths, budget, world)
    for key in ("order", "offsets", "ranks", "loads"):
        assert cpp[key].dtype == ref[key].dtype and np.array_equal(cpp[key], ref[key]), key


@pytest.mark.parametrize("impl", [pytest.param("cpp", marks=needs_cpp), "python"])
@pytest.mark.parametrize("seed", range(6))
def test_exact_within_budget_and_balanced(impl: str, seed: int) -> None:
    world = [1, 2, 4, 8, 3, 5][seed]
    lengths = turn_lengths(seed, 300)
    budget = 32_768
    ranks = pack_samples(lengths, budget, world, impl=impl)
    seen = []
    for r, batches in enumerate(ranks):
        assert len(batches) == len(ranks[0])  # same number of micro-batches on every rank
        for mb in batches:
            assert mb.rank == r
            cu = mb.cu_seqlens
            assert cu.dtype == torch.int32 and cu.shape == (len(mb.indices) + 1,) and int(cu[0]) == 0
            assert torch.equal(cu[1:] - cu[:-1], torch.as_tensor(lengths[mb.indices], dtype=torch.int32))
            assert mb.tokens <= budget
            assert mb.max_seqlen == (int(lengths[mb.indices].max()) if mb.indices else 0)
            seen += mb.indices
    assert sorted(seen) == list(range(len(lengths)))  # every sample exactly once
    loads = [sum(mb.tokens for mb in batches) for batches in ranks]
    # Longest-first dealing keeps the ranks within one micro-batch's worth of each other, and the
    # number of micro-batches within one round of the lower bound.
    assert max(loads) - min(loads) <= budget
    lower = -(-int(lengths.sum()) // budget)
    assert len(ranks[0]) * world <= lower + 2 * world
    if world > 1:  # better than dealing samples round-robin in arrival order
        naive = [int(lengths[r::world].sum()) for r in range(world)]
        assert max(loads) - min(loads) <= max(naive) - min(naive)


def test_small_cases_and_bad_input() -> None:
    ranks = pack_samples([5, 3, 8, 2, 7], 10, 2, impl="python")
    assert [[mb.indices for mb in batches] for batches in ranks] == [[[2], [1, 3]], [[4], [0]]]
    assert pack_samples([4], 10, 3, impl="python")[2][0].cu_seqlens.tolist() == [0]  # empty slot
    assert pack_samples([4], 10, 1, device="meta")[0][0].cu_seqlens.device.type == "meta"
    with pytest.raises(ValueError, match="sample 1 has 20 tokens"):
        pack_samples([5, 20], 10, 1)
    with pytest.raises(ValueError, match="world_size"):
        pack_samples([5], 10, 0)


def test_pack_tensors_concatenates_with_restarting_positions() -> None:
    samples = [torch.arange(5), torch.arange(100, 103), torch.arange(200, 208)]
    (batch,) = pack_samples([5, 3, 8], 20, 1)[0]
    ids, positions = pack_tensors(samples, batch)
    assert ids.shape == (1, 16) and positions.shape == (1, 16)
    cu = batch.cu_seqlens.tolist()
    for k, i in enumerate(batch.indices):
        assert torch.equal(ids[0, cu[k]:cu[k + 1]], samples[i])
        assert positions[0, cu[k]:cu[k + 1]].tolist() == list(range(len(samples[i])))
    with pytest.raises(ValueError, match="lengths differ"):
        pack_tensors([torch.arange(4), samples[1], samples[2]], batch)
