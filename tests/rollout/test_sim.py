"""The rollout simulation's engine model: prefix caching accounts every prompt token exactly once."""

from __future__ import annotations

import math

import pytest

from sage_fast.rollout import SchedulerConfig
from sage_fast.rollout.sim import (
    EngineModel,
    EngineSim,
    WorkloadConfig,
    make_workload,
    simulate_async,
    simulate_lockstep,
)


def _run_to_idle(sim: EngineSim) -> tuple[float, list[int]]:
    now, order = 0.0, []
    while sim.active:
        now, finished = sim.step(now, math.inf)
        order += finished
    return now, order


@pytest.mark.parametrize("caching", [False, True])
def test_group_followers_reuse_the_leaders_prefix(caching: bool) -> None:
    model = EngineModel(prefix_caching=caching, chunk_tokens=1000)
    sim = EngineSim(model)
    for key in range(3):  # three identical 5 000-token Stage-1 prompts, queued together
        sim.add(key, 5000, 4, prefix_key=7, prefix_tokens=5000)
    sim.add(3, 800, 4, prefix_key=None)  # unrelated prompt, never cached
    _, order = _run_to_idle(sim)
    assert sorted(order) == [0, 1, 2, 3]
    # The leader computes its prompt; each follower recomputes only its last token.
    expected_computed = 5000 + 2 * 1 + 800 if caching else 3 * 5000 + 800
    assert sim.prefill_tokens == expected_computed
    assert sim.prefill_tokens + sim.cached_tokens == 3 * 5000 + 800


def test_a_prefix_is_reused_only_after_it_was_computed_and_only_up_to_its_length() -> None:
    sim = EngineSim(EngineModel(prefix_caching=True, chunk_tokens=512))
    sim.add(0, 2000, 2, prefix_key=-1, prefix_tokens=600)  # system prompt 600 + 1 400 of its own
    _run_to_idle(sim)
    assert sim.prefill_tokens == 2000 and sim.cached_tokens == 0
    sim.add(1, 1500, 2, prefix_key=-1, prefix_tokens=600)  # later request with the same system prompt
    sim.add(2, 1500, 2, prefix_key=-2, prefix_tokens=600)  # another prefix: no hit
    _run_to_idle(sim)
    assert sim.cached_tokens == 600
    assert sim.prefill_tokens == 2000 + (1500 - 600) + 1500


def test_prefix_caching_off_changes_nothing_and_on_only_saves_engine_time() -> None:
    workload = WorkloadConfig(groups=4, group_size=4)
    scripts = make_workload(workload, seed=2)
    config = SchedulerConfig(max_seqs=16, max_tokens=200_000, tool_timeout=120.0)
    plain, _ = simulate_async(scripts, workload.group_size, EngineModel(), config)
    cached, _ = simulate_async(scripts, workload.group_size, EngineModel(prefix_caching=True), config)
    assert cached.turns == plain.turns and cached.tool_calls == plain.tool_calls
    assert cached.engine_busy_s < plain.engine_busy_s
    lock_plain = simulate_lockstep(scripts, EngineModel(), config)
    lock_cached = simulate_lockstep(scripts, EngineModel(prefix_caching=True), config)
    assert lock_cached.engine_busy_s < lock_plain.engine_busy_s
    # Without caching, no script's prefix changes any cost: the same run with prefixes stripped.
    for s in scripts:
        s.prefix_tokens = [0] * len(s.prefix_tokens)
    stripped, _ = simulate_async(scripts, workload.group_size, EngineModel(), config)
    assert (stripped.makespan_s, stripped.engine_busy_s) == (plain.makespan_s, plain.engine_busy_s)


def test_workload_prefixes_follow_the_groups() -> None:
    workload = WorkloadConfig(groups=3, group_size=2, stage2_shared_tokens=900)
    scripts = make_workload(workload, seed=0)
    for index, script in enumerate(scripts):
        assert script.prefix(0) == (index // 2, workload.stage1_prompt_tokens)
        assert all(script.prefix(k) == (-1, 900) for k in range(1, len(script.prompt)))
    with pytest.raises(ValueError, match="stage2_shared_tokens"):
        WorkloadConfig(stage2_shared_tokens=5000)
