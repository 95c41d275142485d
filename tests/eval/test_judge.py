"""The LLM judge against a local OpenAI-compatible server: prompts, verdict parsing, cache, retries, errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from sage_fast.eval.judge import Judge, JudgeConfig, parse_verdict
from sage_fast.tools.retry import RetryPolicy

FAST = RetryPolicy(attempts=3, base_delay_s=0.0)


def make_judge(stub, **overrides) -> Judge:  # noqa: ANN001
    return Judge(JudgeConfig(stub.url, model="judge-m", retry=overrides.pop("retry", FAST), **overrides))


def user_text(request: dict) -> str:
    return request["messages"][-1]["content"]


@pytest.mark.parametrize(("reply", "expected"), [
    ("Reasoning: both say 42.\nVerdict: True", True),
    ("Reasoning: different.\nVerdict: False", False),
    ("**Reasoning:** same team.\n**Verdict:** True.", True),
    ("Reasoning: x\nVerdict: **false**", False),
    ("reasoning: x\nVERDICT: TRUE!", True),
    ("Reasoning: x\nverdict = false", False),
    ("Reasoning: x\nVerdict:\nTrue", True),
    ("Reasoning: x\nVerdict: `True`", True),
    ("Reasoning: one could say Verdict: True, but the numbers differ.\nVerdict: False", False),
    ("Reasoning: at first Verdict: False; on reflection they agree.\nVerdict: True", True),
    ("Format: Verdict: True/False\nReasoning: ok\nVerdict: False", False),
    ("Verdict: True/False", None),
    ("They match, I think.", None),
    ("", None),
    ("Reasoning: the truth is unknown\nVerdict: Truthful", None),
])
def test_verdict_parsing(reply: str, expected: bool | None) -> None:
    verdict = parse_verdict(reply)
    assert (verdict.correct if verdict is not None else None) is expected
    if verdict is not None:
        assert verdict.raw == reply


def test_reasoning_is_the_text_before_the_last_verdict() -> None:
    verdict = parse_verdict("Reasoning: both name the same player.\n\nVerdict: True")
    assert verdict.reasoning == "both name the same player."
    assert parse_verdict("**Reasoning:** same.\n**Verdict:** False").reasoning == "same."


def test_answer_request_and_verdict(openai_stub) -> None:  # noqa: ANN001
    openai_stub.replies = ["Reasoning: both say the dog is brown.\nVerdict: True"]
    verdict = make_judge(openai_stub).judge_answer("What colour is the dog?", "brown", "The dog is brown.")
    assert verdict.correct and verdict.reasoning == "both say the dog is brown." and not verdict.cached
    (request,) = openai_stub.requests
    assert request["model"] == "judge-m" and request["temperature"] == 0 and request["max_tokens"] == 512
    text = user_text(request)
    assert "What colour is the dog?" in text and "Ground truth: brown" in text and "Prediction: The dog is brown." in text
    assert "Verdict: <True or False>" in text and "same meaning" in text


def test_mcq_prompt_names_the_option(openai_stub) -> None:  # noqa: ANN001
    openai_stub.replies = ["Reasoning: B both.\nVerdict: True", "Reasoning: same text.\nVerdict: True"]
    judge = make_judge(openai_stub)
    assert judge.judge_answer("Which colour?", "b", "B", options=["red", "blue", "green"]).correct
    text = user_text(openai_stub.requests[0])
    assert "(A) red\n(B) blue\n(C) green" in text and "Ground truth: (B) blue" in text and "same option" in text
    judge.judge_answer("Which colour?", "green", "It is green", options=["red", "blue", "green"])
    assert "Ground truth: (C) green" in user_text(openai_stub.requests[1])


@pytest.mark.parametrize("prediction", [None, "", "   "])
def test_no_prediction_sends_no_request(openai_stub, prediction) -> None:  # noqa: ANN001
    judge = make_judge(openai_stub)
    verdict = judge.judge_answer("q", "a", prediction)
    assert not verdict.correct and "No prediction" in verdict.reasoning
    assert not asyncio.run(judge.ajudge_answer("q", "a", prediction)).correct
    assert openai_stub.requests == []


def test_unparseable_reply_is_incorrect_kept_and_not_cached(openai_stub, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = ["Looks right to me!", "Reasoning: fine\nVerdict: True"]
    judge = make_judge(openai_stub, cache_dir=str(tmp_path / "cache"))
    verdict = judge.judge_answer("q", "a", "a")
    assert not verdict.correct and verdict.raw == "Looks right to me!" and "nparseable" in verdict.reasoning
    assert judge.judge_answer("q", "a", "a").correct  # asked again, not served from the cache
    assert len(openai_stub.requests) == 2


def test_cache_hit_sends_no_second_request(openai_stub, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = ["Reasoning: r1\nVerdict: True", "Reasoning: r2\nVerdict: False"]
    cache = tmp_path / "cache"
    first = make_judge(openai_stub, cache_dir=str(cache)).judge_answer("q", "a", "a")
    again = make_judge(openai_stub, cache_dir=str(cache)).judge_answer("q", "a", "a")  # a new process, same folder
    assert again == type(first)(correct=True, reasoning="r1", raw=first.raw, cached=True)
    assert asyncio.run(make_judge(openai_stub, cache_dir=str(cache)).ajudge_answer("q", "a", "a")).cached
    assert len(openai_stub.requests) == 1
    other_model = Judge(JudgeConfig(openai_stub.url, model="other", cache_dir=str(cache), retry=FAST))
    assert not other_model.judge_answer("q", "a", "a").correct  # the model is part of the key
    assert len(openai_stub.requests) == 2
    assert not list(cache.rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_corrupted_cache_entry_is_recomputed(openai_stub, tmp_path: Path) -> None:  # noqa: ANN001
    openai_stub.replies = ["Reasoning: r\nVerdict: True", "Reasoning: r\nVerdict: True"]
    cache = tmp_path / "cache"
    judge = make_judge(openai_stub, cache_dir=str(cache))
    judge.judge_answer("q", "a", "a")
    (entry,) = cache.rglob("*.json")
    entry.write_text('{"correct": tru')  # a torn write from some other tool
    verdict = judge.judge_answer("q", "a", "a")
    assert verdict.correct and not verdict.cached and len(openai_stub.requests) == 2
    assert json.loads(entry.read_text())["correct"] is True  # repaired


@pytest.mark.parametrize("faults", [["500"], ["drop"], ["503", "drop"], ["429"]])
def test_transient_failures_are_retried(openai_stub, faults) -> None:  # noqa: ANN001
    openai_stub.faults = list(faults)
    openai_stub.replies = ["Reasoning: r\nVerdict: True"]
    assert make_judge(openai_stub).judge_answer("q", "a", "b").correct
    assert len(openai_stub.requests) == len(faults) + 1


def test_async_path_retries_too(openai_stub) -> None:  # noqa: ANN001
    openai_stub.faults = ["500", "drop"]
    openai_stub.replies = ["Reasoning: r\nVerdict: False"]
    verdict = asyncio.run(make_judge(openai_stub).ajudge_answer("q", "a", "b"))
    assert verdict.correct is False and verdict.reasoning == "r" and len(openai_stub.requests) == 3


def test_bad_request_is_a_clear_error_without_retries(openai_stub) -> None:  # noqa: ANN001
    openai_stub.faults = ["400"]
    with pytest.raises(RuntimeError) as error:
        make_judge(openai_stub).judge_answer("q", "a", "b")
    message = str(error.value)
    assert openai_stub.url in message and "400" in message and "model name" in message
    assert len(openai_stub.requests) == 1


def test_refused_key_names_the_variable(openai_stub, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-judge-test")
    openai_stub.faults = ["401"]
    judge = make_judge(openai_stub, api_key_env="MY_JUDGE_KEY")
    with pytest.raises(RuntimeError, match=r"\$MY_JUDGE_KEY"):
        asyncio.run(judge.ajudge_answer("q", "a", "b"))
    assert openai_stub.headers[0]["authorization"] == "Bearer sk-judge-test"


def test_retries_run_out_with_a_clear_error(openai_stub) -> None:  # noqa: ANN001
    openai_stub.faults = ["503", "503", "503", "503"]
    with pytest.raises(RuntimeError, match="after 3 tries"):
        make_judge(openai_stub).judge_answer("q", "a", "b")
    assert len(openai_stub.requests) == 3


def test_async_concurrency_is_bounded(openai_stub) -> None:  # noqa: ANN001
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def slow(body: dict) -> float:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return 0.0

    openai_stub.latency_s = slow
    openai_stub.reply = "Reasoning: r\nVerdict: True"
    judge = make_judge(openai_stub, concurrency=2)

    async def many() -> list:
        return await asyncio.gather(*(judge.ajudge_answer(f"q{k}", "a", "b") for k in range(6)))

    assert all(v.correct for v in asyncio.run(many()))
    assert state["peak"] == 2 and len(openai_stub.requests) == 6


def test_tool_step_prompt_and_verdict(openai_stub) -> None:  # noqa: ANN001
    openai_stub.replies = ["Reasoning: it repeats the same call.\nVerdict: False"]
    history = [{"name": "identify_timestamps_visually", "arguments": {"event": "the goal"},
                "result": "The event happens from 00:01:40 to 00:01:45"}]
    call = {"name": "extract_parts_from_timestamp", "arguments": {"timestamp_start": "00:01:40"}}
    verdict = make_judge(openai_stub).judge_tool_step("Who scores?", history, call)
    assert not verdict.correct and verdict.reasoning == "it repeats the same call."
    text = user_text(openai_stub.requests[0])
    assert "Who scores?" in text and "00:01:40 to 00:01:45" in text and 'identify_timestamps_visually({"event"' in text
    assert 'Current call: extract_parts_from_timestamp({"timestamp_start": "00:01:40"})' in text
    openai_stub.replies = ["Reasoning: a good first step.\nVerdict: True"]
    assert asyncio.run(make_judge(openai_stub).ajudge_tool_step("Who scores?", [], call)).correct
    assert "(no tool calls yet)" in user_text(openai_stub.requests[1])


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="base_url"):
        JudgeConfig("localhost:8000")
    with pytest.raises(ValueError, match="concurrency"):
        JudgeConfig("http://x/v1", concurrency=0)
    assert JudgeConfig("http://x/v1", retry={"attempts": 5}).retry.attempts == 5
