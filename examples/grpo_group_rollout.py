"""Roll out GRPO groups of SAGE episodes with the asynchronous scheduler on a local engine.

Each group is n episodes of one (video, question); the scheduler admits every episode's next turn
as soon as its tool returns and hands each group over the moment its last episode ends, which is
when a trainer can score it (the paper's rewards come with the RL issue). Runs offline on a tiny
random-weight Qwen2.5-VL (meaningless answers, real decoding, tools, batching and scheduling).
Usage: ``python examples/grpo_group_rollout.py [--groups 2] [--group-size 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import warnings
from pathlib import Path

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.cli.ask import TINY, tiny_model_folder
from sage_fast.models.base import SamplingConfig
from sage_fast.rollout import SchedulerConfig
from sage_fast.rollout.agent_rollout import run_agent_rollout
from sage_fast.rollout.engines import TransformersEngine
from sage_fast.video.synth import make_sample_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="sage_rollout_"))
    video = make_sample_video(out / "sample.mp4", duration_s=20, width=320, height=180, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny random weights: the answers are meaningless
        engine = TransformersEngine(tiny_model_folder(TINY["tiny"]), max_batch=8)
    agent = Agent(engine.vlm, config=AgentConfig(num_frames=8, max_stage2_steps=2, work_dir=str(out / "work"),
                                                 sampling=SamplingConfig(temperature=0.7, max_tokens=32, seed=0)))
    questions = ["What is shown first?", "When does the scene change?", "What is said?"]
    groups = [[{"video": video, "question": questions[g % len(questions)]}] * args.group_size
              for g in range(args.groups)]

    def on_group(index: int, trajectories: list) -> None:
        print(f"group {index} complete: {[t.answer[:24] for t in trajectories]}")

    async def run() -> None:
        try:
            result = await run_agent_rollout(agent, groups, engine, SchedulerConfig(max_seqs=8), on_group=on_group)
        finally:
            await engine.aclose()
        print(f"{sum(len(g) for g in result.trajectories)} episodes, {result.turns} turns in {result.seconds:.1f} s "
              f"({result.episodes_per_s:.2f} episodes/s, engine busy {100 * result.engine_busy:.0f} %), "
              f"generate batches {engine.batches}; Stage-1 frames decoded once per video: "
              f"{agent.frame_cache.misses} decode(s), {agent.frame_cache.hits} reuse(s)")

    asyncio.run(run())


if __name__ == "__main__":
    main()
