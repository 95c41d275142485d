"""``sage-fast eval`` end to end through ``main``: tiny orchestrator offline, a server orchestrator, ``--report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.cli.main import main
from sage_fast.eval.runner import read_rows


def write_data(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_eval_with_the_tiny_orchestrator(tiny_cache: Path, video_root: Path, openai_stub, tmp_path: Path,  # noqa: ANN001
                                         capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_FAST_CACHE", str(tiny_cache))
    data = write_data(tmp_path / "bench.jsonl", [
        {"id": "a", "question": "What number?", "gt_answer": "7", "video_id": "vid0", "ques_type": "open-ended",
         "difficulty": "easy", "modality": "visual"},
        {"id": "b", "question": "Which colour?", "answer": "A", "video_id": "vid1", "options": ["red", "blue"]}])
    out = tmp_path / "results.jsonl"
    openai_stub.reply = "Reasoning: r\nVerdict: True"
    argv = ["eval", str(data), "--video-root", str(video_root), "--orchestrator", "tiny", "--num-frames", "4",
            "--max-steps", "1", "--max-tokens", "12", "--judge", openai_stub.url, "--judge-model", "judge",
            "--out", str(out), "--concurrency", "2", "--work-dir", str(tmp_path / "w")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = {r["id"]: r for r in read_rows(out)}
    assert set(rows) == {"a", "b"} and rows["b"]["ques_type"] == "mcq" and rows["a"]["duration"] > 9
    correct = sum(r["is_correct"] for r in rows.values())
    assert f"Accuracy {50.0 * correct:5.1f}%  ({correct}/2)" in captured.out
    assert "0-60s" in captured.out and "60-180s" in captured.out and "meaningless" in captured.err
    assert f"eval: 2/2 items, acc {50.0 * correct:.1f}% ({correct}/2)" in captured.err  # progress in a log
    assert (tmp_path / "results.trajectories.jsonl").is_file()
    assert main(argv) == 0  # resumed: nothing left to run
    assert len(read_rows(out)) == 2


def test_eval_against_servers_and_report(video_root: Path, openai_stub, scripted, tmp_path: Path,  # noqa: ANN001
                                         capsys) -> None:
    openai_stub.reply = scripted
    records = [{"id": f"q{k}", "question": f"What does item {k} show?", "answer": f"answer {k}" if k != 1 else "no",
                "video": "vid0.mp4", "difficulty": "hard"} for k in range(4)]
    data = write_data(tmp_path / "bench.jsonl", records)
    out = tmp_path / "results.jsonl"
    cache = tmp_path / "verdicts"
    assert main(["eval", str(data), "--video-root", str(video_root), "--orchestrator", f"openai:{openai_stub.url}",
                 "--model", "sage-mm", "--num-frames", "4", "--judge", openai_stub.url, "--judge-model", "judge",
                 "--judge-cache", str(cache), "--out", str(out), "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy  66.7%  (2/3)" in printed and "hard" in printed
    assert len(read_rows(out)) == 3 and len(list(cache.rglob("*.json"))) == 3
    assert main(["eval", "--report", str(out)]) == 0
    report = capsys.readouterr().out
    assert report.strip() == printed.strip()
    assert "direct" in report and "(2/3)" in report


def test_eval_errors_are_one_line(video_root: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    data = write_data(tmp_path / "bench.jsonl", [{"id": "x", "question": "q", "answer": "a", "video_id": "nope"}])
    assert main(["eval", str(data), "--out", str(tmp_path / "r.jsonl"), "--orchestrator", "tiny"]) == 1
    assert "--judge URL" in capsys.readouterr().err
    assert main(["eval", str(data), "--video-root", str(video_root), "--out", str(tmp_path / "r.jsonl"),
                 "--judge", "http://127.0.0.1:9/v1", "--orchestrator", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "record 0 (id 'x')" in err and "--video-root" in err and "Traceback" not in err
    assert main(["eval", "--report", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such results file" in capsys.readouterr().err
    assert main(["eval"]) == 1
    assert "--report" in capsys.readouterr().err
    assert main(["eval", str(data), "--field", "question", "--out", "r", "--judge", "http://x/v1"]) == 1
    assert "NAME=KEY" in capsys.readouterr().err


def test_report_of_a_reference_results_file(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rows = [{"index": k, "question": "q", "answer": "x", "correct_answer": None, "full_answer": "x",
             "is_correct": k < 3, "evaluation_reasoning": "r", "none_prediction": False, "could_not_produce": False,
             "is_list_answer": False, "used_tool_calls": k == 0, "tool_call_types": {"verbal_transcript": 1} if k == 0
             else {}, "ques_type": "mcq", "difficulty": "medium", "modality": "both", "duration": 100 * k + 30,
             "video_path": "v.mp4"} for k in range(4)]
    path = tmp_path / "sage_bench_results.json"
    path.write_text(json.dumps(rows, indent=2))
    assert main(["eval", "--report", str(path)]) == 0
    report = capsys.readouterr().out
    assert "Accuracy  75.0%  (3/4)" in report and "mean tool calls 0.25" in report
    assert "0-60s" in report and "300-600s" in report and "verbal_transcript 1" in report
