"""One step's rollout batch as padded tensors, built once from the trajectories, and its micro-batches.

Every per-token tensor of `RolloutBatch` is [N, T], left padded as `Policy.collate` lays a batch out: row b's
token i sits in column T - len(b) + i. A set of rows is a row slice with the leading all-padding columns cut
(`RolloutBatch.take`), which is exactly the left-padded tensor of those rows alone, so a micro-batch's values
are the same whichever batch it is cut from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlmrl.models.policy import Seq


def left_pad(rows: list[list[float]], value: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """Lists of per-token values -> [N, T] tensor, left padded (the layout of Policy.collate)."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, T - len(r):] = torch.as_tensor(r, dtype=dtype)
    return out


def micro_batches(idx: list[int], lengths: list[int], size: int, groups: list[int] | None = None) -> list[list[int]]:
    """Split the rows `idx` into batches of at most `size`, as positions in `idx` (row `idx[k]` has
    `lengths[idx[k]]` tokens). Sorted by length, so a batch pads little; with `groups` (row i's group id is
    `groups[i]`), sorted by group first, so a group's rows share a batch and its prompt runs once
    (Policy.logprobs share_prefix) where the batch size allows."""
    order = sorted(range(len(idx)), key=lambda k: (groups[idx[k]] if groups is not None else 0, lengths[idx[k]]))
    return [order[s:s + size] for s in range(0, len(order), size)]


@dataclass
class RolloutBatch:
    """The trajectories of one step, padded once. `loss_mask` is the response mask with the rows that do not
    count in the loss zeroed (filtered groups, unfinished trajectories); `advantages`, `ref_logp` and
    `masked_logp` are filled by the trainer when its algorithm uses them."""

    seqs: list[Seq]  # each row's token ids and vision inputs (what Policy.logprobs reads)
    lengths: list[int]
    group_ids: torch.Tensor  # [N] long
    response_mask: torch.Tensor  # [N, T] long
    loss_mask: torch.Tensor  # [N, T] long
    turn_ids: torch.Tensor  # [N, T] long, -1 on the prompt and on padding
    old_logp: torch.Tensor  # [N, T] float32: the sampling-time log-probs
    advantages: torch.Tensor | None = None  # [N, T] float32
    ref_logp: torch.Tensor | None = None  # [N, T] float32: the reference model's (kl_coef > 0)
    masked_logp: torch.Tensor | None = None  # [N, T] float32: PAPO's masked-image pass without grad
    masked_vision: list | None = field(default=None, repr=False)  # PAPO: per row, the masked images' inputs
    tis_weight: torch.Tensor | None = None  # [N, T] float32: truncated importance weights (vllm.tis_cap)

    @classmethod
    def from_trajectories(cls, trajs: list, keep_row: list[bool]) -> "RolloutBatch":
        """Pad the trajectories' per-token lists; rows with keep_row False get an all-zero loss mask."""
        if not trajs or len(keep_row) != len(trajs):
            raise ValueError(f"a rollout batch needs one keep flag per trajectory, got {len(keep_row)} for "
                             f"{len(trajs)} trajectories")
        response = left_pad([t.response_mask for t in trajs], 0, torch.long)
        keep = torch.tensor(keep_row, dtype=torch.bool).unsqueeze(1)
        return cls(seqs=[Seq(t.ids, t.vision) for t in trajs], lengths=[len(t.ids) for t in trajs],
                   group_ids=torch.tensor([t.group_id for t in trajs], dtype=torch.long),
                   response_mask=response, loss_mask=response * keep,
                   turn_ids=left_pad([t.turn_ids for t in trajs], -1, torch.long),
                   old_logp=left_pad([t.logprobs for t in trajs]))

    def __len__(self) -> int:
        return len(self.seqs)

    def take(self, x: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Rows `rows` of a [N, T] tensor of this batch, left padded to their own longest length."""
        width = max(self.lengths[i] for i in rows)
        return x[rows][:, x.shape[1] - width:]

    def row(self, x: torch.Tensor, i: int) -> list:
        """Row i of a [N, T] tensor of this batch without its padding, as a list (one value per token)."""
        return x[i, x.shape[1] - self.lengths[i]:].tolist()

    def put(self, x: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
        """Write `values` (the left-padded [len(rows), T'] tensor of those rows, T' >= their lengths) into x."""
        for k, i in enumerate(rows):
            n = self.lengths[i]
            x[i, x.shape[1] - n:] = values[k, values.shape[1] - n:]
