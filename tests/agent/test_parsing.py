"""Model output parsing: every shape of JSON a model writes is recovered, flagged, never raised."""

from __future__ import annotations

import json

import pytest

from sage_fast.agent.parsing import keys_exact, parse_output

STAGE1 = {
    "video_context": "A cooking show; the host chops onions.",
    "query_intent": "Which knife is used?",
    "final_answer": None,
    "recommended_tools": {"needed": True, "why_no_tool": "", "tool_calls": [
        {"rationale": "find the knife", "name": "identify_timestamps_visually",
         "arguments": {"video_path": "v.mp4", "event": "knife appears", "timestamp_start": "00:00:00",
                       "timestamp_end": "00:05:00"}}]},
}
STAGE2 = {
    "answerable": {"verdict": True, "reasoning": "The tool result shows a chef's knife."},
    "final_answer": "A chef's knife",
    "recommended_tools": {"needed": False, "why_no_tool": "answer known", "tool_calls": []},
}


def test_tagged_json_is_clean_with_exact_keys() -> None:
    parsed = parse_output(f"thinking...\n<json>{json.dumps(STAGE1)}</json>", "stage1")
    assert parsed.data == STAGE1 and not parsed.repaired and parsed.keys_exact
    assert parsed.final_answer is None and parsed.tool_needed
    (call,) = parsed.tool_calls
    assert call.name == "identify_timestamps_visually" and call.arguments["event"] == "knife appears"


def test_stage2_verdict_and_answer() -> None:
    parsed = parse_output(f"<json>\n{json.dumps(STAGE2, indent=2)}\n</json>", "stage2")
    assert parsed.keys_exact and parsed.verdict and parsed.final_answer == "A chef's knife"
    assert not parsed.tool_needed and parsed.tool_calls == ()


@pytest.mark.parametrize("wrap", [
    lambda j: f"```json\n{j}\n```",
    lambda j: f"Here is my answer: {j} Hope this helps.",
    lambda j: f"<JSON>{j}</JSON>",
])
def test_other_wrappings_parse_without_repair(wrap) -> None:  # noqa: ANN001
    parsed = parse_output(wrap(json.dumps(STAGE2)), "stage2")
    assert parsed.data == STAGE2 and not parsed.repaired


@pytest.mark.parametrize("broken", [
    json.dumps(STAGE2)[:-1],  # missing closing brace
    json.dumps(STAGE2).replace('"final_answer"', "'final_answer'"),  # single quotes
    json.dumps(STAGE2).replace("[]", "[],"),  # trailing comma
    "<json>" + json.dumps(STAGE2)[:-2],  # unterminated tag and object
])
def test_slightly_malformed_json_is_repaired_and_flagged(broken: str) -> None:
    parsed = parse_output(broken, "stage2")
    assert parsed.data is not None and parsed.repaired
    assert parsed.data["final_answer"] == "A chef's knife"


@pytest.mark.parametrize("text", ["", "   ", "I cannot answer that.", "<json></json>"])
def test_no_json_is_a_recorded_error_not_an_exception(text: str) -> None:
    parsed = parse_output(text, "stage1")
    assert parsed.data is None and parsed.error and not parsed.keys_exact
    assert parsed.final_answer is None and parsed.tool_calls == ()


def test_keys_exact_is_strict_at_every_level() -> None:
    assert keys_exact(STAGE1, "stage1") and keys_exact(STAGE2, "stage2")
    assert not keys_exact(STAGE1, "stage2") and not keys_exact(STAGE2, "stage1")
    extra = {**STAGE1, "confidence": 0.9}
    assert not keys_exact(extra, "stage1")
    bad_call = json.loads(json.dumps(STAGE1))
    bad_call["recommended_tools"]["tool_calls"][0]["args"] = bad_call["recommended_tools"]["tool_calls"][0].pop("arguments")
    assert not keys_exact(bad_call, "stage1")
    bad_answerable = {**STAGE2, "answerable": {"verdict": True}}
    assert not keys_exact(bad_answerable, "stage2")


def test_tool_call_shapes_models_produce() -> None:
    data = json.loads(json.dumps(STAGE1))
    call = data["recommended_tools"]["tool_calls"][0]
    data["recommended_tools"]["tool_calls"] = {**call, "arguments": json.dumps(call["arguments"])}
    parsed = parse_output(json.dumps(data), "stage1")
    (only,) = parsed.tool_calls  # a single object instead of a list, arguments as a JSON string
    assert only.arguments == call["arguments"]
    data["recommended_tools"]["tool_calls"] = [{"name": ""}, "junk", {"name": "x", "arguments": [1]}]
    (kept,) = parse_output(json.dumps(data), "stage1").tool_calls
    assert kept.name == "x" and kept.arguments == {}


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("  B  ", "B"), (3, "3"), ({"a": 1}, None)])
def test_final_answer_normalisation(value, expected) -> None:  # noqa: ANN001
    assert parse_output(json.dumps({**STAGE2, "final_answer": value}), "stage2").final_answer == expected


def test_string_booleans_count() -> None:
    data = {**STAGE2, "answerable": {"verdict": "true", "reasoning": ""}}
    assert parse_output(json.dumps(data), "stage2").verdict
    data["answerable"]["verdict"] = "false"
    assert not parse_output(json.dumps(data), "stage2").verdict


def test_bad_stage_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="stage"):
        parse_output("{}", "stage3")  # type: ignore[arg-type]
