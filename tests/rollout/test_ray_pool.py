"""The Ray pool on a local CPU cluster: each worker drives its own engine endpoint; groups stay whole."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from sage_fast.rollout import FinishReason, SchedulerConfig, TurnAction  # noqa: E402
from sage_fast.rollout.engines import RetryPolicy  # noqa: E402
from sage_fast.rollout.episodes import ScriptedEpisodeFactory  # noqa: E402
from sage_fast.rollout.ray_pool import EngineSpec, RayRolloutPool  # noqa: E402

ANS, TOOL = int(TurnAction.ANSWER), int(TurnAction.TOOL)


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_pool_runs_groups_on_their_workers_endpoints(local_ray, tmp_path, make_faulty_openai) -> None:  # noqa: ANN001
    servers = [make_faulty_openai(), make_faulty_openai()]
    servers[0].reply, servers[1].reply = "from endpoint A", "from endpoint B"
    servers[1].faults = ["503"]  # retried inside worker 1
    specs = [EngineSpec("openai", {"base_url": s.url, "model": "stub", "retry": RetryPolicy(base_delay_s=0.01, seed=0)})
             for s in servers]
    factory = ScriptedEpisodeFactory(work_dir=str(tmp_path), max_tokens=8)
    groups = [[(g * 3 + i, [TOOL] * (i + 1) + [ANS], [0.02] * (i + 2)) for i in range(3)] for g in range(5)]
    pool = RayRolloutPool(specs, factory, SchedulerConfig(max_seqs=4, max_turns=11), num_cpus=0.5)
    try:
        results = pool.run(groups)
    finally:
        pool.close()
    assert [r.group for r in results] == list(range(5))
    by_worker = {w: [r.group for r in results if r.worker == w] for w in (0, 1)}
    assert sorted(len(v) for v in by_worker.values()) == [2, 3]  # dealt by load, groups whole
    for r in results:
        assert r.reasons == [FinishReason.ANSWERED] * 3 and r.errors == [None] * 3
        reply = servers[r.worker].reply
        assert [s["index"] for s in r.summaries] == [spec[0] for spec in groups[r.group]]
        for i, summary in enumerate(r.summaries):
            assert summary["texts"] == [reply] * (i + 2)  # every turn went to the worker's own endpoint
            assert summary["tool_results"] == ["slept 0.020 s"] * (i + 1)
    turns = {w: sum(len(s["texts"]) for r in results if r.worker == w for s in r.summaries) for w in (0, 1)}
    assert len(servers[0].requests) == turns[0]
    assert len(servers[1].requests) == turns[1] + 1  # plus the 503 it answered once


def test_pool_hands_out_chunks_to_free_workers(local_ray, tmp_path, make_faulty_openai) -> None:  # noqa: ANN001
    servers = [make_faulty_openai(), make_faulty_openai()]
    specs = [EngineSpec("openai", {"base_url": s.url, "model": "stub"}) for s in servers]
    # Group 0 is slow (a 1.5 s tool), the rest quick; which worker takes which later chunk depends on
    # timing, so only the deterministic parts are checked.
    groups = [[(0, [TOOL, ANS], [1.5, 0])]] + [[(g, [TOOL, ANS], [0.01, 0])] for g in range(1, 7)]
    pool = RayRolloutPool(specs, ScriptedEpisodeFactory(work_dir=str(tmp_path)), SchedulerConfig(), num_cpus=0.5)
    try:
        results = pool.run(groups, chunk=1)
        with pytest.raises(ValueError, match="chunk"):
            pool.run(groups, chunk=0)
    finally:
        pool.close()
    assert [r.group for r in results] == list(range(7))
    assert all(r.reasons == [FinishReason.ANSWERED] for r in results)
    assert {results[0].worker, results[1].worker} == {0, 1}  # the first two chunks go to the two free workers
    for w in (0, 1):  # each worker's endpoint served exactly its groups' turns (2 per group)
        assert len(servers[w].requests) == 2 * sum(1 for r in results if r.worker == w)


def test_pool_rejects_empty_input(local_ray, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="engines"):
        RayRolloutPool([], ScriptedEpisodeFactory(work_dir=str(tmp_path)), SchedulerConfig())
    with pytest.raises(ValueError, match="kind"):
        EngineSpec("grpc")
