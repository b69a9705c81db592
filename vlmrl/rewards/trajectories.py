"""Rewards for whole rollout batches: from trajectories (grouped per prompt) to totals and parts.

Two schemes, chosen by `reward.name` in a recipe:
- `accuracy_format` (GRPO family): total = accuracy + format_weight * format, per trajectory;
- `dtpo` (AdaptVision): outcome and tool rewards computed per group (vlmrl.rewards.dtpo);
- any other name: a registered or user reward fn `fn(response, sample) -> float | dict` (see registry), or a
  batch fn (vlmrl.rewards.compose.batch_reward).

Several parts with weights (a recipe's `reward.parts`) are scored by vlmrl.rewards.compose, which this uses.

A reward fn that raises or returns NaN/inf gives that trajectory reward 0; the count is returned in
`parts["reward_errors"]` and logged, so a broken reward function is visible, not fatal.
"""

from __future__ import annotations

from vlmrl.rewards.compose import dtpo_items, legacy_parts, reward_sample, score_parts
from vlmrl.rewards.dtpo import dtpo_group_rewards
from vlmrl.rewards.format import format_fn

__all__ = ["reward_sample", "score_trajectories"]


def score_trajectories(trajs: list, groups, name: str = "accuracy_format", format_weight: float = 0.5,
                       format_style: str = "strict", area_from: str = "crop",
                       **dtpo_weights) -> tuple[list[float], dict[str, list[float]]]:
    """Totals (one per trajectory) and named parts (lists of the same length) for a rollout batch. `groups`
    (a group size, or one group id per trajectory, e.g. `[t.group_id for t in trajs]`) matters only to the
    per-group DTPO rewards. `format_style`: strict | official (vlmrl.rewards.format). `area_from` (DTPO's area
    term): "crop", the cut region over the original image; "raw", AdaptVision's ratio of the box as written (the
    crop tools' record "area_raw")."""
    fmt_fn = format_fn(format_style)
    if name == "dtpo":
        items = dtpo_items([t.final_text for t in trajs], [reward_sample(t) for t in trajs], area_from)
        out = dtpo_group_rewards(items, groups, w_fmt=format_weight, format_fn=fmt_fn, **dtpo_weights)
        total = [o + tl for o, tl in zip(out["outcome"], out["tool"])]
        parts = {k: [float(x) for x in v] for k, v in out.items()}
        parts["reward_errors"] = [0.0] * len(trajs)
        return total, parts
    return score_parts(trajs, groups, legacy_parts(name, format_weight, format_style))
