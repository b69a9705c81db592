"""Policy losses (PPO-clip, GSPO, DTPO), KL estimators and entropy, on [B,T] token tensors.

One loss implementation: `token_policy_loss` gives the per-token PPO-clip (or GSPO) loss, `loss_weights` the
per-token weights of an aggregation (token-mean, Dr.GRPO's norm, DTPO's turn split, ...) and `weighted_sum`
combines them; `policy_loss` and `dtpo_loss` are that composition, and the trainer does the same per
micro-batch with weights computed per mini-batch.

``logp`` / ``old_logp`` / ``ref_logp`` are log-probs of the sampled tokens; ``mask`` is the response
mask (1 for policy tokens). Metrics are detached 0-dim tensors (call ``float()`` to log them).
"""

from __future__ import annotations

import torch

from vlmrl.algos.advantages import final_turn_mask as _final_turn_mask

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x where mask != 0 (over all elements, or along dim); 0 where the mask is empty, never NaN."""
    m = mask.to(x.dtype)
    total = torch.where(mask.bool(), x, torch.zeros_like(x)) * m  # masked-out inf/NaN never leak in
    if dim is None:
        return total.sum() / m.sum().clamp_min(1e-8)
    return total.sum(dim) / m.sum(dim).clamp_min(1e-8)


def ppo_clip_loss(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float,
                  dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip loss l = max(-A*r, -A*clip(r, 1-clip_low, 1+clip_high)), dual-clipped for A<0.

    Dual clip c > 1: where A < 0, l = min(l, -A*c) = min(l, c*|A|). Returns l and bool region masks
    (clip_low, clip_high, dual_clip) for the metrics.
    """
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    regions = {"clip_low": (adv < 0) & (ratio < 1.0 - clip_low), "clip_high": (adv > 0) & (ratio > 1.0 + clip_high)}
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
        regions["dual_clip"] = (adv < 0) & (ratio > dual_clip)
    else:
        regions["dual_clip"] = torch.zeros_like(regions["clip_low"])
    return loss, regions


LOG_RATIO_CLAMP = 20.0  # token log-ratio clamped to [-20, 20] before exp (EasyR1, verl)
SEQ_LOG_RATIO_MAX = 10.0  # GSPO's sequence log-ratio clamped to <= 10 before exp (verl)


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """Token ratio exp(clamp(logp - old_logp, -20, 20)), or GSPO's per-token
    exp(min(logp - sg[logp] + sg[log s_i], 10)), log s_i = mean_t(logp - old_logp). A clamped token passes no
    gradient (as in verl and EasyR1)."""
    if level == "token":
        return torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    if level == "sequence":
        seq_log_ratio = masked_mean(logp - old_logp, mask, dim=-1)  # log s_i = mean_t log-ratio
        return torch.exp((logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=SEQ_LOG_RATIO_MAX))
    raise ValueError(f"level must be 'token' or 'sequence' (GSPO), got {level!r}")


def _metrics(loss, ratio, regions, logp, old_logp, mask) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        names = {"clip_low": "clip_frac_low", "clip_high": "clip_frac_high", "dual_clip": "dual_clip_frac"}
        out = {names[k]: masked_mean(v.to(logp.dtype), mask) for k, v in regions.items()}
        out["approx_kl"] = masked_mean(old_logp - logp, mask)
        out["ratio_mean"] = masked_mean(ratio, mask)
        out["pg_loss"] = loss.detach()
    return out


def token_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None,
                      level: str = "token") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO-clip (or GSPO) loss [B,T] before aggregation, and the clip metrics.

    The one PPO-clip implementation: `policy_loss` and `dtpo_loss` are `weighted_sum` of it with
    `loss_weights`, and the trainer sums it with weights computed once per mini-batch, so gradient accumulation
    over micro-batches is exact. Its metrics' "pg_loss" is the per-token loss (detached)."""
    adv = advantages.unsqueeze(-1).expand_as(logp) if advantages.dim() == 1 else advantages
    ratio = _ratio(logp, old_logp, mask, level)
    per_token, regions = ppo_clip_loss(ratio, adv, clip_low, clip_high, dual_clip)
    return per_token, _metrics(per_token, ratio, regions, logp, old_logp, mask)


def loss_totals(mask: torch.Tensor, agg: str = "token-mean", final_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The denominators of an aggregation over this batch, float64 [2], for `loss_weights(totals=...)`.

    token-mean: [tokens, 0]; seq-mean-token-mean: [rows with tokens, 0]; seq-mean-token-sum-norm: [rows, 0];
    dtpo: [non-final-turn tokens, final-turn tokens]. They are sums over rows, so the totals of a batch split
    across processes (or micro-batches) are the sum of the parts' totals: all-reduce them (sum), give the sum to
    every part's `loss_weights`, and the parts' weighted sums add up to the whole batch's loss."""
    m = mask if mask.is_floating_point() else mask.to(torch.float32)
    m = m.to(torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    if agg == "token-mean":
        return torch.stack([m.sum(), zero])
    if agg == "seq-mean-token-mean":
        return torch.stack([(m.sum(-1) > 0).sum().to(torch.float64), zero])
    if agg == "seq-mean-token-sum-norm":
        return torch.tensor([float(m.shape[0]), 0.0], dtype=torch.float64)
    if agg == "dtpo":
        if final_mask is None:
            raise ValueError("agg='dtpo' needs final_mask")
        fin = (m * final_mask.to(m.dtype)).sum()
        return torch.stack([m.sum() - fin, fin])
    raise ValueError(f"agg must be one of {AGG_MODES + ('dtpo',)}, got {agg!r}")


def loss_weights(mask: torch.Tensor, agg: str = "token-mean", norm_len: int | None = None,
                 final_mask: torch.Tensor | None = None, alpha: float = 0.5,
                 totals: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token weights w [B,T] with sum(l * w) == the aggregated loss of l over the batch.

    agg in AGG_MODES: token-mean (1/N over all tokens), seq-mean-token-mean (1/(n_i * S) over the S rows with
    tokens, n_i the row's tokens), seq-mean-token-sum-norm (Dr.GRPO: 1/(B * norm_len), norm_len defaulting to T);
    or "dtpo": alpha/N_nonfinal on non-final-turn tokens + 1/N_final on final-turn tokens.
    `totals`: the denominators (N, S, B, or [N_nonfinal, N_final]) of a larger batch this one is part of, as
    `loss_totals` gives them summed over the parts (other processes' rows, other micro-batches); None: this batch's.
    Float32 for an integer or bool mask, else the mask's dtype."""
    m = mask if mask.is_floating_point() else mask.to(torch.float32)
    own = totals is None
    if not own:
        totals = [float(x) for x in totals]
    if agg == "token-mean":
        return m / (m.sum().clamp_min(1.0) if own else max(totals[0], 1.0))
    if agg == "seq-mean-token-mean":
        per_seq = m.sum(-1, keepdim=True)
        n_seq = (per_seq > 0).sum().clamp_min(1) if own else max(totals[0], 1.0)
        return m / per_seq.clamp_min(1.0) / n_seq
    if agg == "seq-mean-token-sum-norm":
        rows = m.shape[0] if own else totals[0]
        return m / (rows * (norm_len if norm_len is not None else m.shape[-1]))
    if agg == "dtpo":
        if final_mask is None:
            raise ValueError("agg='dtpo' needs final_mask")
        fin = m * final_mask.to(m.dtype)
        non = m - fin
        if own:
            return alpha * non / non.sum().clamp_min(1.0) + fin / fin.sum().clamp_min(1.0)
        return alpha * non / max(totals[0], 1.0) + fin / max(totals[1], 1.0)
    raise ValueError(f"agg must be one of {AGG_MODES + ('dtpo',)}, got {agg!r}")


def weighted_sum(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(per_token * weights) over the tokens with a non-zero weight: padding and masked-out tokens, whose
    values may be inf or NaN (a -inf log-prob of a padded token), never leak in."""
    return (torch.where(weights != 0, per_token, torch.zeros_like(per_token)) * weights).sum()


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str | None = None,
    level: str = "token",
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip policy loss (GRPO/Dr.GRPO/DAPO) or, with level="sequence", GSPO; returns (loss, metrics).

    advantages: [B] (one per sequence) or [B,T]. agg: one of AGG_MODES; None means "token-mean" for
    level="token" and "seq-mean-token-mean" for level="sequence" (GSPO's objective). GSPO uses the
    GSPO-token form: ratio_t = sg[s_i] * exp(logp_t - sg[logp_t]) with s_i = exp(mean_t(logp - old_logp)),
    so the value (and the clip) is the sequence ratio and the gradient is s_i * grad logp_t.
    """
    agg = agg or ("token-mean" if level == "token" else "seq-mean-token-mean")
    per_token, metrics = token_policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, level)
    loss = weighted_sum(per_token, loss_weights(mask, agg, norm_len))
    metrics["pg_loss"] = loss.detach()
    return loss, metrics


def dtpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    final_turn_mask: torch.Tensor | None = None,
    turn_ids: torch.Tensor | None = None,
    alpha: float = 0.5,
    clip_low: float = 0.2,
    clip_high: float = 0.24,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DTPO loss: alpha * token-mean(l over non-final turns) + token-mean(l over final turns).

    Pass final_turn_mask [B,T] or turn_ids [B,T] (final turn = each row's largest turn id among its
    response tokens). An empty set of tokens contributes 0.
    """
    if final_turn_mask is None:
        if turn_ids is None:
            raise ValueError("dtpo_loss needs final_turn_mask or turn_ids")
        final_turn_mask = _final_turn_mask(turn_ids, mask)
    resp, final = mask.bool(), final_turn_mask.bool()
    per_token, metrics = token_policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip)
    loss = weighted_sum(per_token, loss_weights(mask, "dtpo", final_mask=final, alpha=alpha))
    metrics["pg_loss"] = loss.detach()
    metrics["loss_non_final"] = masked_mean(per_token.detach(), resp & ~final)
    metrics["loss_final"] = masked_mean(per_token.detach(), resp & final)
    return loss, metrics


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate [B,T] of KL(pi || ref) from samples of pi: k1, k2 or k3 (Schulman).

    k1 = logp - ref; k2 = (logp - ref)^2 / 2; k3 = clamp(exp(x) - x - 1, -10, 10) with x = ref - logp clamped
    to [-20, 20] (verl's and EasyR1's low_var_kl; no gradient flows through a clamped token).
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        x = (ref_logp - logp).clamp(-20.0, 20.0)
        return (torch.exp(x) - x - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Exact entropy over the last dim (shape logits.shape[:-1]); -inf logits (banned tokens) are fine."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(dim=-1)


def sampled_entropy(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy estimate from the sampled tokens' log-probs: -token-mean(logp) (PAPO's double entropy)."""
    return -masked_mean(logp, mask)
