"""Fuzz: 10 000 generated malformed model outputs go through parsing and the tool registry
without a single exception escaping; every bad call becomes an error result the model can read,
and no call reaches outside the episode (paths, private addresses, other schemes)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from sage_fast.agent.loop import Agent, AgentConfig
from sage_fast.agent.parsing import parse_output
from sage_fast.tools.context import ToolContext
from sage_fast.tools.registry import Tool, ToolRegistry
from sage_fast.tools.video_tools import extract_parts_from_timestamp
from sage_fast.tools.web_tools import WebConfig, WebTools
from sage_fast.video.synth import IndexedVideoSpec, make_indexed_video

N_OUTPUTS = 10_000
HOSTILE_PATHS = ["/etc/passwd", "../../etc/shadow", "~/.ssh/id_rsa", "/proc/self/environ", "", ".", "/",
                 "C:\\Windows\\system32", "video.mp4\x00.txt", "a" * 5000, "file:///etc/passwd"]
HOSTILE_URLS = ["http://127.0.0.1:22/", "http://localhost/admin", "http://169.254.169.254/latest/meta-data/",
                "http://[::1]/", "http://10.0.0.1/", "http://192.168.1.1/", "file:///etc/passwd",
                "gopher://127.0.0.1:25/", "ftp://example.com/", "http://0.0.0.0/", "http://2130706433/",
                "javascript:alert(1)", "http://user:pass@127.0.0.1/", "//127.0.0.1/", "http://[fd00::1]/"]
HUGE = ["x" * 20_000, 10**400, -1e308, float("nan"), [[[[[[]]]]]] * 1000, {"a": {"b": {"c": [None] * 5000}}}]


def garbage(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 3.5, "", "00:99:99", "-00:00:05", "99:00:00", [], {}, [1, "a"],
                       {"x": 1}, "\u202e\u0000\ud7ff", rng.choice(HOSTILE_PATHS), rng.choice(HOSTILE_URLS),
                       rng.choice(HUGE)])


def tool_call(rng: random.Random, video: str) -> Any:
    if rng.random() < 0.1:  # a well-formed call now and then, so valid calls really run
        return {"rationale": "look", "name": "extract_parts_from_timestamp",
                "arguments": {"video_path": video, "timestamp_start": f"00:00:0{rng.randrange(5)}",
                              "timestamp_end": f"00:00:{rng.randrange(5, 12):02d}",
                              "extract_type": rng.choice(["frames", "frames", "subclips"])}}
    name = rng.choice(["extract_parts_from_timestamp", "parse_web_data", "unified_web_search",
                       "identify_timestamps_visually", "rm_rf", "", None, 7, "__import__"])
    arguments: dict[str, Any] = {
        "video_path": rng.choice([video, *HOSTILE_PATHS]),
        "timestamp_start": rng.choice(["00:00:01", "00:00:02", "1", "00:00:00.5", garbage(rng)]),
        "timestamp_end": rng.choice(["00:00:03", "00:10:00", "0", garbage(rng)]),
        "website_url": rng.choice(HOSTILE_URLS),
        "extract_type": rng.choice(["frames", "subclips", "everything", garbage(rng)]),
        "query": garbage(rng),
    }
    for key in rng.sample(list(arguments), rng.randrange(len(arguments) + 1)):
        del arguments[key]
    if rng.random() < 0.3:
        arguments[rng.choice(["extra", "__class__", "max_content_length", "search_type"])] = garbage(rng)
    call: Any = {"rationale": garbage(rng), "name": name, "arguments": arguments}
    if rng.random() < 0.15:
        call = rng.choice([garbage(rng), [call], json.dumps(call), {"name": name}])
    return call


def malformed_output(rng: random.Random, video: str) -> tuple[str, str]:
    stage = rng.choice(["stage1", "stage2"])
    data: dict[str, Any] = {
        "video_context": garbage(rng) if rng.random() < 0.2 else "ctx",
        "query_intent": "intent",
        "answerable": rng.choice([{"verdict": rng.choice([True, False, "yes", None]), "reasoning": "r"},
                                  garbage(rng)]),
        "final_answer": rng.choice([None, "42", garbage(rng)]),
        "recommended_tools": {"needed": rng.choice([True, False, "true", None, garbage(rng)]),
                              "why_no_tool": "", "tool_calls": [tool_call(rng, video)
                                                                for _ in range(rng.randrange(4))]},
    }
    if rng.random() < 0.2:
        data["recommended_tools"] = rng.choice([garbage(rng), {"tool_calls": garbage(rng)}])
    for key in rng.sample(list(data), rng.randrange(3)):
        del data[key]
    if rng.random() < 0.2:
        data = rng.choice([[data], garbage(rng)])
    text = json.dumps(data, default=str)
    mutation = rng.random()
    if mutation < 0.25:
        text = text[: rng.randrange(len(text) + 1)]  # truncated mid-object
    elif mutation < 0.35:
        text = text.replace('"', "'", rng.randrange(1, 20))  # python-ish quotes
    elif mutation < 0.45:
        position = rng.randrange(len(text) + 1)
        text = text[:position] + rng.choice(["}", "]", ",", "{{", "\\", "\ufffd", "</json>"]) + text[position:]
    wrapper = rng.choice(["<json>{}</json>", "Thinking...\n<json>{}", "```json\n{}\n```", "{}", "<json></json>{}",
                          "prose only, no json at all {}", "<JSON>{}</JSON> trailing", "<json>{}</json><json>{}</json>"])
    return wrapper.replace("{}", text), stage


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("v") / "fuzz.mp4",
                              IndexedVideoSpec(num_frames=40, fps=4.0, width=64, height=48))


def test_ten_thousand_malformed_outputs_never_raise(video: Path, tmp_path: Path) -> None:
    web = WebTools(WebConfig(timeout_s=2.0))
    registry = ToolRegistry([Tool(extract_parts_from_timestamp), Tool(web.parse_web_data, timeout_s=5.0)])
    context = ToolContext(video_path=video, work_dir=tmp_path / "work")
    jpgs_elsewhere = {p for p in tmp_path.parent.rglob("*.jpg") if not p.resolve().is_relative_to(tmp_path.resolve())}
    rng = random.Random(1234)
    outcomes = {"no_json": 0, "no_call": 0, "error_result": 0, "ran": 0}
    for _ in range(N_OUTPUTS):
        text, stage = malformed_output(rng, str(video))
        parsed = parse_output(text, stage)  # must not raise
        assert parsed.data is None or isinstance(parsed.data, dict)
        if parsed.data is None:
            outcomes["no_json"] += 1
            assert parsed.error
            continue
        _ = (parsed.final_answer, parsed.tool_needed, parsed.verdict)  # properties never raise
        if not parsed.tool_calls:
            outcomes["no_call"] += 1
            continue
        record = registry.call(context, parsed.tool_calls[0], [])
        assert isinstance(record.result, str) and record.result
        if record.error:
            outcomes["error_result"] += 1
            continue
        outcomes["ran"] += 1
        # a call that ran can only have been a frame extraction on the episode's own video
        assert record.name == "extract_parts_from_timestamp", record
        for line in record.result.splitlines()[1:]:
            path = Path(line.split(": ", 1)[-1])  # "time: path" for frames, the path alone for a clip
            assert path.resolve().is_relative_to(context.work_dir.resolve()) and path.is_file()
    assert all(count > 100 for count in outcomes.values()), outcomes  # every path was exercised
    after = {p for p in tmp_path.parent.rglob("*.jpg") if not p.resolve().is_relative_to(tmp_path.resolve())}
    assert after == jpgs_elsewhere  # nothing was written outside this test's folders


def test_hostile_urls_and_paths_are_refused_by_name(video: Path, tmp_path: Path) -> None:
    web = WebTools(WebConfig(timeout_s=2.0))
    registry = ToolRegistry([Tool(extract_parts_from_timestamp), Tool(web.parse_web_data)])
    context = ToolContext(video_path=video, work_dir=tmp_path)
    from sage_fast.agent.parsing import ToolCall

    for url in HOSTILE_URLS:
        record = registry.call(context, ToolCall("parse_web_data", {"website_url": url}), [])
        assert record.error and not record.valid, (url, record.result)
    for path in HOSTILE_PATHS:
        record = registry.call(context, ToolCall("extract_parts_from_timestamp", {
            "video_path": path, "timestamp_start": "0", "timestamp_end": "2"}), [])
        assert record.error, (path, record.result)


def test_malformed_episodes_end_cleanly(openai_stub, video: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from sage_fast.models.openai_compatible import OpenAICompatible

    rng = random.Random(7)
    agent = Agent(OpenAICompatible(openai_stub.url, "m", max_retries=0),
                  config=AgentConfig(num_frames=4, max_stage2_steps=3, work_dir=str(tmp_path / "w")))
    for _ in range(10):
        openai_stub.replies = [malformed_output(rng, str(video))[0] for _ in range(4)]
        trajectory = agent.run(video, "What happens?")
        assert trajectory.error is None and trajectory.answer and 1 <= len(trajectory.turns) <= 4
