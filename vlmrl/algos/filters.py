"""Group filters for dynamic sampling: keep groups that carry a learning signal.

`groups` is a group size G (consecutive blocks) or one group id per row (see vlmrl.algos.groups); results
are one per group, in group order (increasing id).
"""

from __future__ import annotations

import torch

from vlmrl.algos.groups import group_members, per_group, to_rows, unbiased_std


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


def group_std(rewards: torch.Tensor, groups: int | torch.Tensor) -> torch.Tensor:
    """Unbiased std per group [num_groups]; 0 for a group of one (never NaN)."""
    r = _float(rewards)
    return per_group(r, group_members(groups, r.shape[0]), unbiased_std)


def dynamic_sampling_keep(rewards: torch.Tensor, groups: int | torch.Tensor, min_std: float = 1e-4) -> torch.Tensor:
    """Bool [num_groups]: True where the group's total-reward std is >= min_std (DAPO)."""
    return group_std(rewards, groups) >= min_std


def zero_std_fraction(rewards: torch.Tensor, groups: int | torch.Tensor, min_std: float = 1e-4) -> float:
    """Fraction of groups whose total-reward std is below min_std (log it every step)."""
    return float((~dynamic_sampling_keep(rewards, groups, min_std)).float().mean())


def accuracy_window_keep(acc: torch.Tensor, groups: int | torch.Tensor, low: float = 0.01,
                         high: float = 0.99) -> torch.Tensor:
    """Bool [num_groups]: True where low < mean group accuracy < high (PAPO-D; both ends exclusive)."""
    a = _float(acc)
    mean = per_group(a, group_members(groups, a.shape[0]), lambda b: b.mean(dim=1))
    return (mean > low) & (mean < high)


def expand_group_keep(keep: torch.Tensor, groups: int | torch.Tensor) -> torch.Tensor:
    """Bool [num_groups] -> bool [B]: each group's flag on each of its rows."""
    if isinstance(groups, int) and not isinstance(groups, bool):
        if groups < 1:
            raise ValueError(f"group_size must be >= 1, got {groups}")
        return keep.repeat_interleave(groups)
    ids = torch.as_tensor(groups)
    if ids.dim() != 1:
        raise ValueError(f"group ids must be a 1-D tensor with one id per row, got shape {tuple(ids.shape)}")
    members = group_members(ids, ids.shape[0])
    if len(members) != keep.shape[0]:
        raise ValueError(f"expand_group_keep: {keep.shape[0]} flags for {len(members)} groups")
    return to_rows(keep, members, ids.shape[0])
