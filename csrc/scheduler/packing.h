// Packs finished turn-samples into token-budget micro-batches balanced across data-parallel ranks.
//
// Every rank gets the same number of micro-batches (each optimizer step runs the same number of
// forward/backward passes on every rank, or collectives hang) and as close to the same number of
// tokens as a greedy longest-first assignment gives. sage_fast/rollout/packing.py holds the
// Python reference of the identical algorithm; tests compare the two exactly.
#pragma once

#include <cstdint>
#include <vector>

namespace sage_fast::sched {

struct PackResult {
  std::vector<int64_t> order;       // sample indices, micro-batch after micro-batch, rank-major
  std::vector<int64_t> offsets;     // micro-batch k holds order[offsets[k]:offsets[k+1]]
  std::vector<int32_t> ranks;       // rank of micro-batch k (non-decreasing)
  std::vector<int64_t> loads;       // tokens of micro-batch k
};

// lengths: tokens per sample (each 1..budget); budget: tokens per micro-batch; world: ranks.
PackResult pack(const std::vector<int64_t>& lengths, int64_t budget, int32_t world);

}  // namespace sage_fast::sched
