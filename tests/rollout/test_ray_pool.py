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


def test_pool_streams_each_group_as_it_completes(local_ray, tmp_path, make_faulty_openai) -> None:  # noqa: ANN001
    server = make_faulty_openai()
    pool = RayRolloutPool([EngineSpec("openai", {"base_url": server.url, "model": "stub"})],
                          ScriptedEpisodeFactory(work_dir=str(tmp_path)), SchedulerConfig(), num_cpus=0.5)
    try:
        slow = pool.submit([(0, [TOOL, ANS], [1.5, 0]), (1, [ANS], [0])])
        quick = pool.submit([(2, [TOOL, ANS], [0.01, 0])])
        order, late = [], None
        for result in pool.results():  # one worker: both groups run on the same stream
            order.append(result)
            if late is None:
                late = pool.submit([(3, [TOOL, ANS], [0.01, 0])])  # submitted while iterating
        assert pool.in_flight == 0
        with pytest.raises(RuntimeError, match="no group is in flight"):
            pool.next_result()
    finally:
        pool.close()
    # The quick group came back while the slow one still ran on the same worker, and so did the
    # group submitted after it: results follow completion, not the worker's batch.
    assert [r.group for r in order] == [quick, late, slow] == [1, 2, 0]
    assert all(r.worker == 0 for r in order)
    assert order[2].reasons == [FinishReason.ANSWERED] * 2
    assert [s["index"] for s in order[2].summaries] == [0, 1]
    assert order[2].summaries[0]["tool_results"] == ["slept 1.500 s"]


def test_pool_submits_to_the_least_loaded_worker(local_ray, tmp_path, make_faulty_openai) -> None:  # noqa: ANN001
    servers = [make_faulty_openai(), make_faulty_openai()]
    specs = [EngineSpec("openai", {"base_url": s.url, "model": "stub"}) for s in servers]
    pool = RayRolloutPool(specs, ScriptedEpisodeFactory(work_dir=str(tmp_path)), SchedulerConfig(), num_cpus=0.5)
    sizes = [3, 1, 1, 2, 1]
    try:
        ids = [pool.submit([(10 * g + i, [TOOL, ANS], [0.01, 0]) for i in range(n)]) for g, n in enumerate(sizes)]
        results = {r.group: r for r in pool.results()}
        bad = pool.submit([(99, [], [])])  # the factory rejects it inside the worker
        with pytest.raises(RuntimeError, match=f"group {bad} failed on worker 0: ValueError: actions must be non-empty"):
            pool.next_result()
        again = pool.submit([(100, [ANS], [0])])  # the worker goes on
        after = pool.next_result()
        figures = pool._ray.get([w.figures.remote() for w in pool.workers])
    finally:
        pool.close()
    # episodes in flight when each was sent: [0,0] -> w0, [3,0] -> w1, [3,1] -> w1, [3,2] -> w1, [3,4] -> w0
    assert [results[g].worker for g in ids] == [0, 1, 1, 1, 0]
    assert all(results[g].reasons == [FinishReason.ANSWERED] * n for g, n in zip(ids, sizes, strict=True))
    assert after.group == again and after.reasons == [FinishReason.ANSWERED]
    assert [f["groups_completed"] for f in figures] == [3, 3]
    assert len(servers[0].requests) == 2 * (3 + 1) + 1 and len(servers[1].requests) == 2 * (1 + 1 + 2)


def test_pool_runs_sage_agent_episodes(local_ray, tmp_path, make_faulty_openai) -> None:  # noqa: ANN001
    """SAGE's own agent loop in a Ray worker: the agent is built there on the worker's engine
    (AgentEpisodeFactory.bind), each group comes back with its trajectories."""
    from sage_fast.agent.loop import AgentConfig
    from sage_fast.agent.trajectory import Trajectory
    from sage_fast.rollout.agent_rollout import AgentEpisodeFactory, check_agent_config
    from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video
    from tests.rollout.test_agent_rollout import scripted_model

    video = make_indexed_video(tmp_path / "episode.mp4", IndexedVideoSpec(num_frames=120, fps=1.0, gop=30, bframes=2))
    server = make_faulty_openai()
    server.reply = scripted_model(video)
    factory = AgentEpisodeFactory(AgentConfig(work_dir=str(tmp_path / "work"), num_frames=8, max_stage2_steps=2))
    groups = [[{"video": str(video), "question": "What number?"}] * 2, [{"video": str(video), "question": "never mind"}]]
    pool = RayRolloutPool([EngineSpec("openai", {"base_url": server.url, "model": "stub"})], factory,
                          check_agent_config(factory.config, SchedulerConfig(max_seqs=4)), num_cpus=0.5)
    try:
        results = pool.run(groups)
    finally:
        pool.close()
    assert [r.reasons for r in results] == [[FinishReason.ANSWERED] * 2, [FinishReason.TURN_CAP]]
    trajectories = [[Trajectory.from_dict(s["trajectory"]) for s in r.summaries] for r in results]
    assert [t.answer for t in trajectories[0]] == ["12", "12"]
    assert all(t.tool_calls[0].result.startswith("Extracted 10 frames") for t in trajectories[0])
    assert trajectories[1][0].could_not_produce and len(trajectories[1][0].turns) == 3
    assert len(server.requests) == 2 * 2 + 3  # every turn went to the worker's engine
