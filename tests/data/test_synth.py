"""Question synthesis with google-genai's real client against the local Gemini stub: re-asks, uploads, resume."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from sage_fast.data.synth import SynthConfig, find_videos, make_client, read_questions, synthesize_questions
from sage_fast.eval.datasets import load_items
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

KEY = "gm-synth-test-key"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("videos")
    first = make_indexed_video(folder / "cooking.mp4", IndexedVideoSpec(num_frames=60, fps=1.0))
    second = folder / "nested" / "match.mp4"
    second.parent.mkdir()
    shutil.copy(first, second)  # same content, another video as far as synthesis is concerned
    return [first, second]


def reply(n: int = 12, visual: int = 4, last_end: str = "00:00:58", tag: str = "") -> str:
    """A structured reply with ``n`` questions about a 60-second video."""
    questions = []
    for k in range(n):
        mcq = k % 3 == 0
        questions.append({
            "question": f"{tag}What appears on screen in part {k}?", "type": "mcq" if mcq else "open_ended",
            "options": ["a square", "a circle", "a number"] if mcq else None, "answer": "C" if mcq else f"number {k}",
            "difficulty": ["easy", "medium", "hard"][k % 3], "modality": "visual" if k < visual else "verbal",
            "requires_web_search": False, "why_web_search": None, "start_timestamp": "00:00:05",
            "end_timestamp": last_end if k == n - 1 else "00:00:30", "percent_video_parsed": 50})
    return json.dumps({"questions": questions})


def config(stub, out: Path, **changes) -> SynthConfig:  # noqa: ANN001
    values = dict(output=str(out), model="gemini-test", base_url=stub.url, retry_delay_s=0.01, file_poll_s=0.01,
                  concurrency=1)
    values.update(changes)
    return SynthConfig(**values)


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


def generate_bodies(stub) -> list[dict]:  # noqa: ANN001
    return [b for b, p in zip(stub.requests, stub.paths, strict=True) if p.split("?")[0].endswith(":generateContent")]


def test_a_set_that_breaks_the_rules_is_sent_back_with_its_problems(gemini_stub, videos, tmp_path, key) -> None:  # noqa: ANN001
    gemini_stub.replies = [reply(visual=2), reply(visual=5)]
    out = tmp_path / "questions.jsonl"
    questions = synthesize_questions([videos[0]], config(gemini_stub, out), progress=False)
    assert len(questions) == 12 and sum(q.modality == "visual" for q in questions) == 5
    first, second = generate_bodies(gemini_stub)
    assert gemini_stub.headers[0]["x-goog-api-key"] == KEY
    assert gemini_stub.paths[0].split("?")[0].endswith("/models/gemini-test:generateContent")
    video_part, prompt = first["contents"][0]["parts"]
    inline = video_part["inlineData"]
    assert inline.get("mimeType", inline.get("mime_type")) == "video/mp4"
    assert base64.urlsafe_b64decode(inline["data"]) == videos[0].read_bytes()  # small: inline, whole file
    assert "60 seconds (00:01:00)" in prompt["text"] and "At least 4 questions must be visual" in prompt["text"]
    generation = first["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    schema = generation["responseSchema"]["properties"]["questions"]["items"]
    assert schema["properties"]["type"]["enum"] == ["mcq", "open_ended"] and "end_timestamp" in schema["required"]
    assert "mediaResolution" not in generation  # a short video: the server's default
    roles = [c["role"] for c in second["contents"]]
    assert roles == ["user", "model", "user"]
    assert json.loads(second["contents"][1]["parts"][0]["text"]) == json.loads(reply(visual=2))
    reask = second["contents"][2]["parts"][0]["text"]
    assert "set: 2 visual question(s); at least 4" in reask and "Write the whole set again" in reask
    status = [json.loads(line) for line in config(gemini_stub, out).status_path.read_text().splitlines()]
    assert [(s["status"], s["attempts"], s["questions"], s["uploaded"]) for s in status] == [("ok", 2, 12, False)]
    items = load_items(out, preset=None)  # no field mapping
    assert [i.id for i in items] == [q.id for q in questions] and items[0].video_path == str(videos[0].resolve())
    assert items[-1].extra["percent_video_parsed"] == pytest.approx(96.67)
    assert items[0].ques_type == "mcq" and items[0].answer == "a number"


def test_a_large_video_goes_through_the_files_api_once(gemini_stub, videos, tmp_path, key) -> None:  # noqa: ANN001
    gemini_stub.file_processing_polls = 2
    gemini_stub.replies = [reply(n=5), reply()]
    out = tmp_path / "q.jsonl"
    questions = synthesize_questions([videos[0]], config(gemini_stub, out, inline_limit_mb=0.01), progress=False)
    assert len(questions) == 12
    (upload,) = gemini_stub.uploads  # one upload serves the first request and the re-ask
    assert upload["data"] == videos[0].read_bytes() and upload["mime_type"] == "video/mp4"
    assert upload["display_name"] == "cooking.mp4"
    assert gemini_stub.file_gets == [upload["name"]] * 3  # two PROCESSING reads, then ACTIVE
    bodies = generate_bodies(gemini_stub)
    assert len(bodies) == 2
    for body in bodies:
        data = body["contents"][0]["parts"][0]["fileData"]
        assert data.get("fileUri", data.get("file_uri")).endswith(upload["name"])
        assert "inlineData" not in json.dumps(body)
    assert gemini_stub.deleted == [upload["name"]]


def test_an_upload_gemini_cannot_process_is_a_failed_video(gemini_stub, videos, tmp_path, key) -> None:  # noqa: ANN001
    gemini_stub.file_final_state = "FAILED"
    out = tmp_path / "q.jsonl"
    assert synthesize_questions([videos[0]], config(gemini_stub, out, inline_limit_mb=0.01), progress=False) == []
    (status,) = [json.loads(line) for line in config(gemini_stub, out).status_path.read_text().splitlines()]
    assert status["status"] == "error" and "could not process the uploaded file (FAILED" in status["error"]
    assert generate_bodies(gemini_stub) == [] and gemini_stub.deleted == [gemini_stub.uploads[0]["name"]]


def test_a_set_that_never_meets_the_rules_keeps_its_best_valid_questions(gemini_stub, videos, tmp_path, key) -> None:  # noqa: ANN001
    gemini_stub.replies = [reply(n=6, last_end="00:00:30"), reply(n=8, last_end="00:00:30"), "not json at all"]
    out = tmp_path / "q.jsonl"
    questions = synthesize_questions([videos[0]], config(gemini_stub, out, max_retries=2), progress=False)
    assert len(questions) == 8 and len(generate_bodies(gemini_stub)) == 3
    (status,) = [json.loads(line) for line in config(gemini_stub, out).status_path.read_text().splitlines()]
    assert status["status"] == "rules_unmet" and status["attempts"] == 3
    assert any(p.startswith("set: only 8") for p in status["problems"])
    assert any(p.startswith("set: no question needs 90%") for p in status["problems"])
    before = len(gemini_stub.requests)  # a rules_unmet video is finished: not asked again
    assert len(synthesize_questions([videos[0]], config(gemini_stub, out), progress=False)) == 8
    assert len(gemini_stub.requests) == before


def test_resume_skips_finished_videos_and_repairs_a_crash(gemini_stub, videos, tmp_path, key) -> None:  # noqa: ANN001
    folder = videos[0].parent
    gemini_stub.replies = [reply(tag="A "), reply(tag="B ")]
    out = tmp_path / "q.jsonl"
    cfg = config(gemini_stub, out, concurrency=2)
    first = synthesize_questions([folder], cfg, progress=False)
    assert len(first) == 24 and {q.video_path for q in first} == {str(v.resolve()) for v in videos}
    assert len({q.id for q in first}) == 24
    requests = len(gemini_stub.requests)
    again = synthesize_questions([folder], cfg, client=make_client(cfg), progress=False)
    assert len(gemini_stub.requests) == requests  # no new request
    assert [q.to_record() for q in again] == [q.to_record() for q in first]
    # a crash after the second video's questions but before its status line, mid-way through a line
    lines = cfg.status_path.read_text().splitlines()
    second = json.loads(lines[1])["video_path"]
    cfg.status_path.write_text(lines[0] + "\n" + lines[1][:20])
    gemini_stub.replies = [reply(tag="C ")]
    redone = synthesize_questions([folder], cfg, progress=False)
    assert len(gemini_stub.requests) == requests + 1  # only the unfinished video is asked again
    assert len(redone) == 24 and len(read_questions(out)) == 24  # its old questions were removed first
    assert {q.question[:2] for q in redone if q.video_path == second} == {"C "}
    statuses = [json.loads(line) for line in cfg.status_path.read_text().splitlines()]
    assert [s["status"] for s in statuses] == ["ok", "ok"]


def test_bad_inputs_fail_before_any_request(gemini_stub, videos, tmp_path, key, monkeypatch) -> None:  # noqa: ANN001
    out = tmp_path / "q.jsonl"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(ValueError, match=r"notes.mp4: not a readable video .*pass video files"):
        synthesize_questions([videos[0], text], config(gemini_stub, out), progress=False)
    mkv = tmp_path / "clip.mkv"
    mkv.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"clip.mkv: Gemini does not take .mkv files.*ffmpeg"):
        synthesize_questions([mkv], config(gemini_stub, out), progress=False)
    with pytest.raises(ValueError, match="missing.mp4: no such video file or folder"):
        find_videos([tmp_path / "missing.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: holds no videos"):
        find_videos([tmp_path / "empty"])
    assert gemini_stub.requests == []
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        synthesize_questions([videos[0]], config(gemini_stub, out), progress=False)


def test_a_refused_key_stops_the_run_and_a_bad_video_does_not(gemini_stub, videos, tmp_path, key) -> None:  # noqa: ANN001
    out = tmp_path / "q.jsonl"
    gemini_stub.replies = [400, reply()]  # the first video's request is refused, the second goes on
    questions = synthesize_questions(videos, config(gemini_stub, out), progress=False)
    assert {q.video_path for q in questions} == {str(videos[1].resolve())}
    statuses = [json.loads(line) for line in config(gemini_stub, out).status_path.read_text().splitlines()]
    assert [s["status"] for s in statuses] == ["error", "ok"] and "400" in statuses[0]["error"]
    gemini_stub.replies = [401]
    with pytest.raises(RuntimeError, match="HTTP 401.*set a valid GEMINI_API_KEY"):
        synthesize_questions(videos, config(gemini_stub, out), progress=False)
    gemini_stub.replies = [reply()]  # the failed video is retried by the next run
    assert len(synthesize_questions(videos, config(gemini_stub, out), progress=False)) == 24


def test_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min"):
        SynthConfig(output=str(tmp_path / "q.jsonl"), min_questions=30)
    with pytest.raises(ValueError, match="media_resolution"):
        SynthConfig(output=str(tmp_path / "q.jsonl"), media_resolution="ultra")
    assert SynthConfig(output=str(tmp_path / "q.jsonl")).status_path == tmp_path / "q.videos.jsonl"
