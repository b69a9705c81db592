"""Sampler/trainer mismatch: how far the sampling engine's log-probs are from the trainer's, and truncated
importance sampling (TIS) to correct for it.

An engine such as vLLM computes the sampled tokens' log-probs with other kernels (and, with top_p < 1, of the
renormalised nucleus), so `logp_sampler` differs from what the trainer's model gives the same tokens
(`logp_trainer`). With `vllm.old_logp: trainer` the PPO ratio's old log-probs are the trainer's; TIS then weights
each token's policy loss by `min(exp(logp_trainer - logp_sampler), cap)`, the correction of TRL's GRPOTrainer
(`vllm_importance_sampling_correction`: `importance_sampling_ratio = exp(old_per_token_logps -
sampling_per_token_logps)` clamped at `vllm_importance_sampling_cap`, multiplied into the per-token loss) and of
verl's `tis_imp_ratio_cap` (verl PR #2953). The weight is a constant (no gradient).
"""

from __future__ import annotations

import torch


def logp_mismatch(logp_sampler: torch.Tensor, logp_trainer: torch.Tensor, mask: torch.Tensor) -> dict:
    """{"mean": mean |logp_sampler - logp_trainer|, "max": its max} over the masked tokens ([B, T] each; 0.0 for
    no tokens)."""
    m = mask.bool()
    d = (logp_sampler.float() - logp_trainer.float()).abs()[m]
    if d.numel() == 0:
        return {"mean": 0.0, "max": 0.0}
    return {"mean": float(d.mean()), "max": float(d.max())}


def tis_weights(logp_trainer: torch.Tensor, logp_sampler: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token truncated importance weights [B, T]: `min(exp(logp_trainer - logp_sampler), cap)` on the masked
    tokens, 1 elsewhere; no gradient."""
    if cap <= 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    with torch.no_grad():
        diff = (logp_trainer.float() - logp_sampler.float()).clamp(max=20.0)  # exp stays finite
        w = diff.exp().clamp(max=cap)
        return torch.where(mask.bool(), w, torch.ones_like(w))
