"""Composed rewards: advantages from several reward parts, and how much of the advantage each part makes.

`parts` is a [B, K] tensor (row i, part k: the raw value of part k for trajectory i), `weights` K numbers,
`groups` a group size or one group id per row (vlmrl.algos.groups; groups may differ in size).

Two aggregations (`reward.aggregation` in a recipe):

- ``sum_then_normalize`` (GRPO as it always was): the weighted sum ``r = sum_k w_k r_k`` is z-scored within its
  group, ``(r - mean_g) / (std_g + eps)`` (``scale="none"``, Dr.GRPO: ``r - mean_g``). A part whose values spread
  100x wider than another's makes ~all of the advantage.
- ``normalize_then_sum`` (GDPO, Liu et al. 2026; TRL's ``multi_objective_aggregation``): each part is z-scored
  within its group on its own, ``z_k = (r_k - mean_g(r_k)) / (std_g(r_k) + eps)``, the z's are weighted and
  summed, ``s = sum_k w_k z_k``, and the sum is normalised over the batch, ``(s - mean(s)) / (std(s) + eps)``,
  so the advantage's scale does not grow with the number of parts. Each part then moves the advantage in
  proportion to its weight, whatever its unit or spread. With ``scale="none"`` (Dr.GRPO, which never divides
  by a group's std so that easy or hard prompts are not up-weighted) a part is centred within its group and
  divided by one batch-wide std of its centred values instead.

Stds are unbiased (torch's default); a group whose values are all equal gives 0 (never NaN), as in
`grpo_advantages`. Batch statistics are over the rows in `rows` (default all), e.g. the rows that train.

`part_contributions` splits an advantage into one column per part (they sum to it): both aggregations are
linear in the parts once the group and batch statistics are fixed. `variance_shares` turns the columns into
each part's share of the advantage variance.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vlmrl.algos.groups import group_members, per_group, to_rows, unbiased_std

AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def _check(parts: torch.Tensor, weights, aggregation: str, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none' (Dr.GRPO), got {scale!r}")
    p = parts if parts.is_floating_point() else parts.float()
    if p.dim() != 2:
        raise ValueError(f"expected parts as a [B, K] tensor (one column per reward part), got shape {tuple(p.shape)}")
    w = torch.as_tensor(weights, dtype=p.dtype)
    if w.dim() != 1 or w.shape[0] != p.shape[1]:
        raise ValueError(f"expected one weight per part ({p.shape[1]}), got {list(w.shape)}")
    return p, w


def _rows(rows, n: int) -> torch.Tensor:
    if rows is None:
        return torch.ones(n, dtype=torch.bool)
    r = torch.as_tensor(rows, dtype=torch.bool)
    if r.shape != (n,):
        raise ValueError(f"rows must be one flag per row ({n}), got shape {tuple(r.shape)}")
    return r if bool(r.any()) else torch.ones(n, dtype=torch.bool)


def _centered(x: torch.Tensor, members: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """x - its group mean, and a per-row flag: the row's group is constant (then the centred value is 0)."""
    n = x.shape[0]
    c = x - to_rows(per_group(x, members, lambda b: b.mean(dim=1)), members, n)
    constant = to_rows(per_group(x, members, lambda b: b.amax(dim=1) == b.amin(dim=1)), members, n)
    return c.masked_fill(constant, 0.0), constant


def _batch_std(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    v = x[rows]
    return v.std() if v.numel() > 1 else x.new_zeros(())


def part_contributions(parts: torch.Tensor, weights: Sequence[float] | torch.Tensor, groups: int | torch.Tensor,
                       aggregation: str = "sum_then_normalize", scale: str = "group", eps: float = 1e-6,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K]: part k's contribution to each row's advantage; the row sums are the advantages (see module doc).

    sum_then_normalize: ``w_k (r_k - mean_g(r_k)) / (std_g(r) + eps)`` with r the weighted sum (no division for
    scale="none"); 0 in a group whose weighted sum is constant.
    normalize_then_sum: ``w_k (z_k - mean(z_k)) / (std(s) + eps)`` with z_k the part's group z-score (or, for
    scale="none", its group-centred values over their batch std) and s = sum_k w_k z_k; mean and std over `rows`.
    """
    p, w = _check(parts, weights, aggregation, scale)
    n, k = p.shape
    members = group_members(groups, n)
    if n == 0 or k == 0:
        return p.new_zeros(n, k)
    if aggregation == "sum_then_normalize":
        total = (p * w).sum(dim=1)
        centered = p - torch.stack([to_rows(per_group(p[:, j], members, lambda b: b.mean(dim=1)), members, n)
                                    for j in range(k)], dim=1)
        contrib = centered * w
        if scale == "group":
            contrib = contrib / (to_rows(per_group(total, members, unbiased_std), members, n) + eps).unsqueeze(1)
        constant = to_rows(per_group(total, members, lambda b: b.amax(dim=1) == b.amin(dim=1)), members, n)
        return contrib.masked_fill(constant.unsqueeze(1), 0.0)
    keep = _rows(rows, n)
    cols = []
    for j in range(k):
        c, _ = _centered(p[:, j], members)
        if scale == "group":
            c = c / (to_rows(per_group(p[:, j], members, unbiased_std), members, n) + eps)
        else:
            c = c / (_batch_std(c, keep) + eps)
        cols.append(c)
    z = torch.stack(cols, dim=1) * w
    s = z.sum(dim=1)
    z = z - z[keep].mean(dim=0)
    return z / (_batch_std(s, keep) + eps)


def composed_advantages(parts: torch.Tensor, weights: Sequence[float] | torch.Tensor, groups: int | torch.Tensor,
                        aggregation: str = "sum_then_normalize", scale: str = "group", eps: float = 1e-6,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence advantages [B] of a composed reward (module doc). sum_then_normalize is exactly
    ``grpo_advantages(sum_k w_k r_k, groups, scale, eps)``."""
    if aggregation == "sum_then_normalize":
        from vlmrl.algos.advantages import grpo_advantages

        p, w = _check(parts, weights, aggregation, scale)
        return grpo_advantages((p * w).sum(dim=1), groups, scale, eps)
    return part_contributions(parts, weights, groups, aggregation, scale, eps, rows).sum(dim=1)


def variance_shares(contributions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[K]: part k's share of the variance of the advantage A = sum_k c_k over `rows`, Cov(c_k, A) / Var(A).

    The shares sum to 1; a part pulling against the others has a negative share. NaN when Var(A) is 0 (no part
    moves the advantage)."""
    if contributions.dim() != 2:
        raise ValueError(f"expected contributions as a [B, K] tensor, got shape {tuple(contributions.shape)}")
    c = contributions[_rows(rows, contributions.shape[0])].double()
    a = c.sum(dim=1)
    var = ((a - a.mean()) ** 2).sum()
    if c.shape[0] < 2 or var <= 0:
        return torch.full((c.shape[1],), float("nan"), dtype=contributions.dtype)
    cov = ((c - c.mean(dim=0)) * (a - a.mean()).unsqueeze(1)).sum(dim=0)
    return (cov / var).to(contributions.dtype)


def part_group_std(parts: torch.Tensor, groups: int | torch.Tensor) -> torch.Tensor:
    """[K]: each part's within-group std (unbiased), averaged over the groups of two or more rows (0 if none):
    the spread that normalize_then_sum divides by."""
    p = parts if parts.is_floating_point() else parts.float()
    if p.dim() != 2:
        raise ValueError(f"expected parts as a [B, K] tensor, got shape {tuple(p.shape)}")
    members = [m for m in group_members(groups, p.shape[0]) if len(m) > 1]
    if not members:
        return p.new_zeros(p.shape[1])
    return torch.stack([per_group(p[:, j], members, unbiased_std).mean() for j in range(p.shape[1])])


def signal_group_std(parts: torch.Tensor, weights: Sequence[float] | torch.Tensor, groups: int | torch.Tensor,
                     aggregation: str = "sum_then_normalize") -> torch.Tensor:
    """[num_groups]: the spread a group-filter compares with its threshold (DAPO's dynamic sampling, the logged
    zero-std fraction). sum_then_normalize: the std of the weighted sum (as always); normalize_then_sum: the
    largest std of a part with a non-zero weight, since any part that varies gives the group an advantage."""
    p, w = _check(parts, weights, aggregation, "group")
    members = group_members(groups, p.shape[0])
    if aggregation == "sum_then_normalize" or p.shape[1] == 0:
        return per_group((p * w).sum(dim=1), members, unbiased_std)
    stds = torch.stack([per_group(p[:, j], members, unbiased_std) for j in range(p.shape[1]) if float(w[j]) != 0]
                       or [p.new_zeros(len(members))], dim=1)
    return stds.amax(dim=1)
