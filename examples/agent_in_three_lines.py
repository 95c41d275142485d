"""The SAGE agent embedded in a script: make a video, ask a question, keep the trajectory.

Runs offline with ``--orchestrator tiny`` (random weights: the answer is meaningless, the whole
path runs); pass a Hugging Face id / local folder, or ``openai:http://host:8000/v1`` for a real
model. Usage: ``python examples/agent_in_three_lines.py [--orchestrator tiny] [--video VIDEO]``.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

from sage_fast import Agent
from sage_fast.agent.loop import AgentConfig
from sage_fast.agent.viewer import write_html
from sage_fast.cli.ask import make_orchestrator
from sage_fast.models.base import SamplingConfig
from sage_fast.video.synth import make_sample_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orchestrator", default="tiny")
    parser.add_argument("--video", default=None, help="default: a 20-s sample video made here")
    parser.add_argument("--question", default="What happens in the video?")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="sage_example_"))
    video = Path(args.video) if args.video else make_sample_video(out / "sample.mp4", duration_s=20, width=320,
                                                                   height=180, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model's "meaningless" warning; said above
        orchestrator = make_orchestrator(args.orchestrator, None)

    # The three lines:
    agent = Agent(orchestrator, config=AgentConfig(num_frames=16, max_stage2_steps=2,
                                                   sampling=SamplingConfig(max_tokens=48)))
    trajectory = agent.run(video, args.question)
    print(trajectory.answer)

    print(f"{len(trajectory.turns)} turns, {trajectory.cost.visual_tokens} visual tokens, "
          f"{trajectory.cost.seconds:.1f} s; page: {write_html(trajectory, out / 'trajectory.html')}")


if __name__ == "__main__":
    main()
