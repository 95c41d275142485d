// Longest-first packing (see packing.h): samples go, longest first, into the least-loaded
// micro-batch that has room (new micro-batches open `world` at a time so the count stays a
// multiple of the ranks); micro-batches then go, heaviest first, to the least-loaded rank that
// still has a free slot. Ties break on the lower index, which makes the result deterministic.
#include "scheduler/packing.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <queue>
#include <stdexcept>
#include <string>
#include <utility>

namespace sage_fast::sched {

PackResult pack(const std::vector<int64_t>& lengths, int64_t budget, int32_t world) {
  if (budget < 1) throw std::invalid_argument("budget must be >= 1 token, got " + std::to_string(budget));
  if (world < 1) throw std::invalid_argument("world_size must be >= 1, got " + std::to_string(world));
  int64_t total = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 1 || lengths[i] > budget) {
      throw std::invalid_argument("sample " + std::to_string(i) + " has " + std::to_string(lengths[i]) +
                                  " tokens; each must be in [1, budget=" + std::to_string(budget) +
                                  "] (raise the budget or truncate the sample)");
    }
    total += lengths[i];
  }
  int64_t bins = std::max<int64_t>((total + budget - 1) / budget, 1);
  bins = (bins + world - 1) / world * world;

  std::vector<int64_t> sorted(lengths.size());
  std::iota(sorted.begin(), sorted.end(), 0);
  std::stable_sort(sorted.begin(), sorted.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });

  using Slot = std::pair<int64_t, int64_t>;  // (load, bin)
  std::priority_queue<Slot, std::vector<Slot>, std::greater<Slot>> heap;
  std::vector<int64_t> load(static_cast<size_t>(bins), 0);
  std::vector<std::vector<int64_t>> items(static_cast<size_t>(bins));
  for (int64_t b = 0; b < bins; ++b) heap.emplace(0, b);
  for (const int64_t i : sorted) {
    if (heap.top().first + lengths[i] > budget) {  // even the lightest has no room
      for (int32_t r = 0; r < world; ++r) {
        heap.emplace(0, bins);
        load.push_back(0);
        items.emplace_back();
        ++bins;
      }
    }
    const auto [l, b] = heap.top();
    heap.pop();
    load[static_cast<size_t>(b)] = l + lengths[i];
    items[static_cast<size_t>(b)].push_back(i);
    heap.emplace(l + lengths[i], b);
  }

  std::vector<int64_t> by_load(static_cast<size_t>(bins));
  std::iota(by_load.begin(), by_load.end(), 0);
  std::stable_sort(by_load.begin(), by_load.end(), [&](int64_t a, int64_t b) { return load[a] > load[b]; });
  const int64_t per_rank = bins / world;
  std::vector<int64_t> rank_load(static_cast<size_t>(world), 0), rank_count(static_cast<size_t>(world), 0);
  std::vector<std::vector<int64_t>> rank_bins(static_cast<size_t>(world));
  for (const int64_t b : by_load) {
    int32_t best = -1;
    for (int32_t r = 0; r < world; ++r) {
      if (rank_count[r] < per_rank && (best < 0 || rank_load[r] < rank_load[best])) best = r;
    }
    rank_load[best] += load[b];
    ++rank_count[best];
    rank_bins[best].push_back(b);
  }

  PackResult out;
  out.order.reserve(lengths.size());
  out.offsets.push_back(0);
  for (int32_t r = 0; r < world; ++r) {
    for (const int64_t b : rank_bins[r]) {
      out.order.insert(out.order.end(), items[b].begin(), items[b].end());
      out.offsets.push_back(static_cast<int64_t>(out.order.size()));
      out.ranks.push_back(r);
      out.loads.push_back(load[b]);
    }
  }
  return out;
}

}  // namespace sage_fast::sched
