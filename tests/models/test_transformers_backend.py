"""The local transformers orchestrator on tiny random Qwen2.5-VL / Qwen3-VL models built in code,
loaded with transformers' own from_pretrained, driving the whole agent loop offline."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from sage_fast.agent.loop import Agent, AgentConfig  # noqa: E402
from sage_fast.models.base import SamplingConfig  # noqa: E402
from sage_fast.models.tiny import build_tiny_model  # noqa: E402
from sage_fast.models.transformers_backend import TransformersVLM  # noqa: E402
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video  # noqa: E402


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransformersVLM:
    folder = build_tiny_model(tmp_path_factory.mktemp("models") / request.param, request.param)
    with pytest.warns(UserWarning, match="meaningless"):
        return TransformersVLM(folder)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "v.mp4", IndexedVideoSpec(num_frames=90, fps=10.0, gop=10))


def test_prompt_holds_one_video_with_matching_token_count(model: TransformersVLM, video: Path) -> None:
    from sage_fast.video import open_video
    from sage_fast.video.qwen_resize import QwenResizeConfig

    reader = open_video(video)
    size = QwenResizeConfig.from_token_budget(4, 8, patch_size=model.spec.patch_size).output_size(120, 160)
    frames = reader.sample_uniform(6, size=size)
    messages = [{"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "frame", "index": i, "pts": 0.0} for i in range(6)]
                 + [{"type": "text", "text": "Q?"}]}]
    text, vision = model.prompt(messages, frames)
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    t, h, w = vision["video_grid_thw"][0].tolist()
    assert t == 3 and text.count("<|video_pad|>") == t * h * w // 4
    assert text.count("seconds>") == (3 if model.family == "qwen3_vl" else 0)
    generation = model.generate(messages, frames, SamplingConfig(max_tokens=5))
    assert generation.tokens_in == len(model.tokenizer(text).input_ids) and 1 <= generation.tokens_out <= 5
    assert generation.visual_tokens == text.count("<|video_pad|>")  # 6 frames = 3 temporal groups


def test_seeded_sampling_is_reproducible(model: TransformersVLM) -> None:
    messages = [{"role": "user", "content": "hello"}]
    sampling = SamplingConfig(temperature=0.7, max_tokens=8, seed=3)
    assert model.generate(messages, None, sampling).text == model.generate(messages, None, sampling).text


def test_whole_agent_loop_offline(model: TransformersVLM, video: Path, tmp_path: Path) -> None:
    config = AgentConfig(num_frames=8, max_stage2_steps=2, work_dir=str(tmp_path / "w"),
                         sampling=SamplingConfig(max_tokens=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trajectory = Agent(model, config=config).run(video, "What is shown?")
    assert trajectory.turns[0].frames == 8 and trajectory.turns[0].tokens_in > trajectory.turns[0].visual_tokens
    assert trajectory.answer is not None  # random weights: some answer or the fixed could-not-produce one
    assert 1 <= len(trajectory.turns) <= 3


def test_unsupported_model_type_is_a_clear_error(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a supported orchestrator"):
        TransformersVLM(tmp_path)


def test_agent_from_pretrained_on_a_local_folder(tmp_path: Path, video: Path) -> None:
    folder = build_tiny_model(tmp_path / "tiny", "qwen2_5_vl")
    with pytest.warns(UserWarning, match="meaningless"):
        agent = Agent.from_pretrained(folder, config=AgentConfig(num_frames=4, max_stage2_steps=1,
                                                                 work_dir=str(tmp_path / "w"),
                                                                 sampling=SamplingConfig(max_tokens=8)))
    assert isinstance(agent.orchestrator, TransformersVLM)
    assert {"extract_parts_from_timestamp", "identify_timestamps_visually", "perform_reasoning"} <= set(agent.registry.tools)
    assert agent.run(video, "q").turns[0].frames == 4


def test_from_pretrained_resolves_a_hub_id_through_the_hub_cache(tmp_path: Path, video: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id goes through huggingface_hub's own resolution; offline, it is served from the
    standard cache layout (models--owner--name/refs + snapshots), as after a first download."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--allenai--SAGE-MM-tiny-test"
    build_tiny_model(tmp_path / "built", "qwen3_vl")
    shutil.copytree(tmp_path / "built", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match="meaningless"):
        agent = Agent.from_pretrained("allenai/SAGE-MM-tiny-test", config=AgentConfig(
            num_frames=4, max_stage2_steps=1, work_dir=str(tmp_path / "w"), sampling=SamplingConfig(max_tokens=8)))
    assert agent.orchestrator.name == "transformers:allenai/SAGE-MM-tiny-test"
    assert agent.orchestrator.family == "qwen3_vl"
    assert agent.run(video, "q").turns[0].frames == 4
    with pytest.raises(OSError, match="not a local folder, and the Hugging Face hub could not provide it"):
        Agent.from_pretrained("allenai/not-in-the-cache")


def test_agent_config_token_pruning_reaches_the_model(tmp_path: Path, video: Path) -> None:
    from sage_fast.models.token_pruning import TokenPruningConfig

    folder = build_tiny_model(tmp_path / "tiny", "qwen2_5_vl")
    config = dict(num_frames=8, max_stage2_steps=0, work_dir=str(tmp_path / "w"), sampling=SamplingConfig(max_tokens=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = Agent.from_pretrained(folder, config=AgentConfig(**config)).run(video, "q").turns[0]
        pruned_agent = Agent.from_pretrained(folder, config=AgentConfig(**config, token_pruning={"keep_ratio": 0.5}))
        pruned = pruned_agent.run(video, "q").turns[0]
    assert isinstance(pruned_agent.config.token_pruning, TokenPruningConfig)
    assert pruned_agent.orchestrator.token_pruning == TokenPruningConfig(keep_ratio=0.5)
    # 8 frames = 4 temporal groups; the first group is kept whole, the other three keep half
    per_group = full.visual_tokens // 4
    assert pruned.visual_tokens == per_group + 3 * (per_group // 2)
    assert full.tokens_in - pruned.tokens_in == full.visual_tokens - pruned.visual_tokens


def test_token_ids_and_logprobs_match_a_forward_pass(model: TransformersVLM) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    generation = model.generate(messages, None, SamplingConfig(max_tokens=6, logprobs=True))
    assert generation.token_ids is not None and len(generation.token_ids) == generation.tokens_out
    assert model.tokenizer.decode(list(generation.token_ids), skip_special_tokens=True) == generation.text
    # reference: one forward pass over prompt + generated tokens, log-softmax at each step
    text, _ = model.prompt(messages, None)
    prompt = model.tokenizer(text, return_tensors="pt").input_ids
    full = torch.cat([prompt, torch.tensor([generation.token_ids])], dim=1)
    with torch.no_grad():
        logits = model.model(input_ids=full, attention_mask=torch.ones_like(full)).logits[0].float()
    steps = logits[prompt.shape[1] - 1:-1].log_softmax(-1)
    expected = steps[torch.arange(len(generation.token_ids)), torch.tensor(generation.token_ids)]
    torch.testing.assert_close(torch.tensor(generation.logprobs), expected, atol=1e-4, rtol=1e-4)
    assert model.generate(messages, None, SamplingConfig(max_tokens=3)).logprobs is None


def test_concurrent_calls_equal_sequential_ones(model: TransformersVLM, video: Path) -> None:
    """Episodes of run_many and tools sharing the model call it from several threads at once."""
    import concurrent.futures

    from sage_fast.video import open_video

    reader = open_video(video)
    jobs = []
    for i in range(4):
        frames = reader.sample_uniform(4 + 2 * i, size=(224, 224)) if i % 2 == 0 else None  # 28k and 32k
        content = ([{"type": "frame", "index": k} for k in range(len(frames))] if frames is not None else []) + [
            {"type": "text", "text": f"question {i}"}]
        jobs.append(([{"role": "user", "content": content}], frames))
    sampling = SamplingConfig(max_tokens=6)
    sequential = [model.generate(m, f, sampling).text for m, f in jobs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        concurrent_texts = list(pool.map(lambda job: model.generate(job[0], job[1], sampling).text, jobs * 2))
        assert concurrent_texts == sequential * 2
        # Qwen-VL keeps rope_deltas on the model during generate: calls must not overlap
        with model.generate_lock:
            waiting = pool.submit(model.generate, *jobs[0], sampling)
            done, _ = concurrent.futures.wait([waiting], timeout=0.5)
            assert not done  # held back while another call owns the model
        assert waiting.result(timeout=30).text == sequential[0]
