"""The rollout scheduler's vocabulary: config, decision/event codes, shared by the C++ core and the fallback.

The numbers are the C++ core's (csrc/scheduler/scheduler.h); a decision is the plain tuple
``(kind, episode, group, aux, time)`` in both implementations so their logs compare with ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple


class DecisionKind(IntEnum):
    ADMIT = 0  # generate the episode's next turn (aux = turn index)
    START_TOOL = 1  # run the tool the turn asked for (aux = turn index)
    TOOL_TIMEOUT = 2  # cut the tool; the episode goes on with an error result (aux = turn index)
    FINISH = 3  # the episode is over (aux = FinishReason)
    GROUP_COMPLETE = 4  # every episode of the GRPO group is over (episode = -1)
    PREPARE = 5  # set the episode up (a prepare group's start); tool_finished queues its first turn


class FinishReason(IntEnum):
    ANSWERED = 0
    TURN_CAP = 1
    TIMEOUT = 2
    CANCELLED = 3
    FAILED = 4


class TurnAction(IntEnum):
    ANSWER = 0  # the turn ended the episode
    TOOL = 1  # the turn asked for a tool
    CONTINUE = 2  # no tool and no answer: the next turn follows at once


class EpisodeState(IntEnum):
    PENDING = 0
    READY = 1
    GENERATING = 2
    IN_TOOL = 3
    DONE = 4


class EventCode(IntEnum):
    ADD_GROUP = 0  # a = size, b = cost, c = prepare (0/1)
    TURN_FINISHED = 1  # a = episode, b = action, c = next cost
    TOOL_FINISHED = 2  # a = episode, b = next cost
    ADVANCE = 3
    FAIL = 4  # a = episode
    CANCEL = 5  # a = episode
    CANCEL_GROUP = 6  # a = group
    FINISH = 7  # a = episode, b = reason


class Decision(NamedTuple):
    """Readable view of a decision tuple (the cores return plain tuples; ``Decision(*t)`` names them)."""

    kind: int
    episode: int
    group: int
    aux: int
    time: float


Event = tuple[int, int, int, int, float]  # (code, a, b, c, time)


@dataclass(frozen=True)
class SchedulerConfig:
    """Admission limits and caps. The defaults suit one 8B orchestrator on one 80 GB GPU."""

    max_seqs: int = field(default=64, metadata={"help": "sequences generating at once (the engine's batch)"})
    max_tokens: int = field(default=400_000, metadata={"help": "tokens reserved by generating turns (KV budget)"})
    max_turns: int = field(default=11, metadata={"help": "model calls per episode: Stage-1 + 10 Stage-2 steps"})
    tool_timeout: float = field(default=0.0, metadata={"help": "seconds before a tool is cut; 0 = never"})
    episode_timeout: float = field(default=0.0, metadata={"help": "seconds from an episode's first turn; 0 = never"})
    max_active_groups: int = field(default=0, metadata={"help": "groups started at once; 0 = all"})
    group_priority: bool = field(default=True, metadata={"help": "admit older groups' turns first"})

    def __post_init__(self) -> None:
        if self.max_seqs < 1:
            raise ValueError(f"max_seqs must be >= 1, got {self.max_seqs}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if not (self.tool_timeout >= 0 and self.episode_timeout >= 0):
            raise ValueError("tool_timeout and episode_timeout must be >= 0 seconds (0 = none), got "
                             f"{self.tool_timeout}, {self.episode_timeout}")
        if self.max_active_groups < 0:
            raise ValueError(f"max_active_groups must be >= 0 (0 = no limit), got {self.max_active_groups}")
