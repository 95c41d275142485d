"""SFT records as a torch Dataset: each record is parsed, its frames decoded and tokenized on access.

SAGE-MM's SFT set has ~417K per-turn records (DESIGN.md §2); a Stage-1 record stands for 128 frames
that exist only as times in a video. Tokenizing them up front would take hours and hold the pixels
of every record, so the dataset keeps only each line's byte offset in the JSONL file and does the
work in ``__getitem__`` (inside DataLoader workers when there are some): parse the line, re-decode
the turn's frames from the video with the shared ``open_video`` readers at SAGE's per-frame budget
(128-192 visual tokens), and build ``input_ids`` / ``labels`` with ``tokenize_sample``, the same
code that turns rollouts into GRPO samples. Opening the dataset still reads every line once, so a
malformed record or a missing video is reported before training starts, naming the line.

A record longer than ``max_length`` is skipped (``__getitem__`` returns None and the collator
counts it) or, with ``truncation="response"``, keeps its whole prompt and loses the end of its
response. A prompt is never cut: dropping frames or context would teach the model to answer from
an input it never saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sage_fast.agent.samples import IGNORE_INDEX, sample_frames, tokenize_sample
from sage_fast.data.sft_records import SFTRecord
from sage_fast.models.transformers_backend import FAMILIES, TransformersVLM, _vision_spec
from sage_fast.video.qwen_resize import QwenResizeConfig

TRUNCATION = ("skip", "response")
_PROGRESS_BYTES = 64 << 20


class _PixelDtype:
    """Stands in for the model where ``TransformersVLM.prompt`` reads only ``model.dtype``."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class PromptBuilder:
    """``TransformersVLM``'s prompt building and tokenizer for a model folder, without its weights.

    The trainer loads the model once, for training; the dataset (and each DataLoader worker, which
    gets a copy) needs only the tokenizer, the vision spec and the prompt code. ``prompt`` is
    ``TransformersVLM.prompt`` itself, so training prompts are byte-for-byte the ones the agent
    sends; pixels are built on the CPU in ``pixel_dtype`` (the trainer moves and casts them).
    """

    prompt = TransformersVLM.prompt

    def __init__(self, model_folder: str | Path, *, pixel_dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(model_folder)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: not a model folder (no config.json)")
        config = AutoConfig.from_pretrained(path)
        if config.model_type not in FAMILIES:
            raise ValueError(f"{path}: model type {config.model_type!r} cannot be fine-tuned as an orchestrator; "
                             f"use a Qwen2.5-VL or Qwen3-VL checkpoint ({', '.join(FAMILIES)})")
        self.name = f"prompts:{path}"
        self.family = config.model_type
        self.spec = _vision_spec(path, config)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.video_token_id = config.video_token_id
        self.image_token_id = config.image_token_id
        self.device = torch.device("cpu")
        self.model = _PixelDtype(pixel_dtype)


def _scan(path: Path, validate: bool) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(byte offset, line number) of each record line, streaming the file once; with ``validate``
    every record is parsed and checked, and the Stage-1 records' videos are returned
    ({video path: "file:line (record id)"} of its first record) for an existence check.
    A torn last line (a writer that crashed mid-line) is dropped, as ``read_records`` does."""
    offsets, numbers, videos = [], [], {}
    pending: tuple[int, int, bytes] | None = None  # the previous line, kept until we know it is not the last

    def accept(start: int, number: int, raw: bytes, last: bool) -> None:
        if not raw.strip():
            return
        if validate or last:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                if last:
                    return
                raise ValueError(f"{path}:{number}: not a JSON record ({exc}); fix or remove the line") from exc
            if validate:
                record = SFTRecord.from_dict(data, where=f"{path}:{number}")
                if record.to_sample().has_frames:
                    videos.setdefault(record.video_path, f"{path}:{number} (record {record.id})")
        offsets.append(start)
        numbers.append(number)

    position, size = 0, path.stat().st_size
    # a bar for files that take a while (SAGE-MM-SFT-417K is several GB)
    with open(path, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {path.name}",
                                          disable=size < _PROGRESS_BYTES, leave=False) as bar:
        for number, raw in enumerate(handle, start=1):
            if pending is not None:
                accept(*pending, last=False)
            pending = (position, number, raw)
            position += len(raw)
            bar.update(len(raw))
    if pending is not None:
        accept(*pending, last=True)
    return np.asarray(offsets, dtype=np.int64), np.asarray(numbers, dtype=np.int64), videos


class SFTDataset(Dataset):
    """``dataset[i]``: record i tokenized (``tokenize_sample``'s dict), or None when it is too long.

    ``records``: a JSONL file of :class:`SFTRecord` (read lazily, by offset) or a list of records.
    ``vlm``: a :class:`PromptBuilder` or a loaded :class:`TransformersVLM` (anything
    ``tokenize_sample`` takes). Relative video paths are found under ``video_root``.
    """

    def __init__(self, records: str | Path | Sequence[SFTRecord], vlm: Any, *, max_length: int = 32768,
                 truncation: str = "skip", min_frame_tokens: int = 128, max_frame_tokens: int = 192,
                 video_root: str | Path | None = None, video_backend: str = "auto", validate: bool = True) -> None:
        if truncation not in TRUNCATION:
            raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 tokens, got {max_length}")
        self.vlm = vlm
        self.max_length = max_length
        self.truncation = truncation
        self.video_root = Path(video_root) if video_root is not None else None
        self.video_backend = video_backend
        self.resize = QwenResizeConfig.from_token_budget(min_frame_tokens, max_frame_tokens,
                                                         patch_size=vlm.spec.patch_size)
        self.skipped: list[str] = []  # ids skipped in this process (DataLoader workers keep their own)
        self.truncated: list[str] = []
        if isinstance(records, (str, Path)):
            self.path: Path | None = Path(records)
            if not self.path.is_file():
                raise ValueError(f"{self.path}: no such SFT records file (make one with `sage-fast synth`)")
            self._records: list[SFTRecord] | None = None
            self._offsets, self._lines, videos = _scan(self.path, validate)
        else:
            self.path, self._records = None, list(records)
            bad = [r for r in self._records if not isinstance(r, SFTRecord)]
            if bad:
                raise TypeError(f"records must be SFTRecord objects or a JSONL path, got {type(bad[0]).__name__}")
            videos = {}
            for index, record in enumerate(self._records):
                if record.to_sample().has_frames:
                    videos.setdefault(record.video_path, f"records[{index}] (record {record.id})")
        if len(self) == 0:
            raise ValueError(f"{self.path or 'records'}: no SFT records to train on")
        if validate:
            self._check_videos(videos)

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self._offsets)

    def where(self, index: int) -> str:
        """Where record ``index`` came from (file:line), for messages."""
        return f"{self.path}:{int(self._lines[index])}" if self.path is not None else f"records[{index}]"

    def record(self, index: int) -> SFTRecord:
        """Record ``index``, parsed from its line on each call (nothing is kept)."""
        if self._records is not None:
            return self._records[index]
        with open(self.path, "rb") as handle:  # type: ignore[arg-type]
            handle.seek(int(self._offsets[index]))
            line = handle.readline()
        return SFTRecord.from_dict(json.loads(line), where=self.where(index))

    def video_path(self, video: str) -> Path:
        """A record's ``video_path`` resolved against ``video_root`` when relative."""
        path = Path(video)
        return self.video_root / path if self.video_root is not None and not path.is_absolute() else path

    def _check_videos(self, videos: dict[str, str]) -> None:
        """Every Stage-1 record's video exists: {video path: where its first record is}."""
        for video, where in videos.items():
            path = self.video_path(video)
            if not path.is_file():
                hint = ("the video has moved or was deleted" if path.is_absolute()
                        else "set video_root to the folder the videos are in")
                raise ValueError(f"{where}: video {path} not found; {hint}")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        from sage_fast.video import open_video

        record = self.record(index)
        sample = record.to_sample()
        frames = None
        if sample.has_frames:
            path = self.video_path(record.video_path)
            try:
                reader = open_video(path, backend=self.video_backend)
                size = self.resize.output_size(reader.metadata.height, reader.metadata.width)
                frames = sample_frames(sample, reader, size)
            except Exception as exc:  # name the record: a bare decoder error says nothing about which one
                raise RuntimeError(f"{self.where(index)} (record {record.id}): could not decode its "
                                   f"{len(sample.frame_pts)} frames from {path}: {exc}") from exc
        try:
            item = tokenize_sample(self.vlm, sample, frames)
        except ValueError as exc:
            raise ValueError(f"{self.where(index)} (record {record.id}): {exc}") from exc
        return self._fit(item, record.id)

    def _fit(self, item: dict[str, torch.Tensor], record_id: str) -> dict[str, torch.Tensor] | None:
        """``item`` within ``max_length``: as is, with its response cut short, or None (skipped)."""
        length = item["input_ids"].numel()
        if length <= self.max_length:
            return item
        trained = (item["labels"] != IGNORE_INDEX).nonzero()
        prompt = int(trained[0]) if trained.numel() else length  # tokens before the response
        if self.truncation == "skip" or prompt >= self.max_length:  # the prompt is never cut
            self.skipped.append(record_id)
            return None
        self.truncated.append(record_id)
        cut = dict(item)
        for key in ("input_ids", "labels", "mm_token_type_ids"):
            cut[key] = item[key][:self.max_length]
        return cut
