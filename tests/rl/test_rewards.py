"""The paper's rewards (DESIGN.md §2) on hand-built trajectories: every branch, precedence, repeats.

The expected numbers are the paper's constants written here, not read from RewardConfig, so a
wrong default fails these tests.
"""

from __future__ import annotations

import math

import pytest

from sage_fast.agent.trajectory import COULD_NOT_PRODUCE, ToolCallRecord, Trajectory, Turn
from sage_fast.rl.rewards import (
    RewardConfig,
    accuracy_reward,
    episode_reward,
    format_reward,
    invalid_args_penalty,
    is_malformed,
    repeat_penalty,
    tool_step_reward,
    turn_cap_for_step,
)

# DESIGN.md §2, from the paper
REPAIRED, KEYS_EXACT, KEYS_WRONG = -0.05, 0.05, -0.1
REPEAT, INVALID, STEP = -0.05, -0.1, 0.1
CORRECT, VISUAL_BONUS, WRONG_AFTER_TOOLS, WRONG_REPEATED_SEARCH = 1.0, 1.25, -0.5, -1.0
NO_ANSWER, MALFORMED, WRONG_DIRECT = -0.5, -2.0, 0.0


def call(name: str, repeat: int = 0, valid: bool = True, **arguments: object) -> ToolCallRecord:
    return ToolCallRecord(name=name, arguments=dict(arguments), valid=valid, error=not valid, repeat=repeat)


def turn(stage: str = "stage2", step: int = 1, *, tool: ToolCallRecord | None = None, repaired: bool = False,
         keys_exact: bool = True, parse_error: str | None = None) -> Turn:
    return Turn(stage=stage, step=step, messages=[], raw_output="<json>{}</json>", repaired=repaired,  # type: ignore[arg-type]
                keys_exact=keys_exact and parse_error is None, parse_error=parse_error, tool_call=tool)


def episode(*turns: Turn, answer: str | None = "a cat", stage: str | None = "stage2",
            could_not_produce: bool = False) -> Trajectory:
    return Trajectory(video_path="v.mp4", question="q?", turns=list(turns), answer=answer,
                      answer_stage=stage, could_not_produce=could_not_produce)  # type: ignore[arg-type]


def direct(answer: str = "a cat") -> Trajectory:
    return episode(turn("stage1", 0), answer=answer, stage="stage1")


def via_tools(*calls: ToolCallRecord) -> Trajectory:
    turns = [turn("stage1", 0, tool=calls[0] if calls else None)]
    turns += [turn("stage2", i, tool=c) for i, c in enumerate(calls[1:], start=1)]
    turns.append(turn("stage2", len(turns)))
    return episode(*turns)


def cap_reached(last_parse_error: str | None) -> Trajectory:
    return episode(turn("stage1", 0, tool=call("perform_reasoning", query="x")), turn("stage2", 1),
                   turn("stage2", 2, parse_error=last_parse_error), answer=COULD_NOT_PRODUCE, stage=None,
                   could_not_produce=True)


# ---- accuracy: one test per row of the paper's table ---------------------------------------------

def test_correct_direct_answer() -> None:
    assert accuracy_reward(direct(), True) == pytest.approx(CORRECT)


@pytest.mark.parametrize("tool", ["identify_timestamps_visually", "extract_parts_from_timestamp"])
def test_correct_with_a_visual_tool_earns_the_multiplier(tool: str) -> None:
    trajectory = via_tools(call("unified_web_search", query="x"), call(tool, video_path="v.mp4"))
    assert accuracy_reward(trajectory, True) == pytest.approx(CORRECT * VISUAL_BONUS)


def test_correct_with_only_an_invalid_visual_call_earns_no_multiplier() -> None:
    trajectory = via_tools(call("identify_timestamps_visually", valid=False), call("perform_reasoning", query="x"))
    assert accuracy_reward(trajectory, True) == pytest.approx(CORRECT)


def test_correct_with_other_tools_only() -> None:
    assert accuracy_reward(via_tools(call("perform_reasoning", query="x")), True) == pytest.approx(CORRECT)


def test_wrong_direct_stage1_answer() -> None:
    assert accuracy_reward(direct(), False) == pytest.approx(WRONG_DIRECT)


def test_wrong_after_stage2_tool_use() -> None:
    trajectory = via_tools(call("extract_parts_from_timestamp", video_path="v.mp4"), call("perform_reasoning"))
    assert accuracy_reward(trajectory, False) == pytest.approx(WRONG_AFTER_TOOLS)


@pytest.mark.parametrize("tool", ["unified_web_search", "parse_web_data", "verbal_transcript"])
def test_wrong_with_repeated_web_or_speech_calls(tool: str) -> None:
    trajectory = via_tools(call(tool, query="x"), call(tool, repeat=1, query="x"))
    assert accuracy_reward(trajectory, False) == pytest.approx(WRONG_REPEATED_SEARCH)


def test_repeats_of_other_tools_do_not_count_as_repeated_search() -> None:
    trajectory = via_tools(call("perform_reasoning", query="x"), call("perform_reasoning", repeat=1, query="x"),
                           call("unified_web_search", query="y"))
    assert accuracy_reward(trajectory, False) == pytest.approx(WRONG_AFTER_TOOLS)


def test_no_answer_at_the_turn_cap() -> None:
    trajectory = cap_reached(last_parse_error=None)
    assert not is_malformed(trajectory)
    for verdict in (None, False, True):  # the judge's verdict on the fixed string is not used
        assert accuracy_reward(trajectory, verdict) == pytest.approx(NO_ANSWER)


def test_malformed_output_is_no_answer_with_an_unparseable_last_turn() -> None:
    trajectory = cap_reached(last_parse_error="no JSON object found in the output")
    assert is_malformed(trajectory)
    assert accuracy_reward(trajectory, None) == pytest.approx(MALFORMED)


def test_an_unparseable_earlier_turn_is_not_malformed_output() -> None:
    trajectory = episode(turn("stage1", 0, parse_error="empty output"), turn("stage2", 1))
    assert not is_malformed(trajectory)
    assert accuracy_reward(trajectory, False) == pytest.approx(WRONG_AFTER_TOOLS)


def test_answer_none_without_the_flag_is_no_answer() -> None:
    trajectory = episode(turn("stage1", 0), turn("stage2", 1), answer=None, stage=None)
    assert accuracy_reward(trajectory, None) == pytest.approx(NO_ANSWER)


# ---- precedence and bad input --------------------------------------------------------------------

def test_repeated_search_wins_over_wrong_after_tools_and_correct_wins_over_everything() -> None:
    trajectory = via_tools(call("extract_parts_from_timestamp"), call("verbal_transcript", video_path="v"),
                           call("verbal_transcript", repeat=1, video_path="v"))
    assert accuracy_reward(trajectory, False) == pytest.approx(WRONG_REPEATED_SEARCH)
    assert accuracy_reward(trajectory, True) == pytest.approx(CORRECT * VISUAL_BONUS)


def test_missing_answer_stage_falls_back_to_the_turns() -> None:
    assert accuracy_reward(episode(turn("stage1", 0), stage=None), False) == pytest.approx(WRONG_DIRECT)
    assert accuracy_reward(episode(turn("stage1", 0), turn("stage2", 1), stage=None), False) == \
        pytest.approx(WRONG_AFTER_TOOLS)


def test_an_answer_needs_a_verdict() -> None:
    with pytest.raises(ValueError, match="correct=None"):
        accuracy_reward(direct(), None)
    with pytest.raises(ValueError, match="correct=None"):
        episode_reward(via_tools(call("perform_reasoning")), None)


def test_failed_episode_scores_as_no_answer() -> None:
    failed = Trajectory(video_path="v.mp4", question="q?", error="EpisodeStopped: timeout")
    assert episode_reward(failed, None).to_dict() == pytest.approx(
        {"format": 0.0, "tool_repeat": 0.0, "invalid_args": 0.0, "tool_step": 0.0, "accuracy": NO_ANSWER,
         "total": NO_ANSWER})


# ---- the other terms -----------------------------------------------------------------------------

def test_format_reward_per_turn() -> None:
    trajectory = episode(turn("stage1", 0), turn(repaired=True), turn(keys_exact=False),
                         turn(repaired=True, keys_exact=False), turn(parse_error="empty output"))
    want = KEYS_EXACT + (REPAIRED + KEYS_EXACT) + KEYS_WRONG + (REPAIRED + KEYS_WRONG) + KEYS_WRONG
    assert format_reward(trajectory) == pytest.approx(want)


def test_repeat_penalty_grows_with_the_square_root() -> None:
    calls = [call("unified_web_search", repeat=k, query="x") for k in range(4)]  # the k-th repeat, k = 0..3
    assert repeat_penalty(via_tools(*calls)) == pytest.approx(REPEAT * (1 + math.sqrt(2) + math.sqrt(3)))
    assert repeat_penalty(via_tools(*calls[:2])) == pytest.approx(REPEAT * 1)
    assert repeat_penalty(via_tools(calls[0])) == 0


def test_invalid_args_per_call() -> None:
    trajectory = via_tools(call("verbal_transcript", valid=False), call("no_such_tool", valid=False),
                           call("perform_reasoning"))
    assert invalid_args_penalty(trajectory) == pytest.approx(2 * INVALID)


def test_tool_step_reward() -> None:
    assert tool_step_reward([True, True, False]) == pytest.approx(STEP)
    assert tool_step_reward([]) == 0


def test_episode_reward_sums_every_term() -> None:
    trajectory = via_tools(call("identify_timestamps_visually", video_path="v"),
                           call("identify_timestamps_visually", repeat=1, video_path="v"),
                           call("parse_web_data", valid=False))
    trajectory.turns[0].repaired = True
    breakdown = episode_reward(trajectory, True, [True, False, False])
    parts = breakdown.to_dict()
    assert parts["format"] == pytest.approx(REPAIRED + 4 * KEYS_EXACT)
    assert parts["tool_repeat"] == pytest.approx(REPEAT)
    assert parts["invalid_args"] == pytest.approx(INVALID)
    assert parts["tool_step"] == pytest.approx(-STEP)
    assert parts["accuracy"] == pytest.approx(CORRECT * VISUAL_BONUS)
    assert parts["total"] == pytest.approx(breakdown.total)
    assert breakdown.total == pytest.approx(REPAIRED + 4 * KEYS_EXACT + REPEAT + INVALID - STEP + CORRECT * VISUAL_BONUS)
    with pytest.raises(ValueError, match="step_verdicts"):
        episode_reward(trajectory, True, [True] * 4)


def test_turn_cap_schedule() -> None:
    assert [turn_cap_for_step(s) for s in (0, 99, 100, 5000)] == [5, 5, 10, 10]
    assert turn_cap_for_step(3, RewardConfig(turn_cap_switch_step=3)) == 10
    with pytest.raises(ValueError, match="step"):
        turn_cap_for_step(-1)


def test_config_checks_name_the_field() -> None:
    with pytest.raises(ValueError, match="malformed"):
        RewardConfig(malformed=2.0)
    with pytest.raises(ValueError, match="correct"):
        RewardConfig(correct=-1.0)
    with pytest.raises(ValueError, match="turn_cap_early"):
        RewardConfig(turn_cap_early=0)
    with pytest.raises(ValueError, match="visual_tools"):
        RewardConfig(visual_tools=("",))
    assert RewardConfig(visual_tools=["x"]).visual_tools == ("x",)  # type: ignore[arg-type]
    custom = RewardConfig(malformed=-3.0)
    assert accuracy_reward(cap_reached("bad"), None, custom) == pytest.approx(-3.0)
