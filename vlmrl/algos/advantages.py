"""Group-relative advantages: GRPO / Dr.GRPO per sequence, DTPO per token.

`groups` is a group size G (rows are consecutive blocks of G, the samples of one prompt) or one group id per
row (groups of any sizes, in any order; see vlmrl.algos.groups).
"""

from __future__ import annotations

import torch

from vlmrl.algos.groups import group_members, per_group, to_rows, unbiased_std


def grpo_advantages(rewards: torch.Tensor, groups: int | torch.Tensor, scale: str = "group",
                    eps: float = 1e-6) -> torch.Tensor:
    """Per-sequence advantages [B]: (r - mean_g) / (std_g + eps) for scale="group", r - mean_g for "none".

    The std is unbiased (torch's default). A group whose rewards are all equal gets exactly 0 (also a group of
    one, where the unbiased std is undefined); never NaN.
    """
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none' (Dr.GRPO), got {scale!r}")
    r = rewards if rewards.is_floating_point() else rewards.float()
    if r.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of rewards, got shape {tuple(r.shape)}")
    n = r.shape[0]
    members = group_members(groups, n)
    adv = r - to_rows(per_group(r, members, lambda b: b.mean(dim=1)), members, n)
    if scale == "group":
        adv = adv / (to_rows(per_group(r, members, unbiased_std), members, n) + eps)
    constant = per_group(r, members, lambda b: b.amax(dim=1) == b.amin(dim=1))  # mean may be off by an ulp
    return adv.masked_fill(to_rows(constant, members, n), 0.0)


def last_turn_ids(turn_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the largest turn id among its response tokens ([B]; -1 for a row without any)."""
    masked = torch.where(response_mask.bool(), turn_ids, torch.full_like(turn_ids, -1))
    return masked.amax(dim=1)


def final_turn_mask(turn_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B,T]: response tokens of each row's final assistant turn (a direct answer is a final turn)."""
    return response_mask.bool() & (turn_ids == last_turn_ids(turn_ids, response_mask).unsqueeze(1))


def dtpo_advantages(
    outcome_rewards: torch.Tensor,
    tool_rewards: torch.Tensor,
    turn_ids: torch.Tensor,
    response_mask: torch.Tensor,
    groups: int | torch.Tensor,
    tool_weight: float = 0.3,
    eps: float = 1e-6,
    tool_call_turns: torch.Tensor | None = None,
) -> torch.Tensor:
    """DTPO per-token advantages [B,T] from the two z-scored rewards.

    The first assistant turn (id 0) and every turn that ends in a tool call, except the row's final turn, get
    ``A_oc + tool_weight * A_tool``; other assistant turns get ``A_oc``; tokens with response_mask 0 get 0.
    The final turn (the largest turn id among the row's response tokens) gets ``A_oc`` alone even when it is a
    tool call cut off at the turn cap, as AdaptVision's turn 2 (verl/trainer/ppo/core_algos.py:224-232 there).
    ``tool_call_turns`` is bool [B, max_turns], True where assistant turn k of row b ends in a tool call.
    Default (None): every turn of a row except its last one is a tool-call turn.
    """
    a_oc = grpo_advantages(outcome_rewards, groups, "group", eps)
    a_tool = grpo_advantages(tool_rewards, groups, "group", eps)
    return dtpo_mix(a_oc, a_tool, turn_ids, response_mask, tool_weight, tool_call_turns)


def dtpo_mix(a_oc: torch.Tensor, a_tool: torch.Tensor, turn_ids: torch.Tensor, response_mask: torch.Tensor,
             tool_weight: float = 0.3, tool_call_turns: torch.Tensor | None = None) -> torch.Tensor:
    """DTPO's per-token mix [B,T] of per-sequence outcome and tool advantages [B] (however they were computed,
    e.g. from composed reward parts): the turns of `dtpo_advantages` get ``a_oc + tool_weight * a_tool``, the
    other assistant turns ``a_oc``, non-policy tokens 0."""
    resp = response_mask.bool()
    not_final = turn_ids < last_turn_ids(turn_ids, response_mask).unsqueeze(1)
    if tool_call_turns is None:
        is_tool_turn = not_final
    else:
        n_turns = tool_call_turns.shape[1]
        bad = resp & ((turn_ids < 0) | (turn_ids >= n_turns))
        if bad.any():
            raise ValueError(f"response tokens carry turn ids outside [0, {n_turns}) of tool_call_turns")
        is_tool_turn = tool_call_turns.bool().gather(1, turn_ids.long().clamp(0, n_turns - 1)) & not_final
    boosted = (turn_ids == 0) | is_tool_turn
    adv = a_oc.unsqueeze(1) + tool_weight * a_tool.unsqueeze(1) * boosted.to(a_oc.dtype)
    return adv * resp.to(adv.dtype)
