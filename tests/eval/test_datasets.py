"""Benchmark records -> EvalItem: spellings, presets, formats, and errors that name the record and the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sage_fast.eval.datasets import items_from_records, load_items


@pytest.fixture
def root(tmp_path: Path) -> Path:
    videos = tmp_path / "videos"
    (videos / "mnv1").mkdir(parents=True)
    for name in ("a1.mp4", "b2.mkv", "c3.webm", "mnv1/mnv1.mp4", "clip.mp4"):
        (videos / name).write_bytes(b"\0")  # existence is all the loader checks
    return videos


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_common_spellings_from_jsonl(tmp_path: Path, root: Path) -> None:
    records = [
        {"qid": "x1", "query": "Who wins?", "ground_truth": "Red team", "video_id": "a1", "level": "easy",
         "modality": "visual", "duration": 42.5, "source": "yt"},
        {"id": "x2", "question": "Which colour?", "answer": "B", "video": "b2", "type": "multiple-choice",
         "choices": ["red", "blue"]},
        {"id": "x3", "question": "What is said?", "gt_answer": "hello", "video_path": "c3.webm",
         "question_type": "open-ended"},
    ]
    first, second, third = load_items(write_jsonl(tmp_path / "d.jsonl", records), video_root=root)
    assert (first.id, first.question, first.answer, first.video_path) == ("x1", "Who wins?", "Red team",
                                                                          str(root / "a1.mp4"))
    assert (first.ques_type, first.difficulty, first.modality, first.duration_seconds) == ("open_ended", "easy",
                                                                                           "visual", 42.5)
    assert first.extra == {"source": "yt"} and first.prompt == "Who wins?"
    assert second.ques_type == "mcq" and second.options == ["red", "blue"] and second.video_path == str(root / "b2.mkv")
    assert second.prompt.startswith("Which colour?\n") and second.prompt.endswith("\n(A) red\n(B) blue")
    assert third.ques_type == "open_ended" and third.video_path == str(root / "c3.webm")


def test_sage_bench_preset(tmp_path: Path, root: Path) -> None:
    question = "What happens?\n Answer the question based on the following options: \n (A) x\n (B) y"
    records = [{"video_id": "a1", "question": question, "gt_answer": "y", "ques_type": "mcq", "difficulty": "very hard",
                "modality": "both"},
               {"video_id": "b2", "question": "Why?", "gt_answer": "because", "ques_type": "open-ended",
                "difficulty": "easy", "modality": "verbal"}]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(records))
    mcq, open_ended = load_items(path, video_root=root, preset="sage-bench")
    assert mcq.id == hashlib.md5(f"{question}|a1".encode()).hexdigest()  # stable without an id column
    assert mcq.prompt == question and mcq.options is None and mcq.answer == "y" and mcq.ques_type == "mcq"
    assert open_ended.ques_type == "open_ended" and open_ended.difficulty == "easy" and open_ended.modality == "verbal"


def test_minerva_preset(tmp_path: Path, root: Path) -> None:
    record = {"key": "k-7", "video_id": "mnv1", "question": "How many laps?", "answer": "three",
              "answer_id": 2, "question_type": "Counting, Temporal", "category": "Sports", "split": "test",
              **{f"answer_choice_{k}": text for k, text in enumerate(["one", "two", "three", "four", "five"])}}
    (item,) = load_items(write_jsonl(tmp_path / "minerva.json", [record]), video_root=root, preset="minerva")
    assert item.id == "k-7" and item.ques_type == "mcq" and item.answer == "three"
    assert item.options == ["one", "two", "three", "four", "five"]
    assert item.video_path == str(root / "mnv1" / "mnv1.mp4")  # the reference layout <id>/<id>.mp4
    assert item.extra["question_type"] == "Counting, Temporal" and item.extra["category"] == "Sports"
    assert item.extra["answer_index"] == 2 and "(C) three" in item.prompt
    del record["answer"]  # only the index: the answer is that option's text
    (item,) = items_from_records([record], video_root=root, preset="minerva")
    assert item.answer == "three"


def test_field_overrides_and_paths_next_to_the_data(tmp_path: Path, root: Path) -> None:
    records = [{"uid": "u", "q_text": "Why?", "answer": "so", "video": "videos/clip.mp4"}]
    (item,) = load_items(write_jsonl(tmp_path / "d.jsonl", records), fields={"question": "q_text"})
    assert item.question == "Why?" and item.video_path == str(tmp_path / "videos" / "clip.mp4")
    with pytest.raises(ValueError, match="'prompt_text' is not an item field"):
        items_from_records(records, fields={"prompt_text": "q_text"})


def test_missing_field_names_the_record_and_the_fix(root: Path) -> None:
    records = [{"id": "ok", "question": "q", "answer": "a", "video": "a1"}, {"id": "bad", "answer": "a", "video": "a1"}]
    with pytest.raises(ValueError) as error:
        items_from_records(records, video_root=root)
    assert "record 1 (id 'bad')" in str(error.value) and "no question field" in str(error.value)
    assert "--field question=KEY" in str(error.value)


def test_missing_video_names_the_record_and_the_fix(root: Path) -> None:
    with pytest.raises(ValueError) as error:
        items_from_records([{"id": "v9", "question": "q", "answer": "a", "video_id": "nowhere"}], video_root=root)
    assert "record 0 (id 'v9')" in str(error.value) and "'nowhere' not found" in str(error.value)
    assert "--video-root" in str(error.value)


def test_duplicate_ids_are_refused(root: Path) -> None:
    record = {"id": "same", "question": "q", "answer": "a", "video": "a1"}
    with pytest.raises(ValueError, match="record 2: id 'same' repeats record 0's"):
        items_from_records([record, {**record, "id": "other"}, record], video_root=root)


def test_bad_inputs(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "question": "q", "answer": "a", "video": "a1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2"):
        load_items(path, video_root=root)
    with pytest.raises(ValueError, match="no such data file"):
        load_items(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="preset 'mvbench'"):
        items_from_records([], preset="mvbench")
    with pytest.raises(ValueError, match="not an index into its 2 options"):
        items_from_records([{"id": 1, "question": "q", "video": "a1", "options": ["x", "y"], "answer_id": 5}],
                           video_root=root)


def test_limit(root: Path) -> None:
    records = [{"id": k, "question": "q", "answer": "a", "video": "a1"} for k in range(5)]
    assert [i.id for i in items_from_records(records, video_root=root, limit=2)] == ["0", "1"]


def test_parquet(tmp_path: Path, root: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.Table.from_pylist([{"id": "p1", "question": "q", "answer": "a", "video_id": "a1",
                                   "options": ["x", "y"]}])
    pq.write_table(table, tmp_path / "d.parquet")
    (item,) = load_items(tmp_path / "d.parquet", video_root=root)
    assert item.id == "p1" and item.options == ["x", "y"] and item.ques_type == "mcq"


def test_datasets_folder(tmp_path: Path, root: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records = [{"id": "h1", "question": "q", "gt_answer": "a", "video_id": "a1", "ques_type": "open-ended"}]
    import pyarrow as pa

    # a fixed fingerprint: no hashing of the table, which some dill / pyarrow pairs cannot pickle
    dataset = datasets.Dataset(pa.Table.from_pylist(records), fingerprint="eval-test")
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(tmp_path / "hf"))
    (item,) = load_items(tmp_path / "hf", video_root=root, preset="sage-bench")
    assert item.id == "h1" and item.answer == "a" and item.ques_type == "open_ended"
