"""`sage-fast synth questions|trajectories` end to end: real clients on local stubs, resumed runs, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.cli.main import main
from sage_fast.data.sft_records import read_records
from sage_fast.eval.datasets import load_items
from sage_fast.testing import OpenAIStub
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

from .test_synth import KEY, reply
from .test_trajectories import scripted_orchestrator, strict_judge


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    make_indexed_video(folder / "one.mp4", IndexedVideoSpec(num_frames=60, fps=1.0))
    make_indexed_video(folder / "two.mp4", IndexedVideoSpec(num_frames=60, fps=1.0, gop=10))
    (folder / "notes.txt").write_text("not a video: folders only yield video files")
    return folder


@pytest.fixture
def gemini_env(gemini_stub, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini_stub.url)
    return gemini_stub


def test_questions_then_trajectories_then_resume(gemini_env, openai_stub, folder, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "questions.jsonl"
    gemini_env.replies = [reply(visual=1), reply(), reply()]
    args = ["synth", "questions", str(folder), "--out", str(out), "--model", "gemini-test", "--concurrency", "1"]
    assert main(args) == 0
    assert len(gemini_env.requests) == 3  # the first video was asked twice (one visual question)
    assert "rules unmet" not in capsys.readouterr().err
    items = load_items(out)
    assert len(items) == 24 and {Path(i.video_path).name for i in items} == {"one.mp4", "two.mp4"}
    assert main(args) == 0 and len(gemini_env.requests) == 3  # resumed: nothing to ask
    assert "2 video(s), 2 already done" in capsys.readouterr().err

    # keep three questions so the episodes stay few: one the orchestrator gets right, two it does not
    records = [json.loads(line) for line in out.read_text().splitlines()]
    chosen = [dict(records[1], answer="12"), dict(records[2], answer="99"), dict(records[4], answer="12")]
    chosen[2]["question"] = "direct: " + chosen[2]["question"]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    openai_stub.reply = scripted_orchestrator(Path(chosen[0]["video_path"]))
    judge = OpenAIStub()
    judge.reply = strict_judge
    try:
        sft = tmp_path / "sft.jsonl"
        args = ["synth", "trajectories", str(subset), "--orchestrator", f"openai:{openai_stub.url}", "--model", "strong",
                "--judge", judge.url, "--judge-model", "judge-test", "--out", str(sft), "--num-frames", "8",
                "--max-steps", "2", "--work-dir", str(tmp_path / "work"), "--concurrency", "2"]
        assert main(args) == 0
        err = capsys.readouterr().err
        assert "3 episode(s) run, 2/3 judged correct, 3 record(s) written" in err
        assert sorted(r.id for r in read_records(sft)) == sorted(
            [f"{chosen[0]['id']}/stage1-0", f"{chosen[0]['id']}/stage2-1", f"{chosen[2]['id']}/stage1-0"])
        assert len((tmp_path / "sft.trajectories.jsonl").read_text().splitlines()) == 3
        calls = (len(openai_stub.requests), len(judge.requests))
        assert main(args) == 0
        assert (len(openai_stub.requests), len(judge.requests)) == calls
        assert "0 episode(s) run" in capsys.readouterr().err
    finally:
        judge.close()


def test_clear_errors(gemini_env, folder, tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    out = str(tmp_path / "q.jsonl")
    assert main(["synth", "questions", str(tmp_path / "missing.mp4"), "--out", out]) == 1
    assert "missing.mp4: no such video file or folder" in capsys.readouterr().err
    assert main(["synth", "questions", str(folder / "notes.txt"), "--out", out]) == 1
    assert "notes.txt: Gemini does not take .txt files" in capsys.readouterr().err
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 64)
    assert main(["synth", "questions", str(fake), "--out", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sage-fast synth: error: ") and "fake.mp4: not a readable video" in err
    assert main(["synth", "questions", str(folder), "--out", out, "--min-questions", "30"]) == 1
    assert "min (30) <= max (20)" in capsys.readouterr().err
    assert main(["synth", "trajectories", out, "--orchestrator", "tiny", "--out", str(tmp_path / "r.jsonl")]) == 1
    assert "--judge URL" in capsys.readouterr().err
    assert gemini_env.requests == []
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    assert main(["synth", "questions", str(folder), "--out", out]) == 1
    assert "set GEMINI_API_KEY" in capsys.readouterr().err
    assert main(["synth"]) == 2
