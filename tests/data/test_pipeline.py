"""The whole training pipeline through the CLI, offline: each stage's output is the next one's input.

synth questions (Gemini, on its stub) -> synth trajectories (a scripted strong orchestrator on the
OpenAI stub, judged) -> sft (tiny Qwen-VL) -> rl (from the SFT model, judged) -> eval (the RL
checkpoint as the orchestrator). Each stage is tested in depth on its own; this test is about the
seams: file formats, model folders that load back, and the questions file serving synth, rl and eval.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.cli.main import main
from sage_fast.data.sft_records import read_records
from sage_fast.eval.runner import read_rows
from sage_fast.testing import OpenAIStub
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

from .test_synth import KEY, reply
from .test_trajectories import scripted_orchestrator, strict_judge


@pytest.mark.filterwarnings("ignore:.*tiny random-weight model")
def test_synth_sft_rl_eval(gemini_stub, openai_stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                           capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("SAGE_FAST_FORCE_IMPL", "reference")  # packed attention's fast CPU path
    monkeypatch.setenv("SAGE_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini_stub.url)
    video = make_indexed_video(tmp_path / "clips" / "match.mp4", IndexedVideoSpec(num_frames=60, fps=1.0))

    questions = tmp_path / "questions.jsonl"
    gemini_stub.replies = [reply()]
    assert main(["synth", "questions", str(video), "--out", str(questions), "--model", "gemini-test"]) == 0
    picked = [dict(json.loads(line), answer="12") for line in questions.read_text().splitlines()[:2]]
    questions.write_text("".join(json.dumps(r) + "\n" for r in picked))

    judge = OpenAIStub()
    judge.reply = strict_judge
    try:
        records = tmp_path / "sft.jsonl"
        openai_stub.reply = scripted_orchestrator(video)
        assert main(["synth", "trajectories", str(questions), "--orchestrator", f"openai:{openai_stub.url}",
                     "--model", "strong", "--judge", judge.url, "--judge-model", "judge", "--out", str(records),
                     "--num-frames", "4", "--max-steps", "2", "--work-dir", str(tmp_path / "work")]) == 0
        assert len(list(read_records(records))) >= 2

        sft = tmp_path / "sft"
        assert main(["sft", str(records), "--model", "tiny", "--out", str(sft), "--device", "cpu", "--batch-size", "2",
                     "--max-steps", "2", "--num-workers", "0"]) == 0
        assert (sft / "final" / "config.json").is_file()

        rl = tmp_path / "rl"
        assert main(["rl", str(questions), "--model", str(sft / "final"), "--judge", judge.url, "--judge-model", "judge",
                     "--out", str(rl), "--steps", "1", "--group-size", "2", "--prompts-per-step", "2",
                     "--num-frames", "4", "--max-new-tokens", "8"]) == 0
        checkpoint = rl / "checkpoint-1"
        assert (checkpoint / "trainer_state.json").is_file()

        results = tmp_path / "results.jsonl"
        assert main(["eval", str(questions), "--orchestrator", str(checkpoint), "--judge", judge.url,
                     "--judge-model", "judge", "--out", str(results), "--num-frames", "4", "--max-steps", "1",
                     "--max-tokens", "8", "--work-dir", str(tmp_path / "work-eval")]) == 0
    finally:
        judge.close()
    rows = read_rows(results)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in picked)
    assert all(r["error"] is None for r in rows)
    assert "Accuracy" in capsys.readouterr().out
