"""The SAGE loop end to end: real video, real tools, the real openai client against a local stub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.agent.loop import NO_TOOL_NOTE, Agent, AgentConfig
from sage_fast.agent.trajectory import COULD_NOT_PRODUCE, read_jsonl, write_jsonl
from sage_fast.models.openai_compatible import OpenAICompatible
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "episode.mp4",
                              IndexedVideoSpec(num_frames=400, fps=1.0, gop=30, bframes=2))


def reply(data: dict) -> str:
    return f"Let me think.\n<json>{json.dumps(data)}</json>"


def stage1(answer: str | None, calls: list[dict]) -> str:
    return reply({"video_context": "A test pattern with a counter.", "query_intent": "read the counter",
                  "final_answer": answer, "recommended_tools": {"needed": bool(calls), "why_no_tool": "",
                                                                "tool_calls": calls}})


def stage2(verdict: bool, answer: str | None, calls: list[dict]) -> str:
    return reply({"answerable": {"verdict": verdict, "reasoning": "..."}, "final_answer": answer,
                  "recommended_tools": {"needed": bool(calls), "why_no_tool": "", "tool_calls": calls}})


def extract(video: Path, start: str = "00:01:00", end: str = "00:02:00") -> dict:
    return {"rationale": "look closer", "name": "extract_parts_from_timestamp",
            "arguments": {"video_path": str(video), "timestamp_start": start, "timestamp_end": end}}


def make_agent(stub, tmp_path: Path, **config) -> Agent:  # noqa: ANN001
    orchestrator = OpenAICompatible(stub.url, "sage-mm-stub", api_key="sk-secret-test-key", max_retries=0)
    return Agent(orchestrator, config=AgentConfig(work_dir=str(tmp_path / "work"), **config))


def test_direct_answer_ends_after_stage1(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = [stage1("42", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "What number is shown?")
    assert trajectory.answer == "42" and trajectory.answer_stage == "stage1" and len(trajectory.turns) == 1
    (request,) = openai_stub.requests
    parts = request["messages"][1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 128 and images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    text = parts[-1]["text"]
    assert f"Video Path: {video} of duration 00:06:40." in text and "What number is shown?" in text
    assert "<tools>" in request["messages"][0]["content"] and "extract_parts_from_timestamp" in request["messages"][0]["content"]
    assert trajectory.cost.frames_decoded == 128 and trajectory.cost.visual_tokens > 128 * 100


def test_tools_then_note_then_answer(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = [stage1(None, [extract(video)]), stage2(False, None, []),
                           stage2(False, None, [extract(video, "00:03:00", "00:03:30")]), stage2(True, "61", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "Which frame follows 60?")
    assert trajectory.answer == "61" and trajectory.answer_stage == "stage2"
    assert [t.stage for t in trajectory.turns] == ["stage1", "stage2", "stage2", "stage2"]
    first, second = trajectory.tool_calls
    assert first.valid and not first.error and first.result.startswith("Extracted 10 frames of 00:01:00.000")
    assert second.validated_arguments["timestamp_start"] == "00:03:00"
    # Stage-2 prompts are text only and carry the keyed results, the note and the previous call.
    last_user = openai_stub.requests[-1]["messages"][1]["content"]
    assert isinstance(last_user, str)
    assert "extract_parts_from_timestamp_#1: Extracted" in last_user
    assert "extract_parts_from_timestamp_#2: Extracted" in last_user and f"note_#1: {NO_TOOL_NOTE}" in last_user
    assert '"timestamp_start": "00:03:00"' in last_user.split("Previous call:")[1].splitlines()[0]
    assert all(t.keys_exact and not t.repaired for t in trajectory.turns)


def test_bad_calls_become_results_and_repeats_are_counted(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bad_path = extract(video)
    bad_path["arguments"]["video_path"] = "/etc/passwd"
    too_long = extract(video, "00:00:00", "00:06:00")
    openai_stub.replies = [stage1(None, [bad_path]), stage2(False, None, [too_long]),
                           stage2(False, None, [{"name": "no_such_tool", "arguments": {}}]),
                           stage2(False, None, [extract(video)]), stage2(False, None, [extract(video)]),
                           stage2(True, "done", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "q")
    calls = trajectory.tool_calls
    assert "not this episode's video" in calls[0].result and not calls[0].valid
    assert "limit" in calls[1].result and not calls[1].valid
    assert calls[2].result.startswith("Unknown tool 'no_such_tool'")
    assert [c.repeat for c in calls[3:]] == [0, 1]
    assert trajectory.answer == "done"


def test_step_cap_gives_the_fixed_answer(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = [stage1(None, [])] + [stage2(False, None, [])] * 3
    trajectory = make_agent(openai_stub, tmp_path, max_stage2_steps=3).run(video, "q")
    assert trajectory.answer == COULD_NOT_PRODUCE and trajectory.could_not_produce
    assert len(trajectory.turns) == 4 and not openai_stub.replies


def test_malformed_output_is_recorded_and_the_key_never_leaks(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = ["I refuse to use JSON.", stage2(True, "7", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "q")
    assert trajectory.turns[0].parsed is None and trajectory.turns[0].parse_error
    assert trajectory.answer == "7"
    assert openai_stub.headers[0]["authorization"] == "Bearer sk-secret-test-key"
    path = tmp_path / "traj.jsonl"
    write_jsonl(path, [trajectory])
    assert "sk-secret-test-key" not in path.read_text()
    assert next(read_jsonl(path)).answer == "7"


def test_ask_command_against_a_server(openai_stub, video: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from sage_fast.cli.main import main

    openai_stub.replies = [stage1(None, [extract(video)]), stage2(True, "61", [])]
    out = tmp_path / "traj.jsonl"
    code = main(["ask", str(video), "Which frame follows 60?", "--orchestrator", f"openai:{openai_stub.url}",
                 "--model", "sage-mm-stub", "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == "61"
    assert "extract_parts_from_timestamp" in captured.err and "[Stage-2 step 1]" in captured.err
    assert next(read_jsonl(out)).answer == "61"
    assert main(["ask", str(video), "q", "--orchestrator", "nonsense"]) == 1
    assert "give openai:URL, gemini:MODEL, a Hugging Face id" in capsys.readouterr().err


def test_ask_tiny_runs_offline_end_to_end(video: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    from sage_fast.cli.main import main

    monkeypatch.setenv("SAGE_FAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "t.jsonl"
    assert main(["ask", str(video), "q", "--orchestrator", "tiny", "--num-frames", "8", "--max-steps", "1",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "meaningless" in err and "[Stage-1]" in err
    assert (tmp_path / "cache" / "tiny-qwen2_5_vl" / "config.json").is_file()
    trajectory = next(read_jsonl(out))
    assert trajectory.turns[0].frames == 8 and trajectory.turns[0].tokens_in > 8 * 128


def test_top_level_agent_import() -> None:
    import sage_fast

    assert sage_fast.Agent is Agent and sage_fast.AgentConfig is AgentConfig


def test_view_writes_a_self_contained_escaped_page(openai_stub, video: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from sage_fast.cli.main import main

    openai_stub.replies = [stage1(None, [extract(video, "00:02:00", "00:03:00")]),
                           stage2(True, "<script>alert(1)</script>", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "Is <b>this</b> escaped?")
    traj = tmp_path / "t.jsonl"
    write_jsonl(traj, [trajectory])
    assert main(["view", str(traj), "--html", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    assert page.count("class='thumb'") == 64 and page.count("data:image/jpeg;base64,") == 64
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;this&lt;/b&gt;" in page
    assert "class='window' style='left:30.000%;width:15.000%'" in page  # 2:00-3:00 of 6:40
    assert "http" not in page.replace(openai_stub.url, "")  # nothing loaded from anywhere
    assert main(["view", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_grounding_through_the_loop_uses_the_shared_model(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    ground = {"rationale": "when", "name": "identify_timestamps_visually",
              "arguments": {"video_path": str(video), "event": "counter at 100", "timestamp_start": "00:01:00",
                            "timestamp_end": "00:03:00"}}
    openai_stub.replies = [stage1(None, [ground]), '{"start": 40, "end": 41}', stage2(True, "00:01:40", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "When does the counter show 100?")
    (call,) = trajectory.tool_calls
    assert call.result.startswith("The event 'counter at 100' happens from 00:01:40 to 00:01:41")
    assert trajectory.answer == "00:01:40" and len(openai_stub.requests) == 3


def test_ask_wires_speech_and_search_tools(openai_stub, video: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from sage_fast.cli.main import main

    speech = {"rationale": "listen", "name": "verbal_transcript",
              "arguments": {"video_path": str(video), "timestamp_start": "00:00:00", "timestamp_end": "00:01:00"}}
    openai_stub.replies = [stage1(None, [speech]), stage2(True, "silence", [])]
    assert main(["ask", str(video), "What is said?", "--orchestrator", f"openai:{openai_stub.url}", "--model", "m",
                 "--asr", f"openai:{openai_stub.url}", "--search", "ddgs", "--work-dir", str(tmp_path / "w"),
                 "--out", str(tmp_path / "t.jsonl")]) == 0
    system = openai_stub.requests[0]["messages"][0]["content"]
    for name in ("verbal_transcript", "unified_web_search", "parse_web_data", "identify_timestamps_visually"):
        assert f'"name": "{name}"' in system
    (call,) = next(read_jsonl(tmp_path / "t.jsonl")).tool_calls
    assert call.result == "The video has no audio track, so there is no speech to transcribe."
    capsys.readouterr()
    assert main(["ask", str(video), "q", "--orchestrator", f"openai:{openai_stub.url}", "--model", "m",
                 "--asr", "bogus"]) == 1
    assert "--asr 'bogus'" in capsys.readouterr().err


def test_run_many_keeps_order_and_isolates_failures(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    import asyncio

    openai_stub.replies = [stage1("a", []), stage1("a", []), stage1("b", [])]
    agent = make_agent(openai_stub, tmp_path)
    results = agent.run_many([(video, "q1"), {"video": tmp_path / "missing.mp4", "question": "q2"},
                              {"video": video, "question": "q3", "metadata": {"id": 3}}], concurrency=1, progress=False)
    assert [r.question for r in results] == ["q1", "q2", "q3"]
    assert results[0].answer == "a" and results[2].metadata == {"id": 3}
    assert results[1].error.startswith("VideoNotFoundError") and results[1].answer is None
    assert asyncio.run(agent.arun(video, "q4")).answer == "b"


def test_scripted_sage_episode_extract_analyze_answer(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Stage-1 asks for frames of a window, Stage-2 has the tool model analyze the extracted
    frames, then answers: the real tools run on the real video between the scripted turns."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from sage_fast.video.synth import read_frame_index

    work = tmp_path / "work"

    def analyze_the_extracted_frames(body: dict) -> float:
        if openai_stub.replies and openai_stub.replies[0] == "ANALYZE":
            frames = sorted(str(p) for p in work.rglob("frame_*.jpg"))
            call = {"rationale": "read them", "name": "perform_reasoning",
                    "arguments": {"query": "Which frame numbers are shown?", "media_paths": frames}}
            openai_stub.replies[0] = stage2(False, None, [call])
        return 0.0

    openai_stub.latency_s = analyze_the_extracted_frames
    openai_stub.replies = [stage1(None, [extract(video, "00:03:00", "00:03:10")]), "ANALYZE",
                           "Frames 180 to 189.", stage2(True, "180-189", [])]
    trajectory = make_agent(openai_stub, tmp_path).run(video, "Which frames are shown at minute 3?")
    assert trajectory.answer == "180-189" and [t.stage for t in trajectory.turns] == ["stage1", "stage2", "stage2"]
    extract_call, analyze_call = trajectory.tool_calls
    assert extract_call.name == "extract_parts_from_timestamp" and not extract_call.error
    assert analyze_call.name == "perform_reasoning" and analyze_call.result == "Frames 180 to 189."
    # the tool model saw exactly the extracted frames, which are the frames at their named times
    images = [p["image_url"]["url"] for m in openai_stub.requests[2]["messages"] if isinstance(m["content"], list)
              for p in m["content"] if p["type"] == "image_url"]
    shown = [read_frame_index(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")))
             for url in images]
    assert len(shown) == 10 and shown == sorted(shown) and shown[0] >= 180 and shown[-1] < 190
    # the last Stage-2 prompt carries both results, keyed toolname_#k
    final_prompt = json.dumps(openai_stub.requests[3]["messages"])
    assert "extract_parts_from_timestamp" in final_prompt and "Frames 180 to 189." in final_prompt


def test_skim_frames_are_keyframes_labelled_with_their_times(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from sage_fast.video import open_video

    openai_stub.replies = [stage1("x", [])]
    trajectory = make_agent(openai_stub, tmp_path, num_frames=8, frame_mode="skim").run(video, "q")
    labels = [p["text"] for p in openai_stub.requests[0]["messages"][1]["content"]
              if p["type"] == "text" and p["text"].startswith("Frame at")]
    from sage_fast.video.timecode import format_timestamp

    keyframes = {format_timestamp(t, millis=True) for t in open_video(video).metadata.keyframe_seconds}
    assert len(labels) == 8 and trajectory.cost.frames_decoded == 8
    assert {label.removeprefix("Frame at ").rstrip(":") for label in labels} <= keyframes
    with pytest.raises(ValueError, match="frame_mode"):
        AgentConfig(frame_mode="fast")


def test_ask_prune_option_is_parsed_and_checked() -> None:
    from sage_fast.cli.ask import parse_pruning
    from sage_fast.models.token_pruning import TokenPruningConfig

    assert parse_pruning("keep_ratio=0.5") == TokenPruningConfig(keep_ratio=0.5)
    assert parse_pruning("threshold=0.9") == TokenPruningConfig(threshold=0.9)
    assert parse_pruning(None) is None
    for bad in ("keep=2", "keep_ratio=1.5", "threshold"):
        with pytest.raises(ValueError, match="--prune"):
            parse_pruning(bad)
