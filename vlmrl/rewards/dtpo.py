"""DTPO (AdaptVision) rewards, computed per group (the samples of one prompt, by group id or consecutive
blocks): the outcome reward R_oc and the tool reward R_tool.

R_oc = acc' + w_fmt * fmt, acc' = 0.9 * acc when a tool was called; a correct direct answer also gets
0.9 when 0 < r < theta, r = (#correct direct) / (#correct) in its group (the balance rule).
R_tool (tool-calling trajectories only, else 0) = w_crop * crop_ok - w_area * clip(a / mu_a - 1, 0, 1),
the area term only for correct and crop_ok trajectories, mu_a = mean a over those in the group;
a = crop area / image area (the same fraction in seen or original pixels: the mapping is per-axis linear).
Boxes are (x1, y1, x2, y2) in original-image pixels.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from vlmrl.algos.groups import group_members
from vlmrl.rewards.accuracy import accuracy_reward
from vlmrl.rewards.format import format_reward
from vlmrl.rollout.tools.crop import box_coverage  # area(crop ∩ gt) / area(gt); 0 for a gt box without area

Box = Sequence[float]
CropJudge = Callable[[dict, list], "float | bool | None"]  # (sample, crops) -> crop_ok, None = unjudged


def box_area(box: Box) -> float:
    """Area of an (x1, y1, x2, y2) box; 0 when degenerate."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def crop_coverage(crops: Sequence[Box], gt_boxes: Sequence[Box]) -> float:
    """Best coverage of any ground-truth box by any crop (0 when either list is empty)."""
    return max((box_coverage(c, g) for c in crops for g in gt_boxes), default=0.0)


def judge_crop(crops: Sequence[Box], sample: dict, judge: CropJudge | None = None,
               threshold: float = 0.5) -> tuple[float, bool]:
    """(crop_ok, judged). With sample["meta"]["gt_boxes"]: coverage >= threshold. Without boxes: the
    judge callable's verdict; no judge (or a None verdict) gives (0.0, False), counted as unjudged.
    A tool call without a valid crop is (0.0, True)."""
    if not crops:
        return 0.0, True
    gt_boxes = (sample.get("meta") or {}).get("gt_boxes")
    if gt_boxes:
        return float(crop_coverage(crops, gt_boxes) >= threshold), True
    verdict = judge(sample, list(crops)) if judge is not None else None
    return (0.0, False) if verdict is None else (float(verdict), True)


def crop_area_fraction(crops: Sequence[Box], image_size: tuple[int, int]) -> float:
    """Sum of the crops' areas / image area (W*H); several crops add up."""
    w, h = image_size
    return sum(box_area(c) for c in crops) / float(w * h)


def dtpo_rewards(acc: Sequence[float], fmt: Sequence[float], tool_called: Sequence[bool],
                 crop_ok: Sequence[float], area: Sequence[float], groups: int | torch.Tensor | Sequence[int],
                 w_fmt: float = 0.5, tool_discount: float = 0.9, theta: float = 0.2, w_crop: float = 0.1,
                 w_area: float = 0.2) -> dict[str, list[float]]:
    """Per-trajectory "outcome" and "tool" rewards plus logged parts. `groups`: a group size (consecutive
    blocks) or one group id per row (see vlmrl.algos.groups)."""
    n = len(acc)
    if not all(len(x) == n for x in (fmt, tool_called, crop_ok, area)):
        raise ValueError(f"dtpo_rewards: acc, fmt, tool_called, crop_ok and area must be equally long, got "
                         f"{[len(x) for x in (acc, fmt, tool_called, crop_ok, area)]}")
    try:
        members = group_members(groups, n)
    except ValueError as e:
        raise ValueError(f"dtpo_rewards: {n} rows: {e}") from None
    out = {k: [0.0] * n for k in ("outcome", "tool", "acc_adjusted", "balance_applied", "area_penalty", "direct_ratio")}
    for m in members:
        rows = m.tolist()
        correct = [i for i in rows if acc[i] > 0.5]
        direct_correct = [i for i in correct if not tool_called[i]]
        r = len(direct_correct) / len(correct) if correct else 0.0
        balance = 0.0 < r < theta
        good = [i for i in correct if tool_called[i] and crop_ok[i] > 0.5]
        mu_a = sum(area[i] for i in good) / len(good) if good else 0.0
        for i in rows:
            discount = tool_called[i] or (balance and i in direct_correct)
            acc_adj = tool_discount * acc[i] if discount else float(acc[i])
            penalty = min(max(area[i] / mu_a - 1.0, 0.0), 1.0) if (i in good and mu_a > 0) else 0.0
            out["acc_adjusted"][i] = acc_adj
            out["outcome"][i] = acc_adj + w_fmt * fmt[i]
            out["tool"][i] = w_crop * crop_ok[i] - w_area * penalty if tool_called[i] else 0.0
            out["balance_applied"][i] = float(balance and i in direct_correct)
            out["area_penalty"][i] = penalty
            out["direct_ratio"][i] = r
    return out


def dtpo_group_rewards(items: Sequence[dict], groups: int | torch.Tensor | Sequence[int],
                       judge: CropJudge | None = None, accuracy_fn: Callable[[str, dict], dict] = accuracy_reward,
                       format_fn: Callable[[str, dict], dict] = format_reward,
                       **weights) -> dict[str, list[float]]:
    """dtpo_rewards from raw trajectories. Each item: "response" (final assistant text), "sample" (the
    reward-fn sample dict with "turns", "tool_calls", "meta"), "crops" (boxes in original pixels) and
    "image_size" (W, H) of the original image; optionally "area" (the area term's `a`, e.g. AdaptVision's
    raw-box ratio), else the crops' area over the image's. Adds parts accuracy, format, crop_ok, area, unjudged."""
    acc, fmt, called, ok, area, unjudged = [], [], [], [], [], []
    for it in items:
        sample, crops = it["sample"], list(it.get("crops") or [])
        acc.append(float(accuracy_fn(it["response"], sample)["reward"]))
        fmt.append(float(format_fn(it["response"], sample)["reward"]))
        called.append(int(sample.get("tool_calls") or 0) > 0)
        crop_ok, judged = judge_crop(crops, sample, judge) if called[-1] else (0.0, True)
        ok.append(crop_ok)
        unjudged.append(float(not judged))
        if "area" in it:
            area.append(float(it["area"]))
        else:
            area.append(crop_area_fraction(crops, it["image_size"]) if crops else 0.0)
    out = dtpo_rewards(acc, fmt, called, ok, area, groups, **weights)
    out.update(accuracy=acc, format=fmt, tool_called=[float(c) for c in called], crop_ok=ok, area=area,
               unjudged=unjudged)
    return out
