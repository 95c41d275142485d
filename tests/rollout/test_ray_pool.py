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
    specs = [EngineSpec("openai", {"base_url": s.url, "model": "stub", "retry": RetryPolicy(base_s=0.01, seed=0)})
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


def test_pool_rejects_empty_input(local_ray, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="engines"):
        RayRolloutPool([], ScriptedEpisodeFactory(work_dir=str(tmp_path)), SchedulerConfig())
    with pytest.raises(ValueError, match="kind"):
        EngineSpec("grpc")
