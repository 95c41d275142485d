"""The paper's RL rewards as plain functions of a Trajectory, summed per episode (DESIGN.md §2).

Each reward is a TRL-style plain function, so a trainer can log them one by one, turn one off, or
reuse them in evaluation. Every constant is a :class:`RewardConfig` field whose default is the
paper's value. :func:`episode_reward` sums them into a :class:`RewardBreakdown`; the GRPO trainer
puts that episode return on every turn of the episode (DESIGN.md §2).

Terms (DESIGN.md §2, "Rewards summed per episode"):

* format, per turn: JSON that needed repair -0.05; keys exactly right +0.05, wrong keys -0.1 (a turn
  that did not parse at all has wrong keys);
* the k-th repeat of the same tool with the same arguments -0.05·√k (``ToolCallRecord.repeat`` is
  k: how many earlier calls in the episode had that name and those arguments);
* invalid arguments -0.1 per call the registry rejected (``valid`` False: schema failure, the
  tool's own argument checks, or an unknown tool name);
* the LLM judge's step verdicts on each tool call ±0.1;
* final accuracy, see :func:`accuracy_reward`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from sage_fast.agent.trajectory import Trajectory

__all__ = ["SEARCH_SPEECH_TOOLS", "VISUAL_TOOLS", "RewardBreakdown", "RewardConfig", "accuracy_reward",
           "episode_reward", "format_reward", "invalid_args_penalty", "is_malformed", "repeat_penalty",
           "tool_step_reward", "turn_cap_for_step"]

VISUAL_TOOLS = ("identify_timestamps_visually", "extract_parts_from_timestamp")  # ground-event, extract-video-parts
SEARCH_SPEECH_TOOLS = ("unified_web_search", "parse_web_data", "verbal_transcript")  # web-search, reader, speech

_PENALTIES = ("format_repaired", "format_keys_wrong", "repeat_coef", "invalid_args", "wrong_after_tools",
              "wrong_repeated_search", "no_answer", "malformed", "wrong_direct")
_BONUSES = ("format_keys_exact", "tool_step", "correct")


@dataclass(frozen=True)
class RewardConfig:
    """Every reward constant of DESIGN.md §2; the defaults are the paper's."""

    format_repaired: float = field(default=-0.05, metadata={"help": "per turn whose JSON needed repair"})
    format_keys_exact: float = field(default=0.05, metadata={"help": "per turn with exactly the stage's keys"})
    format_keys_wrong: float = field(default=-0.1, metadata={
        "help": "per turn with missing / extra keys, or with no parseable JSON at all"})
    repeat_coef: float = field(default=-0.05, metadata={
        "help": "the k-th repeat of the same tool with the same arguments costs repeat_coef * sqrt(k)"})
    invalid_args: float = field(default=-0.1, metadata={"help": "per tool call whose arguments were rejected"})
    tool_step: float = field(default=0.1, metadata={
        "help": "+tool_step per tool call the step judge found reasonable, -tool_step otherwise"})
    correct: float = field(default=1.0, metadata={"help": "a correct final answer (LLM judge)"})
    visual_tool_multiplier: float = field(default=1.25, metadata={
        "help": "multiplies a correct answer's reward when a visual tool (visual_tools) had a valid call"})
    wrong_after_tools: float = field(default=-0.5, metadata={"help": "a wrong answer given in Stage-2"})
    wrong_repeated_search: float = field(default=-1.0, metadata={
        "help": "a wrong answer after a repeated call (repeat >= 1) to a search_speech_tools tool"})
    no_answer: float = field(default=-0.5, metadata={"help": "the turn cap was reached without an answer"})
    malformed: float = field(default=-2.0, metadata={
        "help": "no answer and the episode's last turn (the one that should carry it) did not parse"})
    wrong_direct: float = field(default=0.0, metadata={"help": "a wrong answer given directly by Stage-1"})
    visual_tools: tuple[str, ...] = field(default=VISUAL_TOOLS, metadata={
        "help": "tool names whose use earns the multiplier (ground-event, extract-video-parts)"})
    search_speech_tools: tuple[str, ...] = field(default=SEARCH_SPEECH_TOOLS, metadata={
        "help": "tool names whose repeated calls make a wrong answer cost wrong_repeated_search"})
    turn_cap_early: int = field(default=5, metadata={"help": "Stage-2 turn cap for the first optimizer steps"})
    turn_cap_late: int = field(default=10, metadata={"help": "Stage-2 turn cap afterwards"})
    turn_cap_switch_step: int = field(default=100, metadata={
        "help": "optimizer steps (0-based) before which turn_cap_early applies"})

    def __post_init__(self) -> None:
        for name in _PENALTIES:
            value = getattr(self, name)
            if not (math.isfinite(value) and value <= 0):
                raise ValueError(f"{name} is a penalty: it must be a finite value <= 0, got {value}")
        for name in _BONUSES:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} is a reward: it must be a finite value >= 0, got {value}")
        if not (math.isfinite(self.visual_tool_multiplier) and self.visual_tool_multiplier > 0):
            raise ValueError(f"visual_tool_multiplier must be a finite value > 0, got {self.visual_tool_multiplier}")
        for name in ("visual_tools", "search_speech_tools"):
            names = tuple(getattr(self, name))  # YAML gives lists
            if not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"{name} must be non-empty tool names, got {names!r}")
            object.__setattr__(self, name, names)
        if self.turn_cap_early < 1 or self.turn_cap_late < 1:
            raise ValueError(f"turn_cap_early and turn_cap_late must be >= 1, got {self.turn_cap_early}, "
                             f"{self.turn_cap_late}")
        if self.turn_cap_switch_step < 0:
            raise ValueError(f"turn_cap_switch_step must be >= 0, got {self.turn_cap_switch_step}")


@dataclass
class RewardBreakdown:
    """One episode's reward, term by term (for logging); ``total`` is the GRPO return."""

    format: float = 0.0
    tool_repeat: float = 0.0
    invalid_args: float = 0.0
    tool_step: float = 0.0
    accuracy: float = 0.0

    @property
    def total(self) -> float:
        return self.format + self.tool_repeat + self.invalid_args + self.tool_step + self.accuracy

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def format_reward(trajectory: Trajectory, config: RewardConfig = RewardConfig()) -> float:
    """Sum over turns of: ``format_repaired`` if the JSON needed repair, plus ``format_keys_exact``
    when the keys were exactly the stage's, ``format_keys_wrong`` otherwise (a turn that did not
    parse has no right keys). Both flags come from :mod:`sage_fast.agent.parsing`."""
    total = 0.0
    for turn in trajectory.turns:
        if turn.repaired:
            total += config.format_repaired
        total += config.format_keys_exact if turn.keys_exact else config.format_keys_wrong
    return total


def repeat_penalty(trajectory: Trajectory, config: RewardConfig = RewardConfig()) -> float:
    """Sum over tool calls of ``repeat_coef * sqrt(k)`` for the k-th repeat (k = ``repeat`` >= 1):
    the same call four times costs 0.05·(√1 + √2 + √3)."""
    return sum(config.repeat_coef * math.sqrt(call.repeat) for call in trajectory.tool_calls if call.repeat > 0)


def invalid_args_penalty(trajectory: Trajectory, config: RewardConfig = RewardConfig()) -> float:
    """``invalid_args`` per tool call the registry rejected (``valid`` False)."""
    return config.invalid_args * sum(1 for call in trajectory.tool_calls if not call.valid)


def tool_step_reward(step_verdicts: Sequence[bool], config: RewardConfig = RewardConfig()) -> float:
    """±``tool_step`` per judged tool call: True (reasonable given the tool history) or False."""
    return sum(config.tool_step if bool(v) else -config.tool_step for v in step_verdicts)


def _no_answer(trajectory: Trajectory) -> bool:
    return trajectory.answer is None or trajectory.could_not_produce


def is_malformed(trajectory: Trajectory) -> bool:
    """No answer came and the last turn, the one that had to carry it, did not parse.

    Our loop never stops on a parse failure (DESIGN.md §2: bad output becomes a note and the loop
    goes on), so "malformed output" cannot mean "the episode crashed on its JSON"; it means the
    episode ended without an answer *because* its final output was unreadable, as opposed to a
    readable output that still asked for more tools at the cap (``no_answer``).
    """
    return _no_answer(trajectory) and bool(trajectory.turns) and trajectory.turns[-1].parse_error is not None


def accuracy_reward(trajectory: Trajectory, correct: bool | None, config: RewardConfig = RewardConfig()) -> float:
    """The final-answer reward of DESIGN.md §2, decided in this order (first match wins):

    1. no answer (``answer`` None or ``could_not_produce``): ``malformed`` (-2.0) when the last
       turn failed to parse (:func:`is_malformed`), else ``no_answer`` (-0.5); ``correct`` is
       ignored (the judge only sees the fixed could-not-produce string);
    2. an answer with ``correct`` None: ValueError (a judged verdict is needed);
    3. correct: ``correct`` (1.0), times ``visual_tool_multiplier`` (1.25) when a visual tool
       (ground-event / extract-video-parts) had a valid call;
    4. wrong, with a repeated call (``repeat`` >= 1) to a web / page-reader / speech tool:
       ``wrong_repeated_search`` (-1.0), the harsher and more specific case first;
    5. wrong, answered in Stage-2 (after the tool route): ``wrong_after_tools`` (-0.5);
    6. wrong, answered directly by Stage-1: ``wrong_direct`` (0).

    A failed episode (``trajectory.error``: a video that would not open, a scheduler time-out) has
    no answer and so scores ``no_answer`` here; it says nothing about the policy, so the trainer
    leaves it out of its group's statistics (advantage 0) rather than relying on this value.
    """
    if _no_answer(trajectory):
        return config.malformed if is_malformed(trajectory) else config.no_answer
    if correct is None:
        raise ValueError("correct=None: the episode answered, so the judge's verdict (True/False) is needed")
    calls = trajectory.tool_calls
    if correct:
        visual = any(call.valid and call.name in config.visual_tools for call in calls)
        return config.correct * (config.visual_tool_multiplier if visual else 1.0)
    if any(call.repeat >= 1 and call.name in config.search_speech_tools for call in calls):
        return config.wrong_repeated_search
    stage = trajectory.answer_stage or ("stage2" if trajectory.multi_turn else "stage1")
    return config.wrong_after_tools if stage == "stage2" else config.wrong_direct


def episode_reward(trajectory: Trajectory, correct: bool | None, step_verdicts: Sequence[bool] = (),
                   config: RewardConfig = RewardConfig()) -> RewardBreakdown:
    """Every term for one episode; ``.total`` is the return GRPO normalises within its group.

    ``step_verdicts``: the step judge's verdict on each tool call, in order (empty: not judged).
    """
    if len(step_verdicts) > len(trajectory.tool_calls):
        raise ValueError(f"step_verdicts has {len(step_verdicts)} verdicts for {len(trajectory.tool_calls)} "
                         "tool calls: give at most one per call")
    return RewardBreakdown(format=format_reward(trajectory, config), tool_repeat=repeat_penalty(trajectory, config),
                           invalid_args=invalid_args_penalty(trajectory, config),
                           tool_step=tool_step_reward(step_verdicts, config),
                           accuracy=accuracy_reward(trajectory, correct, config))


def turn_cap_for_step(step: int, config: RewardConfig = RewardConfig()) -> int:
    """The Stage-2 turn cap for 0-based optimizer ``step``: 5 for the first 100 steps, then 10."""
    if step < 0:
        raise ValueError(f"step must be >= 0 (0-based optimizer steps), got {step}")
    return config.turn_cap_early if step < config.turn_cap_switch_step else config.turn_cap_late

