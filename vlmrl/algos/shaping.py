"""Reward shaping rules that belong to an algorithm rather than to a reward function.

DAPO's soft overlong punishment (Yu et al. 2025, sec. 3.4, Eq. 13; verl/workers/reward_manager/dapo.py): a response
longer than `max_len - buffer` tokens loses reward linearly, reaching `-penalty` at `max_len`.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """Per-response reward term [B]: min(-(L - (max_len - buffer)) / buffer * penalty, 0); 0 when buffer is 0.

    `lengths` are response lengths in tokens, `max_len` the generation cap, `buffer` (1..max_len) the punished
    stretch of lengths just below the cap."""
    L = lengths if lengths.is_floating_point() else lengths.float()
    if buffer == 0:
        return torch.zeros_like(L)
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}], got {buffer}")
    exceed = L - (max_len - buffer)
    return (-exceed / buffer * penalty).clamp(max=0.0)
