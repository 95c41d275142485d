"""Validation of model-written questions: each field rule, clamping, percent, mcq answers, dedupe, set rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_fast.data.questions import (
    QuestionRules,
    SynthQuestion,
    check_question,
    is_duplicate,
    select_questions,
    set_problems,
    validate_questions,
)
from sage_fast.eval.datasets import load_items

DURATION = 600.0  # a 10-minute video


def question(k: int = 0, **changes) -> dict:
    """A valid open-ended question numbered ``k`` (numbers keep questions distinct)."""
    base = {"question": f"What does the host cook in segment {k}?", "type": "open_ended", "options": None,
            "answer": f"dish {k}", "difficulty": "medium", "modality": "visual", "requires_web_search": False,
            "why_web_search": None, "start_timestamp": "00:01:00", "end_timestamp": "00:04:00",
            "percent_video_parsed": 12}
    base.update(changes)
    return base


def good_set(n: int = 12) -> list[dict]:
    """``n`` valid questions: 4 visual (the rest verbal), the last one ending at 95 % of the video."""
    items = [question(k, modality="visual" if k < 4 else "verbal") for k in range(n)]
    items[-1]["end_timestamp"] = "00:09:30"
    return items


def test_a_valid_set_is_kept_whole_with_our_percent() -> None:
    kept, problems = validate_questions(json.dumps({"questions": good_set()}), DURATION)
    assert problems == [] and len(kept) == 12
    assert kept[0].percent_video_parsed == pytest.approx(40.0)  # 240 s / 600 s, not the model's 12
    assert kept[-1].percent_video_parsed == pytest.approx(95.0)
    assert (kept[0].start_seconds, kept[0].end_seconds) == (60.0, 240.0)
    assert (kept[0].start_timestamp, kept[0].end_timestamp) == ("00:01:00", "00:04:00")
    assert kept[0].ques_type == "open_ended" and kept[0].options is None and kept[0].answer_letter is None


@pytest.mark.parametrize(("change", "expected"), [
    ({"question": "  "}, "'question' must be a non-empty string"),
    ({"type": "essay"}, "'type' must be one of mcq, open_ended"),
    ({"difficulty": "extreme"}, "'difficulty' must be one of easy, medium, hard"),
    ({"modality": "smell"}, "'modality' must be one of visual, verbal, both"),
    ({"answer": ""}, "'answer' must be a non-empty string"),
    ({"requires_web_search": "maybe"}, "'requires_web_search' must be true or false"),
    ({"start_timestamp": "00:75:00"}, "invalid start_timestamp '00:75:00'"),
    ({"end_timestamp": None}, "'end_timestamp' is missing"),
    ({"start_timestamp": "00:05:00", "end_timestamp": "00:04:00"}, "is after end_timestamp"),
    ({"start_timestamp": "00:11:00", "end_timestamp": "00:12:00"}, "is past the end of the video"),
    ({"options": ["a", "b"]}, "an open_ended question must have no options"),
    ({"type": "mcq", "options": ["only one"], "answer": "only one"}, "needs 2 to 6 options, got 1"),
    ({"type": "mcq", "options": list("abcdefg"), "answer": "a"}, "needs 2 to 6 options, got 7"),
    ({"type": "mcq", "options": ["red", "Red"], "answer": "red"}, "'options' repeat each other"),
    ({"type": "mcq", "options": ["red", ""], "answer": "red"}, "must be a list of non-empty strings"),
    ({"type": "mcq", "options": None, "answer": "red"}, "must be a list of non-empty strings"),
    ({"type": "mcq", "options": ["red", "blue"], "answer": "green"}, "answer 'green' is not one of the options"),
    ({"type": "mcq", "options": ["red", "blue"], "answer": "C"}, "answer 'C' is not one of the options"),
])
def test_each_rule_drops_the_question_and_names_the_problem(change: dict, expected: str) -> None:
    items = good_set()
    items[2].update(change)
    kept, problems = validate_questions({"questions": items}, DURATION)
    assert len(kept) == 11
    assert any(p.startswith("question 3: ") and expected in p for p in problems), problems
    assert "set: only 11" not in " ".join(problems)  # 11 valid questions still make a set


def test_a_question_that_is_not_an_object_is_named() -> None:
    kept, problems = validate_questions({"questions": [*good_set(), "just text"]}, DURATION)
    assert len(kept) == 12 and problems == ["question 13: not a JSON object (got str)"]


def test_timestamps_are_clamped_and_accept_seconds() -> None:
    spec, problems = check_question(question(end_timestamp="00:20:00"), DURATION)
    assert problems == [] and spec is not None
    assert spec.end_seconds == DURATION and spec.end_timestamp == "00:10:00" and spec.percent_video_parsed == 100.0
    spec, _ = check_question(question(start_timestamp=30, end_timestamp="95.5"), DURATION)
    assert spec is not None and (spec.start_seconds, spec.end_seconds) == (30.0, 95.5)
    assert spec.percent_video_parsed == pytest.approx(15.92)
    spec, _ = check_question(question(start_timestamp="1:30", end_timestamp="02:00"), DURATION)  # MM:SS
    assert spec is not None and (spec.start_seconds, spec.end_seconds) == (90.0, 120.0)


@pytest.mark.parametrize("answer", ["blue", "  Blue. ", "B", "(b)", "b)", "Option B", "B) blue", "(B) Blue"])
def test_an_mcq_answer_is_its_option_by_letter_or_text(answer: str) -> None:
    spec, problems = check_question(question(type="mcq", options=["red", "blue", "green"], answer=answer), DURATION)
    assert problems == [] and spec is not None
    assert (spec.answer, spec.answer_letter, spec.options) == ("blue", "B", ["red", "blue", "green"])


def test_option_labels_are_stripped_only_when_every_option_has_its_letter() -> None:
    spec, _ = check_question(question(type="mcq", options=["A) red", "B) blue", "C) green"], answer="C"), DURATION)
    assert spec is not None and spec.options == ["red", "blue", "green"] and spec.answer == "green"
    spec, _ = check_question(question(type="mcq", options=["A) red", "blue"], answer="blue"), DURATION)
    assert spec is not None and spec.options == ["A) red", "blue"]
    spec, _ = check_question(question(type="Multiple-Choice", options=["x", "y"], answer="y"), DURATION)
    assert spec is not None and spec.ques_type == "mcq"


def test_near_identical_questions_are_dropped_but_other_times_are_not() -> None:
    assert is_duplicate("What colour is the car?", "what colour is the car ?!")
    assert is_duplicate("What colour is the red car?", "What colour is the red cars?")
    assert not is_duplicate("What is shown at 00:01:00?", "What is shown at 00:05:00?")
    assert not is_duplicate("Who scores the first goal?", "Who receives the first yellow card?")
    items = good_set()
    items[5]["question"] = items[1]["question"].upper() + "!!"
    kept, problems = validate_questions(items, DURATION)
    assert len(kept) == 11 and "question 6: repeats question 2; every question must be different" in problems


def test_set_rules_are_reported_one_by_one() -> None:
    kept, problems = validate_questions(good_set(9), DURATION)
    assert len(kept) == 9 and problems == ["set: only 9 valid question(s); write 10 to 20 valid questions"]
    items = good_set()
    items[0]["modality"] = "both"
    _, problems = validate_questions(items, DURATION)
    assert len(problems) == 1 and problems[0].startswith("set: 3 visual question(s); at least 4")
    items = good_set()
    items[-1]["end_timestamp"] = "00:08:00"
    _, problems = validate_questions(items, DURATION)
    assert problems == ["set: no question needs 90% of the video or more (the latest ends at 80%); ask at least "
                        "one question about the end of the video"]
    _, problems = validate_questions(good_set(21), DURATION)
    assert problems == ["set: 21 valid questions; write at most 20"]
    rules = QuestionRules(min_questions=2, max_questions=3, min_visual=1, full_percent=50.0)
    assert set_problems(validate_questions(good_set(3), DURATION, rules)[0], rules) == []


def test_replies_are_read_from_json_text_fences_or_lists_and_refused_otherwise() -> None:
    fenced = "Here you go:\n```json\n" + json.dumps({"questions": good_set()}) + "\n```"
    assert len(validate_questions(fenced, DURATION)[0]) == 12
    assert len(validate_questions(good_set(), DURATION)[0]) == 12
    kept, problems = validate_questions("I cannot watch videos.", DURATION)
    assert kept == [] and problems[0].startswith("reply: not JSON")
    kept, problems = validate_questions({"items": good_set()}, DURATION)
    assert kept == [] and problems[0] == "reply: no 'questions' list in the JSON object"
    assert any(p.startswith("set: only 0") for p in problems)
    with pytest.raises(ValueError, match="duration must be positive"):
        validate_questions(good_set(), 0.0)


def test_trimming_keeps_what_the_rules_need() -> None:
    items = [question(k, modality="verbal") for k in range(24)]
    for k in (20, 21, 22, 23):
        items[k]["modality"] = "visual"
    items[23]["end_timestamp"] = "00:10:00"
    kept, problems = validate_questions(items, DURATION)
    assert len(kept) == 24 and problems == ["set: 24 valid questions; write at most 20"]
    chosen = select_questions(kept)
    assert len(chosen) == 20 and set_problems(chosen) == []
    assert [q.question for q in chosen] == [kept[k].question for k in [*range(16), 20, 21, 22, 23]]


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="min"):
        QuestionRules(min_questions=5, max_questions=4)
    with pytest.raises(ValueError, match="full_percent"):
        QuestionRules(full_percent=120)


def test_records_load_back_as_benchmark_items_without_mapping(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded by load_items")
    specs, _ = validate_questions([*good_set(), question(99, type="mcq", options=["red", "blue"], answer="A")],
                                  DURATION)
    records = [SynthQuestion(**vars(s), id=f"clip-q{k:02d}", video_path=str(video), duration_seconds=DURATION,
                             source_model="gemini-test").to_record() for k, s in enumerate(specs)]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    items = load_items(path, preset=None)
    assert [i.id for i in items] == [r["id"] for r in records]
    mcq = items[-1]
    assert (mcq.ques_type, mcq.options, mcq.answer, mcq.video_path) == ("mcq", ["red", "blue"], "red", str(video))
    assert "Answer with one of these options" in mcq.prompt
    first = items[0]
    assert (first.ques_type, first.difficulty, first.modality, first.duration_seconds) == (
        "open_ended", "medium", "visual", DURATION)
    assert first.extra["percent_video_parsed"] == pytest.approx(40.0) and first.extra["source_model"] == "gemini-test"
    assert SynthQuestion.from_record(records[-1]).to_item().options == ["red", "blue"]
    with pytest.raises(ValueError, match="missing"):
        SynthQuestion.from_record({"id": "x"})
