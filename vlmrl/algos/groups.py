"""Which rows of a batch belong to which group (the samples of one prompt), and statistics per group.

A `groups` argument is either an int G (rows are consecutive blocks of G, the layout of a rollout with the
same number of samples per prompt) or one group id per row (a 1-D integer tensor or list of length B; ids need
not be consecutive, sorted or equally frequent, so prompts may have different numbers of samples). Per-group
results come one per distinct id, in increasing id order (block order for an int).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

def group_members(groups: int | torch.Tensor | Sequence[int], n: int) -> list[torch.Tensor]:
    """Row indices (LongTensors) of each group of a batch of `n` rows, in group order; ValueError on bad input."""
    if isinstance(groups, bool):
        raise ValueError(f"groups must be a group size or one group id per row, got {groups!r}")
    if isinstance(groups, int):
        if groups < 1:
            raise ValueError(f"group_size must be >= 1, got {groups}")
        if n % groups:
            raise ValueError(f"expected a 1-D tensor whose length is a multiple of group_size={groups}, got {n} rows")
        return [torch.arange(s, s + groups) for s in range(0, n, groups)]
    ids = torch.as_tensor(groups)
    integer = not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)
    if ids.dim() != 1 or ids.shape[0] != n or (n and not integer):
        raise ValueError(f"group ids must be a 1-D integer tensor with one id per row ({n} rows), "
                         f"got shape {tuple(ids.shape)} dtype {ids.dtype}")
    return [torch.nonzero(ids == g).flatten() for g in torch.unique(ids)]


def per_group(x: torch.Tensor, members: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """[num_groups]: `fn` reduces a [k, size] block of rows (one group per row) along dim 1. Groups of one size
    run as one block (the same arithmetic as a reshape of consecutive groups); unequal groups one at a time."""
    if x.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of per-row values, got shape {tuple(x.shape)}")
    if len({len(m) for m in members}) <= 1:
        return fn(x[torch.cat(members)].view(len(members), -1)) if members else x.new_zeros(0)
    return torch.cat([fn(x[m].view(1, -1)) for m in members])


def to_rows(values: torch.Tensor, members: list[torch.Tensor], n: int) -> torch.Tensor:
    """[num_groups] -> [n]: each group's value on each of its rows."""
    out = values.new_empty(n)
    for v, m in zip(values, members):
        out[m] = v
    return out


def unbiased_std(block: torch.Tensor) -> torch.Tensor:
    """Per-row unbiased std of a [k, size] block; 0 for groups of one (never NaN)."""
    return block.std(dim=1) if block.shape[1] > 1 else torch.zeros(block.shape[0], dtype=block.dtype,
                                                                    device=block.device)
