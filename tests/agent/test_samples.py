"""Trajectory -> turn samples -> tokenized -> one packed row: the bridge from episodes to training."""

from __future__ import annotations

import warnings

import pytest
import torch

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.agent.samples import IGNORE_INDEX, sample_frames, tokenize_sample, turn_samples
from sage_fast.models import packed_attention as P
from sage_fast.models.base import SamplingConfig
from sage_fast.models.tiny import build_tiny_model
from sage_fast.models.transformers_backend import TransformersVLM
from sage_fast.video import open_video
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("samples")
    folder = build_tiny_model(root / "tiny", "qwen2_5_vl")
    video = make_indexed_video(root / "v.mp4", IndexedVideoSpec(num_frames=60, fps=4.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlm = TransformersVLM(folder)
    agent = Agent(vlm, config=AgentConfig(num_frames=6, max_stage2_steps=2, work_dir=str(root / "w"),
                                          sampling=SamplingConfig(max_tokens=12)))
    trajectory = agent.run(video, "What number is shown?")
    return folder, video, vlm, agent, trajectory


def test_samples_rebuild_the_prompts_the_model_read(setup) -> None:  # noqa: ANN001
    _, video, vlm, agent, trajectory = setup
    samples = turn_samples(trajectory)
    assert [s.stage for s in samples] == [t.stage for t in trajectory.turns]
    assert len(samples[0].frame_pts) == 6 and not any(s.has_frames for s in samples[1:])
    reader = open_video(video)
    size = agent.resize.output_size(reader.metadata.height, reader.metadata.width)
    for sample, turn in zip(samples, trajectory.turns, strict=True):
        item = tokenize_sample(vlm, sample, sample_frames(sample, reader, size))
        prompt_length = int((item["labels"] == IGNORE_INDEX).sum())
        assert prompt_length == turn.tokens_in  # the same prompt, frames re-decoded from their times
        response = item["input_ids"][prompt_length:]
        assert vlm.tokenizer.decode(response) == turn.raw_output + "<|im_end|>"
    with pytest.raises(ValueError, match="saw 6 frames"):
        tokenize_sample(vlm, samples[0], None)


def test_packed_trajectory_trains_like_its_samples_one_by_one(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from transformers import AutoModelForImageTextToText

    # the bridge is under test here, not the kernel (tests/kernels): the per-sample path, fast on CPU
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")
    folder, video, vlm, agent, trajectory = setup
    reader = open_video(video)
    size = agent.resize.output_size(reader.metadata.height, reader.metadata.width)
    items = [tokenize_sample(vlm, s, sample_frames(s, reader, size)) for s in turn_samples(trajectory)]
    targets = [int((item["labels"][1:] != IGNORE_INDEX).sum()) for item in items]
    sdpa = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    packed_model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation=P.ATTN_NAME,
                                                               dtype=torch.float32)
    with torch.no_grad():
        want = sum(sdpa(**{k: (v.unsqueeze(0) if k in ("input_ids", "labels", "mm_token_type_ids") else v)
                           for k, v in item.items()}).loss * (n / sum(targets))
                   for item, n in zip(items, targets, strict=True))
        row = P.pack_samples(packed_model, items)
        got = packed_model(**row).loss
    assert row["input_ids"].shape[1] == sum(len(item["input_ids"]) for item in items)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
