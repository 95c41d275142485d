"""SFTDataset: lazy per-record tokenization equal to tokenize_sample, length limits, and clear errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from sage_fast.agent.samples import IGNORE_INDEX, sample_frames, tokenize_sample
from sage_fast.data.sft_records import write_records
from sage_fast.sft import dataset as dataset_module
from sage_fast.sft.dataset import PromptBuilder, SFTDataset
from sage_fast.video import open_video


def expected_item(material, record) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """What the agent's own code gives for the record (frames at the agent's size)."""
    sample = record.to_sample()
    reader = open_video(material.video)
    size = material.agent.resize.output_size(reader.metadata.height, reader.metadata.width)
    return tokenize_sample(material.vlm, sample, sample_frames(sample, reader, size))


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_items_equal_tokenize_sample_and_are_made_on_access(material, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    records = [*material.episode, material.hand]
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    calls = []
    real = dataset_module.tokenize_sample
    monkeypatch.setattr(dataset_module, "tokenize_sample", lambda *a: calls.append(1) or real(*a))
    dataset = SFTDataset(path, PromptBuilder(material.folder))
    assert len(dataset) == len(records) and calls == []  # nothing tokenized up front
    for i, record in enumerate(records):
        got = dataset[i]
        assert_same(got, expected_item(material, record))
        assert dataset.record(i) == record
    assert len(calls) == len(records)
    stage1 = dataset[0]
    assert "pixel_values_videos" in stage1 and (stage1["input_ids"] == material.vlm.video_token_id).sum() > 0
    response = stage1["input_ids"][stage1["labels"] != IGNORE_INDEX]
    assert material.vlm.tokenizer.decode(response) == records[0].response + "<|im_end|>"
    # the weightless prompt builder and a loaded model give the same items
    assert_same(SFTDataset(records, material.vlm)[0], stage1)


def test_relative_video_paths_resolve_under_video_root(material, tmp_path) -> None:  # noqa: ANN001
    shutil.copy(material.video, tmp_path / "clip.mp4")
    record = replace(material.episode[0], video_path="clip.mp4")
    with pytest.raises(ValueError, match=r"records\[0\] \(record ep0/stage1-0\): video clip.mp4 not found; set video_root"):
        SFTDataset([record], PromptBuilder(material.folder))
    dataset = SFTDataset([record], PromptBuilder(material.folder), video_root=tmp_path)
    assert_same(dataset[0], expected_item(material, material.episode[0]))


def test_long_records_are_skipped_or_lose_the_end_of_their_response(material) -> None:  # noqa: ANN001
    builder = PromptBuilder(material.folder)
    full = SFTDataset([material.hand], builder)[0]
    prompt = int((full["labels"] == IGNORE_INDEX).sum())
    length = full["input_ids"].numel()
    assert SFTDataset([material.hand], builder, max_length=length)[0] is not None  # exactly at the limit: kept

    skipping = SFTDataset([material.hand], builder, max_length=length - 1)
    assert skipping[0] is None and skipping.skipped == [material.hand.id]

    cutting = SFTDataset([material.hand], builder, max_length=prompt + 3, truncation="response")
    cut = cutting[0]
    assert cut["input_ids"].numel() == prompt + 3 and cutting.truncated == [material.hand.id]
    assert torch.equal(cut["input_ids"], full["input_ids"][:prompt + 3])  # the prompt whole, the response cut
    assert torch.equal(cut["labels"][prompt:], full["labels"][prompt:prompt + 3])
    assert int((cut["labels"] != IGNORE_INDEX).sum()) == 3

    # a prompt longer than the limit is never cut, even when responses may be
    never = SFTDataset([material.hand], builder, max_length=prompt - 1, truncation="response")
    assert never[0] is None and never.skipped == [material.hand.id]


def test_bad_record_files_name_the_line_and_the_fix(material, tmp_path) -> None:  # noqa: ANN001
    builder = PromptBuilder(material.folder)
    with pytest.raises(ValueError, match="no such SFT records file"):
        SFTDataset(tmp_path / "missing.jsonl", builder)
    line = json.dumps(material.hand.to_dict())

    torn = tmp_path / "torn.jsonl"
    torn.write_text(f"{line}\n\n{line}\n" + line[:40])  # a crash cut the last line short: skipped
    assert len(SFTDataset(torn, builder)) == 2

    broken = tmp_path / "broken.jsonl"
    broken.write_text(f"{line}\n{{not json\n{line}\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not a JSON record"):
        SFTDataset(broken, builder)

    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(line + "\n" + json.dumps({k: v for k, v in material.hand.to_dict().items() if k != "response"}) + "\n")
    with pytest.raises(ValueError, match=r"missing_field.jsonl:2: missing response"):
        SFTDataset(missing, builder)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no SFT records to train on"):
        SFTDataset(empty, builder)

    gone = tmp_path / "gone.jsonl"
    write_records(gone, [replace(material.episode[0], video_path=str(tmp_path / "nowhere.mp4"))])
    with pytest.raises(ValueError, match=r"gone.jsonl:1 \(record ep0/stage1-0\): video .*nowhere.mp4 not found"):
        SFTDataset(gone, builder)


def test_decode_failures_and_unsupported_models_say_which(material, tmp_path) -> None:  # noqa: ANN001
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"not a video")
    record = replace(material.episode[0], video_path=str(broken_video))
    dataset = SFTDataset([record], PromptBuilder(material.folder))
    with pytest.raises(RuntimeError, match=r"records\[0\] \(record ep0/stage1-0\): could not decode its 4 frames"):
        dataset[0]
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' cannot be fine-tuned as an orchestrator"):
        PromptBuilder(other)
    with pytest.raises(ValueError, match="not a model folder"):
        PromptBuilder(tmp_path)
