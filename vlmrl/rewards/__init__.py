"""Rewards: answer extraction, accuracy by answer type, format, DTPO outcome/tool rewards, registry, and composed
rewards (several weighted parts, batch and async reward functions with timeouts: vlmrl.rewards.compose)."""

from vlmrl.rewards.accuracy import (
    ANSWER_TYPES,
    accuracy_reward,
    math_match,
    normalize_text,
    number_match,
    parse_choice,
    parse_number,
    score_answer,
)
from vlmrl.rewards.dtpo import (
    box_coverage,
    crop_area_fraction,
    crop_coverage,
    dtpo_group_rewards,
    dtpo_rewards,
    judge_crop,
)
from vlmrl.rewards.extract import extract_answer, extract_boxed
from vlmrl.rewards.format import (
    format_direct,
    format_official,
    format_reward,
    format_reward_official,
    format_tool,
    format_tool_call_turn,
)
from vlmrl.rewards.registry import (
    RewardFn,
    available_rewards,
    call_reward,
    get_reward,
    load_reward_fn,
    register_reward,
)
from vlmrl.rewards.compose import ComposedReward, batch_reward, dtpo_accuracy, dtpo_tool, score_parts

__all__ = [
    "ANSWER_TYPES",
    "ComposedReward",
    "batch_reward",
    "dtpo_accuracy",
    "dtpo_tool",
    "score_parts",
    "RewardFn",
    "accuracy_reward",
    "available_rewards",
    "box_coverage",
    "call_reward",
    "crop_area_fraction",
    "crop_coverage",
    "dtpo_group_rewards",
    "dtpo_rewards",
    "extract_answer",
    "extract_boxed",
    "format_direct",
    "format_official",
    "format_reward",
    "format_reward_official",
    "format_tool",
    "format_tool_call_turn",
    "get_reward",
    "judge_crop",
    "load_reward_fn",
    "math_match",
    "normalize_text",
    "number_match",
    "parse_choice",
    "parse_number",
    "register_reward",
    "score_answer",
]
