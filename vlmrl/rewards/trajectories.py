"""Rewards for whole rollout batches: from trajectories (grouped per prompt) to totals and parts.

Two schemes, chosen by `reward.name` in a recipe:
- `accuracy_format` (GRPO family): total = accuracy + format_weight * format, per trajectory;
- `dtpo` (AdaptVision): outcome and tool rewards computed per group (vlmrl.rewards.dtpo);
- any other name: a registered or user reward fn `fn(response, sample) -> float | dict` (see registry).

A reward fn that raises or returns NaN/inf gives that trajectory reward 0; the count is returned in
`parts["reward_errors"]` and logged, so a broken reward function is visible, not fatal.
"""

from __future__ import annotations

import math
from typing import Any

from vlmrl.rewards.accuracy import accuracy_reward
from vlmrl.rewards.dtpo import dtpo_group_rewards
from vlmrl.rewards.format import format_fn
from vlmrl.rewards.registry import call_reward, get_reward


def reward_sample(t: Any) -> dict:
    """The dict a reward fn receives for a trajectory (see vlmrl.rewards.registry for the contract)."""
    return {"answer": t.answer, "answer_type": t.answer_type, "choices": t.choices, "meta": t.meta,
            "turns": list(t.turns), "tool_calls": len(t.tool_calls), "question": t.question}


def _safe(fn, response: str, sample: dict) -> tuple[float, dict, bool]:
    try:
        r, parts = call_reward(fn, response, sample)
    except Exception:  # noqa: BLE001 - a user reward fn may fail in any way; counted, not fatal
        return 0.0, {}, False
    if not math.isfinite(r):
        return 0.0, parts, False
    return r, parts, True


def score_trajectories(trajs: list, groups, name: str = "accuracy_format", format_weight: float = 0.5,
                       format_style: str = "strict", area_from: str = "crop",
                       **dtpo_weights) -> tuple[list[float], dict[str, list[float]]]:
    """Totals (one per trajectory) and named parts (lists of the same length) for a rollout batch. `groups`
    (a group size, or one group id per trajectory, e.g. `[t.group_id for t in trajs]`) matters only to the
    per-group DTPO rewards. `format_style`: strict | official (vlmrl.rewards.format). `area_from` (DTPO's area
    term): "crop", the cut region over the original image; "raw", AdaptVision's ratio of the box as written (the
    crop tools' record "area_raw")."""
    fmt_fn = format_fn(format_style)
    if area_from not in ("crop", "raw"):
        raise ValueError(f"reward.area_from must be 'crop' or 'raw', got {area_from!r}")
    if name == "dtpo":
        items = [{"response": t.final_text, "sample": reward_sample(t),
                  "crops": [c.box_original for c in t.tool_calls if c.valid],
                  "image_size": t.images[0].original_size} for t in trajs]
        if area_from == "raw":
            for it, t in zip(items, trajs):
                it["area"] = sum(float(c.record.get("area_raw", 0.0)) for c in t.tool_calls if c.valid)
        out = dtpo_group_rewards(items, groups, w_fmt=format_weight, format_fn=fmt_fn, **dtpo_weights)
        total = [o + tl for o, tl in zip(out["outcome"], out["tool"])]
        parts = {k: [float(x) for x in v] for k, v in out.items()}
        parts["reward_errors"] = [0.0] * len(trajs)
        return total, parts
    if name == "accuracy_format":
        fns = [("accuracy", accuracy_reward, 1.0), ("format", fmt_fn, format_weight)]
    else:
        fns = [(name.rsplit(":", 1)[-1], get_reward(name), 1.0)]
    total = [0.0] * len(trajs)
    parts: dict[str, list[float]] = {k: [0.0] * len(trajs) for k, _, _ in fns}
    parts["reward_errors"] = [0.0] * len(trajs)
    for i, t in enumerate(trajs):
        sample = reward_sample(t)
        for key, fn, weight in fns:
            r, extra, ok = _safe(fn, t.final_text, sample)
            parts[key][i] = r
            for k, v in extra.items():  # a user fn's own parts are logged too
                parts.setdefault(k, [0.0] * len(trajs))[i] = v
            parts["reward_errors"][i] += 0.0 if ok else 1.0
            total[i] += weight * r
    if "accuracy" not in parts:  # always log accuracy, whatever the training reward
        parts["accuracy"] = [_safe(accuracy_reward, t.final_text, reward_sample(t))[0] for t in trajs]
    return total, parts
