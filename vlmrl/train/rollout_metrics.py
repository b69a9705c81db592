"""The rollout statistics a training step logs: rewards and their parts, advantages, tool use, lengths, filters."""

from __future__ import annotations

import numpy as np
import torch

from vlmrl.train.batch import RolloutBatch


def rollout_metrics(trajs: list, total: list[float], parts: dict[str, list[float]], batch: RolloutBatch,
                    kept: list[bool]) -> dict:
    """Means and spreads over one step's trajectories; `kept` has one filter verdict per group."""
    tt = torch.tensor(total)
    m = {"reward/mean": tt.mean().item(), "reward/std": tt.std().item() if len(tt) > 1 else 0.0,
         "accuracy": float(np.mean(parts.get("accuracy", [0.0])))}
    for k, v in parts.items():
        v = torch.tensor(v, dtype=torch.float32)
        m[f"reward/{k}/mean"] = v.mean().item()
        m[f"reward/{k}/std"] = v.std().item() if len(v) > 1 else 0.0
    flat = batch.advantages[batch.response_mask.bool()].float()  # policy tokens, row by row
    if flat.numel() == 0:
        flat = torch.zeros(1)
    m.update({"adv/mean": flat.mean().item(), "adv/std": flat.std().item() if len(flat) > 1 else 0.0,
              "adv/min": flat.min().item(), "adv/max": flat.max().item()})
    calls = [t for t in trajs if t.tool_calls]
    m["tool/call_rate"] = len(calls) / len(trajs)
    n_calls = sum(len(t.tool_calls) for t in trajs)
    m["tool/failure_rate"] = sum(not c.valid for t in trajs for c in t.tool_calls) / max(1, n_calls)
    m["visual_tokens_per_sample"] = float(np.mean([t.visual_tokens for t in trajs]))
    m["response_length"] = float(np.mean([t.num_response_tokens for t in trajs]))
    m["truncation_rate"] = float(np.mean([t.finish_reason in ("length", "max_turns") for t in trajs]))
    m["kept_group_frac"] = sum(kept) / max(1, len(kept))
    m["num_trajectories"] = len(trajs)
    if "needs_zoom" in (trajs[0].meta or {}):
        for flag, name in ((True, "zoom"), (False, "no_zoom")):
            sub = [t for t in trajs if bool(t.meta.get("needs_zoom")) == flag]
            if sub:
                m[f"tool/call_rate_{name}"] = sum(bool(t.tool_calls) for t in sub) / len(sub)
    return m
