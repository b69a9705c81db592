"""Learning-rate schedules for RL and SFT: linear warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "linear", "cosine")


def check_schedule(kind: str, warmup: int, section: str = "train") -> None:
    """Raise, naming `section`'s keys (train.* or sft.*), unless `kind` is a known schedule and warmup >= 0."""
    if kind not in LR_SCHEDULES or warmup < 0:
        raise ValueError(f"{section}.lr_schedule must be one of {', '.join(LR_SCHEDULES)} and {section}.warmup_steps "
                         f">= 0, got {kind!r} and {warmup}")


def make_scheduler(optimizer, kind: str, warmup: int, total: int, section: str = "train"):
    """Linear warm-up over `warmup` steps, then `kind` (constant, or linear / cosine decay to 0 at `total`)."""
    check_schedule(kind, warmup, section)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - frac
        return 0.5 * (1 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
