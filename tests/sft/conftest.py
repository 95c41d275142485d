"""Shared SFT test material: a tiny Qwen2.5-VL, a synthetic video, records from a real episode and by hand."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from sage_fast.data.sft_records import SFTRecord, records_from_trajectory

# A Stage-2 answer in the shape the orchestrator must learn to write (DESIGN.md §2).
STAGE2_RESPONSE = '<json>{"answerable": {"verdict": true, "reasoning": "seen"}, "final_answer": "7"}</json>'


def stage2_record(record_id: str = "hand/stage2-1", response: str = STAGE2_RESPONSE,
                  question: str = "What number is shown?") -> SFTRecord:
    """A text-only Stage-2 record with a known JSON response and a short prompt (fast to train)."""
    messages = [{"role": "system", "content": "Answer as JSON."},
                {"role": "user", "content": f"Query: {question} Tool results: none."}]
    return SFTRecord(id=record_id, video_path="v.mp4", stage="stage2", step=1, messages=messages,
                     response=response, metadata={"source": "hand"})


@dataclass
class Material:
    root: Path
    folder: Path  # the tiny model
    video: Path
    vlm: object  # TransformersVLM on the tiny model
    agent: object  # the Agent that ran the episode
    episode: list[SFTRecord]  # Stage-1 (with frames) then Stage-2, from a real episode
    hand: SFTRecord


@pytest.fixture(scope="session")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    from sage_fast.agent.loop import Agent, AgentConfig
    from sage_fast.models.base import SamplingConfig
    from sage_fast.models.tiny import build_tiny_model
    from sage_fast.models.transformers_backend import TransformersVLM
    from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

    root = tmp_path_factory.mktemp("sft")
    folder = build_tiny_model(root / "tiny", "qwen2_5_vl")
    video = make_indexed_video(root / "v.mp4", IndexedVideoSpec(num_frames=40, fps=4.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = TransformersVLM(folder)
    agent = Agent(vlm, config=AgentConfig(num_frames=4, max_stage2_steps=1, work_dir=str(root / "work"),
                                          sampling=SamplingConfig(max_tokens=12)))
    trajectory = agent.run(video, "What number is shown?")
    episode = records_from_trajectory(trajectory, "ep0", metadata={"source": "tiny"})
    assert [r.stage for r in episode][:1] == ["stage1"] and len(episode) >= 2, "the episode must give both stages"
    return Material(root, folder, video, vlm, agent, episode, stage2_record())


@pytest.fixture
def make_stage2():  # noqa: ANN201 (the stage2_record factory)
    return stage2_record
