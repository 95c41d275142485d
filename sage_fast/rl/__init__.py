"""Reinforcement learning for SAGE-MM: the paper's rewards and the multi-turn GRPO loss (DESIGN.md §2).

``rewards`` scores a finished :class:`~sage_fast.agent.trajectory.Trajectory` (format, repeated and
invalid tool calls, the step judge's verdicts, final accuracy); ``grpo`` turns episode returns into
group-normalised advantages on every turn-sample and computes the clipped policy loss with a KL to
the reference model over packed rows of turn-samples; ``shared_prefix`` packs a GRPO group's
samples that repeat one prompt (Stage-1: same question, same frames) with that prompt once per row.
"""

from sage_fast.rl.grpo import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    GRPOLossConfig,
    group_advantages,
    grpo_loss,
    kl_penalty,
    packed_token_logprobs,
    sample_index_for_lengths,
    token_advantages,
    token_logprobs,
    turn_advantages,
)
from sage_fast.rl.rewards import (
    SEARCH_SPEECH_TOOLS,
    VISUAL_TOOLS,
    RewardBreakdown,
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

__all__ = ["KL_ESTIMATORS", "LOSS_AGGREGATIONS", "SEARCH_SPEECH_TOOLS", "VISUAL_TOOLS", "GRPOLossConfig",
           "RewardBreakdown", "RewardConfig", "accuracy_reward", "episode_reward", "format_reward", "grpo_loss",
           "group_advantages", "invalid_args_penalty", "is_malformed", "kl_penalty", "packed_token_logprobs",
           "repeat_penalty", "sample_index_for_lengths", "token_advantages", "token_logprobs", "tool_step_reward",
           "turn_advantages", "turn_cap_for_step"]
